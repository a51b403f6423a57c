//! The DP-overhead benchmark behind `ewtune bench dp-step`: on one random model of a chosen
//! family (GPT-2: LayerNorm, fused qkv, GELU MLP, tied head; Llama: RMSNorm, grouped-query
//! attention, SwiGLU, untied head), the same batch, the same binary, the time of a DP-SGD step
//! over the time of a non-private step (plain backward + the same optimizer on the same trainable
//! set), for LoRA and for full fine-tuning (targets <= 1.15 and <= 1.3). Timings are
//! medians of interleaved repeats after a warm-up (the order of the two steps alternates from
//! one repeat to the next). Noise is drawn ahead by the job's noise thread, so the DP step is
//! timed with a pre-drawn buffer and the draw is reported beside it. A third step, the DP step
//! with the self-audit on (10^4 gradient canaries), gives the self-audit's overhead (target
//! <= 1.03 of the plain DP step).
//!
//! [`dp_step_breakdown`] splits both steps into their parts (forward, backward, per-unit norms
//! and clipped sums per kind and shape of layer, update) to show where the DP step's extra time
//! goes.
//!
//! [`memory_run`] is the peak-memory benchmark behind `ewtune bench memory`: a job's load and DP
//! steps on a Qwen2.5-0.5B-shaped checkpoint, in f32 or bf16, LoRA or full, each in a child
//! process of its own so that each peak resident set is its own.

use super::data::{Dataset, Example};
use super::dpsgd::{nonprivate_backward, MicroBatch};
use super::finetune::FineTune;
use super::gradient_canaries::GradientCanaries;
use super::sampler::PoissonSampler;
use super::job::{private_step, PrivacySpec};
use super::model::{sequence_losses, Model};
use super::noise::NoiseSource;
use super::optim::{Optimizer, OptimizerKind, Schedule};
use super::precision::Precision;
use super::synthetic::{write_model_with_intermediate, Family, Shape};
use super::tape::{clipped_sums, squared_norms, unit_grads, ClipFactors, Record, Tape};
use super::TrainError;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Target of DP step time over non-private step time, LoRA.
pub const TARGET_LORA: f64 = 1.15;
/// Target of DP step time over non-private step time, full fine-tuning.
pub const TARGET_FULL: f64 = 1.3;

/// Shape and batch of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchShape {
    /// Layout of the random model.
    pub family: Family,
    /// Blocks.
    pub layers: i64,
    /// Width.
    pub d_model: i64,
    /// Heads.
    pub heads: i64,
    /// Key/value heads (Llama; GPT-2 has as many as heads).
    pub kv_heads: i64,
    /// MLP width (`None`: the family's default, GPT-2 4 d, Llama 2.5 d).
    pub intermediate: Option<i64>,
    /// Tokens per sequence.
    pub seq_len: i64,
    /// Sequences per batch.
    pub batch: usize,
    /// Vocabulary.
    pub vocab: i64,
    /// Timed repeats of each step.
    pub repeats: usize,
}

impl BenchShape {
    fn family_name(&self) -> &'static str {
        match self.family {
            Family::Gpt2 => "gpt2",
            Family::Llama => "llama",
        }
    }

    /// The MLP width the model gets.
    pub fn mlp_width(&self) -> i64 {
        match (self.intermediate, self.family) {
            (Some(i), _) => i,
            (None, Family::Gpt2) => 4 * self.d_model,
            (None, Family::Llama) => 2 * self.d_model + self.d_model / 2,
        }
    }

    fn kv(&self) -> i64 {
        match self.family {
            Family::Gpt2 => self.heads,
            Family::Llama => self.kv_heads,
        }
    }

    fn check(&self) -> Result<(), TrainError> {
        let bad = |field: &'static str, reason: String| Err(TrainError::BadSpec { field, reason });
        if self.layers < 1 || self.d_model < 1 || self.heads < 1 || self.seq_len < 2 || self.batch < 1 || self.vocab < 2 {
            return bad("bench", "layers, d_model, heads, batch >= 1, seq_len and vocab >= 2".into());
        }
        if self.d_model % self.heads != 0 {
            return bad("heads", format!("d_model {} is not a multiple of heads {}", self.d_model, self.heads));
        }
        if self.kv() < 1 || self.heads % self.kv() != 0 {
            return bad("kv_heads", format!("heads {} is not a multiple of kv_heads {}", self.heads, self.kv()));
        }
        if self.family == Family::Gpt2 && self.kv_heads != self.heads {
            return bad("kv_heads", "GPT-2 has no grouped-query attention: kv_heads must equal heads".into());
        }
        Ok(())
    }
}

/// One line of the benchmark's output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DpStepTiming {
    /// "gpt2" or "llama".
    pub family: &'static str,
    /// "lora" or "full".
    pub mode: &'static str,
    /// Median DP step (clipping + pre-drawn noise + update), seconds.
    pub dp_step_s: f64,
    /// Median non-private step, seconds.
    pub nondp_step_s: f64,
    /// dp / non-dp (of the medians).
    pub ratio: f64,
    /// Median over repeats of dp / non-dp within one repeat (robust to drifting machine load).
    pub paired_ratio: f64,
    /// The target of `ratio` (1.15 LoRA, 1.3 full).
    pub target: f64,
    /// Seconds to draw this step's noise on the noise thread (overlapped with compute in jobs).
    pub noise_draw_s: f64,
    /// Median DP step with the self-audit on ([`SELF_AUDIT_CANARIES`] gradient canaries, those
    /// of them drawn at [`SELF_AUDIT_RATE`] in the batch, every observation made), seconds.
    pub audited_step_s: f64,
    /// Median over repeats of audited / plain DP step within one repeat (target <= 1.03).
    pub self_audit_overhead: f64,
    /// Trainable coordinates.
    pub trainable_params: usize,
    /// Trainable tensors.
    pub trainable_tensors: usize,
    /// Device used.
    pub device: String,
    /// libtorch intra-op threads.
    pub threads: i32,
    /// Echo of the shape.
    pub layers: i64,
    /// Echo of the shape.
    pub d_model: i64,
    /// Echo of the shape.
    pub heads: i64,
    /// Echo of the shape.
    pub kv_heads: i64,
    /// MLP width used.
    pub intermediate: i64,
    /// Echo of the shape.
    pub vocab: i64,
    /// Echo of the shape.
    pub seq_len: i64,
    /// Echo of the shape.
    pub batch: usize,
    /// Timed repeats.
    pub repeats: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The random model and batch a benchmark runs on; the model's directory is removed on drop.
struct Fixture {
    dir: PathBuf,
    data: Dataset,
    batch: Vec<usize>,
}

impl Fixture {
    fn new(shape: &BenchShape, tag: &str) -> Result<Self, TrainError> {
        shape.check()?;
        let dir = std::env::temp_dir().join(format!("ewtune-bench-{tag}-{}", std::process::id()));
        let s = Shape { vocab: shape.vocab, d_model: shape.d_model, layers: shape.layers, heads: shape.heads, kv_heads: shape.kv(), positions: shape.seq_len.max(8) };
        write_model_with_intermediate(&dir, shape.family, s, shape.intermediate, 0, None)?;
        tch::manual_seed(1);
        let data = random_units(shape.vocab, shape.batch, shape.seq_len);
        Ok(Fixture { dir, data, batch: (0..shape.batch).collect() })
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn modes() -> [(&'static str, FineTune, f64); 2] {
    [("lora", FineTune::default(), TARGET_LORA), ("full", FineTune::Full, TARGET_FULL)]
}

/// The non-private step: ordinary backward of the mean loss into `.grad`, the optimizer on the
/// same trainable set, gradients zeroed; seconds.
fn plain_step(model: &Model, mb: &MicroBatch, opt: &mut Optimizer, params: &[Tensor], device: Device) -> Result<f64, TrainError> {
    let t = Instant::now();
    nonprivate_backward(model, mb)?;
    let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).collect();
    opt.apply(params, &grads);
    for p in params {
        let mut g = p.grad();
        let _ = g.f_zero_();
    }
    sync(device);
    Ok(t.elapsed().as_secs_f64())
}

/// Gradient canaries of the audited DP step (the daemon's default).
pub const SELF_AUDIT_CANARIES: usize = crate::train::self_audit::DEFAULT_CANARIES;

/// The sampling rate at which the audited step's batch holds included canaries.
pub const SELF_AUDIT_RATE: f64 = 0.01;

/// Runs the benchmark for both modes on `device`.
pub fn dp_step(shape: BenchShape, device: Device) -> Result<Vec<DpStepTiming>, TrainError> {
    let fx = Fixture::new(&shape, "dp-step")?;
    let mut out = Vec::new();
    for (mode, ft, target) in modes() {
        let model = Model::load(fx.path(), &ft, None, device)?;
        let params: Vec<Tensor> = model.trainable().into_iter().map(|(_, p)| p).collect();
        let numel: usize = params.iter().map(|p| p.numel()).sum();
        let mut opt_dp = Optimizer::new(OptimizerKind::default(), 1e-5, Schedule::Constant, 1000, &params);
        let mut opt_plain = Optimizer::new(OptimizerKind::default(), 1e-5, Schedule::Constant, 1000, &params);
        let mut source = NoiseSource::from_os()?;
        let mut noise = vec![0f32; numel];
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let privacy = PrivacySpec { epsilon: None, noise_multiplier: Some(1.0), delta: 1e-5, clip_norm: 1.0 };
        let mb = fx.data.micro_batch(&fx.batch, device);
        // The audited step: the same units plus the included canaries a Poisson draw at
        // SELF_AUDIT_RATE puts in the batch (sampler indices after the dataset's units).
        let mut canaries = GradientCanaries::draw(SELF_AUDIT_CANARIES, fx.data.len(), SELF_AUDIT_RATE, 1.0, 1.0, device)?;
        let mut rng = super::noise::os_seeded_rng()?;
        let drawn = PoissonSampler::new(SELF_AUDIT_RATE, canaries.units())?.sample(&mut rng);
        let audited_batch: Vec<usize> = fx.batch.iter().copied().chain(drawn.iter().map(|c| fx.data.len() + c)).collect();
        let mut audited_noise = vec![0f32; numel + SELF_AUDIT_CANARIES];
        let mut opt_audited = Optimizer::new(OptimizerKind::default(), 1e-5, Schedule::Constant, 1000, &params);
        let (mut dp_times, mut plain_times, mut draw_times, mut ratios) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut audited_times, mut audit_ratios) = (Vec::new(), Vec::new());
        for rep in 0..=shape.repeats {
            let t = Instant::now();
            source.fill_gaussian_parallel(1.0, &mut noise, threads);
            let draw = t.elapsed().as_secs_f64();
            source.fill_gaussian_parallel(1.0, &mut audited_noise, threads);
            let mut dp_step = || -> Result<f64, TrainError> {
                let t = Instant::now();
                private_step(&model, &fx.data, &fx.batch, &privacy, shape.batch, &noise, shape.batch as f64, &mut opt_dp, &params, device, None)?;
                sync(device);
                Ok(t.elapsed().as_secs_f64())
            };
            let mut audited_step = || -> Result<f64, TrainError> {
                let t = Instant::now();
                private_step(&model, &fx.data, &audited_batch, &privacy, shape.batch, &audited_noise, shape.batch as f64, &mut opt_audited, &params, device, Some(&mut canaries))?;
                sync(device);
                Ok(t.elapsed().as_secs_f64())
            };
            // Rotate which step goes first, so none always runs on a warmer cache.
            let (dp, plain, audited) = match rep % 3 {
                0 => {
                    let dp = dp_step()?;
                    let audited = audited_step()?;
                    (dp, plain_step(&model, &mb, &mut opt_plain, &params, device)?, audited)
                }
                1 => {
                    let plain = plain_step(&model, &mb, &mut opt_plain, &params, device)?;
                    let dp = dp_step()?;
                    (dp, plain, audited_step()?)
                }
                _ => {
                    let audited = audited_step()?;
                    let plain = plain_step(&model, &mb, &mut opt_plain, &params, device)?;
                    (dp_step()?, plain, audited)
                }
            };
            if rep > 0 {
                dp_times.push(dp);
                plain_times.push(plain);
                draw_times.push(draw);
                ratios.push(dp / plain);
                audited_times.push(audited);
                audit_ratios.push(audited / dp);
            }
        }
        let (dp, plain) = (median(dp_times), median(plain_times));
        out.push(DpStepTiming {
            family: shape.family_name(),
            mode,
            dp_step_s: dp,
            nondp_step_s: plain,
            ratio: dp / plain,
            paired_ratio: median(ratios),
            target,
            noise_draw_s: median(draw_times),
            audited_step_s: median(audited_times),
            self_audit_overhead: median(audit_ratios),
            trainable_params: numel,
            trainable_tensors: params.len(),
            device: format!("{device:?}"),
            threads: tch::get_num_threads(),
            layers: shape.layers,
            d_model: shape.d_model,
            heads: shape.heads,
            kv_heads: shape.kv(),
            intermediate: shape.mlp_width(),
            vocab: shape.vocab,
            seq_len: shape.seq_len,
            batch: shape.batch,
            repeats: shape.repeats,
        });
    }
    Ok(out)
}

/// One part of a step, median seconds over the repeats.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Part {
    /// What it is (e.g. `norms linear 512x128 ghost`).
    pub name: String,
    /// How many layers it covers.
    pub count: usize,
    /// Median seconds per step, summed over those layers.
    pub seconds: f64,
    /// Fastest repeat (on a loaded machine, contention only adds time).
    pub min_seconds: f64,
}

/// Where the time of both steps goes, for one mode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DpStepBreakdown {
    /// "gpt2" or "llama".
    pub family: &'static str,
    /// "lora" or "full".
    pub mode: &'static str,
    /// The non-private step: forward, backward (weight gradients by autograd), update.
    pub nondp: Vec<Part>,
    /// The DP step: forward (recording the tape), backward to the recorded outputs only,
    /// per-unit squared norms and clipped sums per kind and shape of record, clip factors,
    /// noise + division + update.
    pub dp: Vec<Part>,
    /// Sum of `nondp`.
    pub nondp_total_s: f64,
    /// Sum of `dp`.
    pub dp_total_s: f64,
}

/// Kind and shape of a record, the rule it follows (docs/dpsgd.md, Clipping without per-example gradients: ghost norm iff
/// 2 T^2 < d_in d_out, as `tape::squared_norms` decides), for grouping.
fn record_label(r: &Record) -> String {
    match r {
        Record::Linear { input, output, .. } => {
            let (t, d_in, d_out) = (input.size()[1], input.size()[2], output.size()[2]);
            let how = if 2 * t * t < d_in * d_out { "ghost" } else { "materialised" };
            format!("linear {d_in}x{d_out} {how}")
        }
        Record::Lora { input, output, a, .. } => format!("lora r{} {}x{}", a.size()[0], input.size()[2], output.size()[2]),
        Record::Norm { normalized, .. } => format!("norm {}", normalized.size()[2]),
    }
}

/// Accumulates named times for one step; `finish` returns them in first-seen order.
#[derive(Default)]
struct Clock {
    parts: Vec<(String, usize, f64)>,
}

impl Clock {
    fn add(&mut self, name: &str, seconds: f64) {
        match self.parts.iter_mut().find(|(n, _, _)| n == name) {
            Some(p) => {
                p.1 += 1;
                p.2 += seconds;
            }
            None => self.parts.push((name.to_string(), 1, seconds)),
        }
    }
}

/// Medians per part over repeats (each repeat one `Clock`).
fn median_parts(clocks: &[Clock]) -> Vec<Part> {
    let Some(first) = clocks.first() else { return Vec::new() };
    first
        .parts
        .iter()
        .map(|(name, count, _)| {
            let times: Vec<f64> = clocks.iter().map(|c| c.parts.iter().find(|(n, _, _)| n == name).map_or(0.0, |p| p.2)).collect();
            let min = times.iter().copied().fold(f64::INFINITY, f64::min);
            Part { name: name.clone(), count: *count, seconds: median(times), min_seconds: min }
        })
        .collect()
}

fn timed<T>(clock: &mut Clock, name: &str, device: Device, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    sync(device);
    clock.add(name, t.elapsed().as_secs_f64());
    out
}

/// The non-private step in parts.
fn plain_parts(model: &Model, mb: &MicroBatch, opt: &mut Optimizer, params: &[Tensor], device: Device) -> Result<Clock, TrainError> {
    let mut c = Clock::default();
    let loss = timed(&mut c, "forward + loss", device, || sequence_losses(&model.forward(&mb.ids, None), &mb.ids, &mb.loss_mask).mean(Kind::Float));
    timed(&mut c, "backward (input and weight gradients)", device, || loss.f_backward())?;
    timed(&mut c, "optimizer", device, || {
        let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).collect();
        opt.apply(params, &grads);
        for p in params {
            let mut g = p.grad();
            let _ = g.f_zero_();
        }
    });
    Ok(c)
}

/// The DP step in parts: the same computation as `job::private_step` for one micro-batch
/// (`dpsgd::clip_and_accumulate`, then noise, division by the expected batch and the update),
/// with a clock around each part.
fn dp_parts(model: &Model, mb: &MicroBatch, noise: &[f32], opt: &mut Optimizer, params: &[Tensor], device: Device) -> Result<Clock, TrainError> {
    let mut c = Clock::default();
    let mut tape = Tape::default();
    let total = timed(&mut c, "forward + loss (recording the tape)", device, || sequence_losses(&model.forward(&mb.ids, Some(&mut tape)), &mb.ids, &mb.loss_mask).sum(Kind::Float));
    let outputs: Vec<&Tensor> = tape.records.iter().flat_map(|r| r.outputs()).collect();
    if outputs.is_empty() {
        return Err(TrainError::NothingToTrain);
    }
    let grads = timed(&mut c, "backward (to recorded outputs only)", device, || Tensor::f_run_backward(&[&total], &outputs, false, false))?;
    let _guard = tch::no_grad_guard();
    let mut offset = 0;
    let mut per_record = Vec::with_capacity(tape.records.len());
    let mut n2 = Tensor::zeros([mb.units.count as i64], (Kind::Float, device));
    for r in &tape.records {
        let k = r.outputs().len();
        let g = &grads[offset..offset + k];
        let label = record_label(r);
        let per_unit = timed(&mut c, &format!("norms {label}"), device, || {
            let per_unit = unit_grads(r, g, &mb.units);
            n2 += squared_norms(r, g, &per_unit, &mb.units);
            per_unit
        });
        per_record.push((r, g, per_unit, label));
        offset += k;
    }
    let clip = timed(&mut c, "clip factors", device, || ClipFactors::new(&n2.sqrt(), 1.0, &mb.units));
    let mut sums: Vec<(usize, Tensor)> = Vec::new();
    let slot: std::collections::HashMap<usize, usize> = params.iter().enumerate().map(|(i, p)| (p.data_ptr() as usize, i)).collect();
    for (r, g, per_unit, label) in per_record {
        timed(&mut c, &format!("clipped sum {label}"), device, || {
            for (param, sum) in r.params().into_iter().zip(clipped_sums(r, g, &per_unit, &clip)) {
                sums.push((slot[&(param.data_ptr() as usize)], sum));
            }
        });
    }
    // As `dpsgd::ClippedSum` and `job::private_step` do it: each tensor's first clipped sum
    // becomes its accumulator and later ones are added in place; the noise (borrowed there on a
    // CPU, copied here, an upper bound) is added and the division by q N done in place.
    let acc: Vec<Tensor> = timed(&mut c, "sum: accumulate clipped sums", device, || {
        let mut acc: Vec<Option<Tensor>> = params.iter().map(|_| None).collect();
        for (i, s) in sums {
            match &mut acc[i] {
                Some(a) => {
                    let _ = a.f_add_(&s);
                }
                slot @ None => *slot = Some(s),
            }
        }
        acc.into_iter().zip(params).map(|(a, p)| a.unwrap_or_else(|| Tensor::zeros(p.size(), (Kind::Float, device)))).collect()
    });
    let grads: Vec<Tensor> = timed(&mut c, "noise: (sum + z) / (q N) in place", device, || {
        let noise_t = Tensor::from_slice(noise).to_device(device);
        let mut offset = 0i64;
        params
            .iter()
            .zip(&acc)
            .map(|(p, sum)| {
                let n = p.numel() as i64;
                let z = noise_t.narrow(0, offset, n).view(p.size().as_slice());
                offset += n;
                let _ = sum.shallow_clone().f_add_(&z).and_then(|mut t| t.f_div_scalar_(mb.units.count as f64));
                sum.shallow_clone()
            })
            .collect()
    });
    drop(_guard);
    timed(&mut c, "optimizer", device, || opt.apply(params, &grads));
    Ok(c)
}

/// Where the time of the DP and the non-private steps goes, both modes, `repeats` interleaved
/// repeats after a warm-up.
pub fn dp_step_breakdown(shape: BenchShape, device: Device) -> Result<Vec<DpStepBreakdown>, TrainError> {
    let fx = Fixture::new(&shape, "dp-breakdown")?;
    let mut out = Vec::new();
    for (mode, ft, _) in modes() {
        let model = Model::load(fx.path(), &ft, None, device)?;
        let params: Vec<Tensor> = model.trainable().into_iter().map(|(_, p)| p).collect();
        let numel: usize = params.iter().map(|p| p.numel()).sum();
        let mut opt_dp = Optimizer::new(OptimizerKind::default(), 1e-5, Schedule::Constant, 1000, &params);
        let mut opt_plain = Optimizer::new(OptimizerKind::default(), 1e-5, Schedule::Constant, 1000, &params);
        let mut noise = vec![0f32; numel];
        NoiseSource::from_os()?.fill_gaussian_parallel(1.0, &mut noise, 1);
        let mb = fx.data.micro_batch(&fx.batch, device);
        let (mut dp, mut plain) = (Vec::new(), Vec::new());
        for rep in 0..=shape.repeats {
            let (d, p) = if rep % 2 == 0 {
                let d = dp_parts(&model, &mb, &noise, &mut opt_dp, &params, device)?;
                (d, plain_parts(&model, &mb, &mut opt_plain, &params, device)?)
            } else {
                let p = plain_parts(&model, &mb, &mut opt_plain, &params, device)?;
                (dp_parts(&model, &mb, &noise, &mut opt_dp, &params, device)?, p)
            };
            if rep > 0 {
                dp.push(d);
                plain.push(p);
            }
        }
        let (dp, nondp) = (median_parts(&dp), median_parts(&plain));
        out.push(DpStepBreakdown {
            family: shape.family_name(),
            mode,
            dp_total_s: dp.iter().map(|p| p.seconds).sum(),
            nondp_total_s: nondp.iter().map(|p| p.seconds).sum(),
            nondp,
            dp,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Peak memory: `ewtune bench memory`.

/// Fine-tuning mode of a memory run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MemoryMode {
    /// LoRA, rank 8, alpha 16, PEFT's default targets (`FineTune::default()`).
    Lora,
    /// Full fine-tuning (`FineTune::Full`).
    Full,
}

impl MemoryMode {
    /// The fine-tuning spec a job of this mode runs with.
    pub fn finetune(self) -> FineTune {
        match self {
            MemoryMode::Lora => FineTune::default(),
            MemoryMode::Full => FineTune::Full,
        }
    }

    /// "lora" or "full".
    pub fn name(self) -> &'static str {
        match self {
            MemoryMode::Lora => "lora",
            MemoryMode::Full => "full",
        }
    }
}

/// "f32" or "bf16".
pub fn precision_name(p: Precision) -> &'static str {
    match p {
        Precision::F32 => "f32",
        Precision::Bf16 => "bf16",
    }
}

/// A field of `/proc/self/status` in bytes (`VmHWM`: peak resident set; `VmRSS`: current), or
/// `None` where there is no procfs.
pub fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kib: u64 = line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// Resets this process's `VmHWM` to its current resident set (Linux: `5` into
/// `/proc/self/clear_refs`); false where that is not possible.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// What one memory run (one child process) measured.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct MemoryRun {
    /// "lora" or "full".
    pub mode: MemoryMode,
    /// Precision of the forward/backward.
    pub precision: Precision,
    /// Peak resident set of the whole process (`VmHWM` at its end), bytes.
    pub peak_rss_bytes: u64,
    /// Peak resident set up to the end of `Model::load_with`, bytes.
    pub load_peak_rss_bytes: u64,
    /// Resident set right after loading, bytes.
    pub rss_after_load_bytes: u64,
    /// Peak resident set from the end of loading to the end of the last step (optimizer state,
    /// noise buffer, forward/backward, clipping, update), bytes; `None` where the peak could not
    /// be reset after loading (then only `peak_rss_bytes` covers the steps).
    pub step_peak_rss_bytes: Option<u64>,
    /// Seconds `Model::load_with` took.
    pub load_s: f64,
    /// Seconds of each DP step (`job::private_step`: forward with the tape, per-unit norms,
    /// clipping, the noise, the update).
    pub step_s: Vec<f64>,
    /// Seconds each step waited for its noise buffer (the noise thread draws one buffer of
    /// `trainable_params` coordinates per step; the first is drawn while the optimizer state is
    /// set up).
    pub noise_wait_s: Vec<f64>,
    /// Trainable coordinates (f32 masters).
    pub trainable_params: usize,
    /// Frozen coordinates.
    pub frozen_params: usize,
    /// Bytes the frozen tensors occupy (2 per coordinate in bf16, 4 in f32).
    pub frozen_bytes: usize,
    /// Sequences per step (one micro-batch; each sequence a privacy unit).
    pub micro_batch: usize,
    /// Tokens per sequence.
    pub seq_len: i64,
    /// libtorch intra-op threads.
    pub threads: i32,
    /// `GLIBC_TUNABLES` as the child saw it (the allocator settings the peak was measured under).
    #[serde(default)]
    pub glibc_tunables: Option<String>,
    /// Seconds the child process ran, start to exit (set by [`memory_run_in_child`]; 0 in the
    /// child's own line).
    #[serde(default)]
    pub process_s: f64,
}

impl MemoryRun {
    /// The run a child printed: the last line of `stdout` that is a JSON object.
    pub fn parse_child_output(stdout: &str) -> Result<MemoryRun, String> {
        let line = stdout.lines().rev().map(str::trim).find(|l| l.starts_with('{')).ok_or("the child printed no JSON line")?;
        serde_json::from_str(line).map_err(|e| format!("the child's JSON line does not parse: {e}"))
    }

    /// The last step's seconds (the first one also warms caches up).
    pub fn last_step_s(&self) -> f64 {
        self.step_s.last().copied().unwrap_or(f64::NAN)
    }
}

/// Settings of a memory run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemorySettings {
    /// Tokens per sequence.
    pub seq_len: i64,
    /// Sequences per step.
    pub micro_batch: usize,
    /// DP steps.
    pub steps: usize,
    /// libtorch intra-op threads (0: libtorch's default).
    pub threads: i32,
    /// Run the child with glibc's mmap threshold pinned at [`PINNED_MMAP_THRESHOLD`] (through
    /// `GLIBC_TUNABLES`, unless that is already set): every allocation of a MiB or more is then
    /// its own mapping, returned to the system when freed, so the peak is what the live tensors
    /// need, the same from run to run. With glibc's default (a threshold that rises to 32 MiB as
    /// large blocks are freed), freed tensors of up to 32 MiB stay in the heap, and the peak of a
    /// full fine-tuning run moves by a GiB or more from one run to the next.
    pub pin_mmap_threshold: bool,
}

/// The mmap threshold [`MemorySettings::pin_mmap_threshold`] sets, bytes.
pub const PINNED_MMAP_THRESHOLD: u64 = 1 << 20;

/// Random token sequences, one privacy unit each, every token after the first a target.
fn random_units(vocab: i64, units: usize, seq_len: i64) -> Dataset {
    let ids = Tensor::randint(vocab, [units as i64, seq_len], (Kind::Int64, Device::Cpu));
    let rows: Vec<Vec<i64>> = (0..units).map(|r| Vec::<i64>::try_from(&ids.get(r as i64)).unwrap_or_default()).collect();
    Dataset {
        units: rows
            .into_iter()
            .map(|ids| {
                let mut mask = vec![1; ids.len()];
                mask[0] = 0;
                vec![Example { ids, loss_mask: mask }]
            })
            .collect(),
        dropped_examples: 0,
        truncated_examples: 0,
    }
}

/// One memory run, in this process (`ewtune bench memory` runs each in a child of its own, so
/// that each peak is its own): loads the checkpoint at `model_dir` as a job does
/// (`Model::load_with`), then runs `steps` DP steps as `job::run` does — AdamW on the trainable
/// set, the noise drawn ahead by a [`NoiseStream`] thread, `job::private_step` over one
/// micro-batch of random sequences (noise multiplier 1, clip norm 1) — on the CPU, and reads the
/// peak resident set from `/proc/self/status`.
pub fn memory_run(model_dir: &Path, mode: MemoryMode, precision: Precision, s: MemorySettings) -> Result<MemoryRun, TrainError> {
    use super::noise::NoiseStream;
    if s.seq_len < 2 || s.micro_batch < 1 || s.steps < 1 {
        return Err(TrainError::BadSpec { field: "bench", reason: "seq_len >= 2, micro_batch >= 1 and steps >= 1".into() });
    }
    if s.threads > 0 {
        tch::set_num_threads(s.threads);
    }
    let device = Device::Cpu;
    let t = Instant::now();
    let model = Model::load_with(model_dir, &mode.finetune(), None, device, precision)?;
    let load_s = t.elapsed().as_secs_f64();
    let missing = || TrainError::BadSpec { field: "bench", reason: "no /proc/self/status: peak memory cannot be read here".into() };
    let load_peak = proc_status_bytes("VmHWM").ok_or_else(missing)?;
    let rss_after_load = proc_status_bytes("VmRSS").ok_or_else(missing)?;
    let reset = reset_peak_rss();

    tch::manual_seed(1);
    let data = random_units(model.vocab_size(), s.micro_batch, s.seq_len);
    let batch: Vec<usize> = (0..s.micro_batch).collect();
    let trainable = model.trainable();
    if trainable.is_empty() {
        return Err(TrainError::NothingToTrain);
    }
    let params: Vec<Tensor> = trainable.iter().map(|(_, p)| p.shallow_clone()).collect();
    let numel: usize = params.iter().map(|p| p.numel()).sum();
    let frozen = model.frozen();
    let frozen_params: usize = frozen.iter().map(|(_, t)| t.numel()).sum();
    let frozen_bytes: usize = frozen.iter().map(|(_, t)| t.numel() * t.kind().elt_size_in_bytes()).sum();
    drop((trainable, frozen));
    let privacy = PrivacySpec { epsilon: None, noise_multiplier: Some(1.0), delta: 1e-5, clip_norm: 1.0 };
    let mut optimizer = Optimizer::new(OptimizerKind::default(), 1e-5, Schedule::Constant, s.steps as u64, &params);
    // As `job::run`: one core left to the step, the rest draw the next buffer meanwhile.
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).saturating_sub(1).max(1);
    let noise_std = privacy.noise_multiplier.unwrap_or(1.0) * privacy.clip_norm;
    let mut noise = NoiseStream::start(NoiseSource::from_os()?, noise_std, numel, threads);
    let (mut step_s, mut noise_wait_s) = (Vec::with_capacity(s.steps), Vec::with_capacity(s.steps));
    for step in 0..s.steps {
        let t = Instant::now();
        let buf = noise.next_buffer();
        noise_wait_s.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        private_step(&model, &data, &batch, &privacy, s.micro_batch, &buf, s.micro_batch as f64, &mut optimizer, &params, device, None)?;
        step_s.push(t.elapsed().as_secs_f64());
        if step + 1 < s.steps {
            noise.recycle(buf); // (after the last step, no further buffer is drawn)
        }
    }
    let end_peak = proc_status_bytes("VmHWM").ok_or_else(missing)?;
    drop(noise);
    Ok(MemoryRun {
        mode,
        precision,
        peak_rss_bytes: end_peak.max(load_peak),
        load_peak_rss_bytes: load_peak,
        rss_after_load_bytes: rss_after_load,
        step_peak_rss_bytes: reset.then_some(end_peak),
        load_s,
        step_s,
        noise_wait_s,
        trainable_params: numel,
        frozen_params,
        frozen_bytes,
        micro_batch: s.micro_batch,
        seq_len: s.seq_len,
        threads: tch::get_num_threads(),
        glibc_tunables: std::env::var("GLIBC_TUNABLES").ok(),
        process_s: 0.0,
    })
}

/// The arguments of the hidden child subcommand `ewtune bench memory-child` for one run.
pub fn memory_child_args(model_dir: &Path, mode: MemoryMode, precision: Precision, s: MemorySettings) -> Vec<String> {
    vec![
        "bench".into(),
        "memory-child".into(),
        "--model".into(),
        model_dir.display().to_string(),
        "--mode".into(),
        mode.name().into(),
        "--precision".into(),
        precision_name(precision).into(),
        "--seq-len".into(),
        s.seq_len.to_string(),
        "--micro-batch".into(),
        s.micro_batch.to_string(),
        "--steps".into(),
        s.steps.to_string(),
        "--threads".into(),
        s.threads.to_string(),
    ]
}

/// Runs one memory run in a fresh child process (`exe bench memory-child ...`) and reads what
/// it printed; an error says how the child ended (a kill by signal 9 is usually the kernel's
/// out-of-memory killer).
pub fn memory_run_in_child(exe: &Path, model_dir: &Path, mode: MemoryMode, precision: Precision, s: MemorySettings) -> Result<MemoryRun, String> {
    let start = Instant::now();
    let mut cmd = std::process::Command::new(exe);
    cmd.args(memory_child_args(model_dir, mode, precision, s)).stdin(std::process::Stdio::null());
    if s.pin_mmap_threshold && std::env::var_os("GLIBC_TUNABLES").is_none() {
        cmd.env("GLIBC_TUNABLES", format!("glibc.malloc.mmap_threshold={PINNED_MMAP_THRESHOLD}"));
    }
    let out = cmd
        .output()
        .map_err(|e| format!("could not start {}: {e}", exe.display()))?;
    if !out.status.success() {
        use std::os::unix::process::ExitStatusExt;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String = stderr.trim().lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" | ");
        return Err(match out.status.signal() {
            Some(9) => format!("killed by signal 9 (out of memory?) {tail}"),
            Some(sig) => format!("killed by signal {sig} {tail}"),
            None => format!("exit status {}: {tail}", out.status.code().unwrap_or(-1)),
        });
    }
    let mut run = MemoryRun::parse_child_output(&String::from_utf8_lossy(&out.stdout))?;
    run.process_s = start.elapsed().as_secs_f64();
    Ok(run)
}

/// Every (mode, precision) pair `ewtune bench memory` measures, in its order.
pub const MEMORY_RUNS: [(MemoryMode, Precision); 4] =
    [(MemoryMode::Lora, Precision::F32), (MemoryMode::Lora, Precision::Bf16), (MemoryMode::Full, Precision::F32), (MemoryMode::Full, Precision::Bf16)];

/// `bf16 / f32` of the peak resident set of `mode` among `runs`, when both ran.
pub fn memory_ratio(runs: &[MemoryRun], mode: MemoryMode, peak: impl Fn(&MemoryRun) -> Option<u64>) -> Option<f64> {
    let of = |p: Precision| runs.iter().find(|r| r.mode == mode && r.precision == p).and_then(&peak);
    Some(of(Precision::Bf16)? as f64 / of(Precision::F32)? as f64)
}

/// Writes the Qwen2 checkpoint a memory benchmark runs on into `dir`, unless `dir` already
/// holds one of that shape (its `config.json`, written last, equal to the one it would write);
/// returns true when it wrote.
pub fn ensure_qwen2_checkpoint(dir: &Path, shape: super::synthetic::Qwen2Shape) -> Result<bool, TrainError> {
    let want = super::synthetic::qwen2_config(shape);
    let have: Option<serde_json::Value> = std::fs::read(dir.join("config.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
    if have.as_ref() == Some(&want) && dir.join("model.safetensors").is_file() {
        return Ok(false);
    }
    super::synthetic::write_qwen2(dir, shape, 0)?;
    Ok(true)
}

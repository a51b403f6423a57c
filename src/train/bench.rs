//! The DP-overhead benchmark behind `ewtune bench dp-step`: on one random model of a chosen
//! family (GPT-2: LayerNorm, fused qkv, GELU MLP, tied head; Llama: RMSNorm, grouped-query
//! attention, SwiGLU, untied head), the same batch, the same binary, the time of a DP-SGD step
//! over the time of a non-private step (plain backward + the same optimizer on the same trainable
//! set), for LoRA and for full fine-tuning (targets <= 1.15 and <= 1.3). Timings are
//! medians of interleaved repeats after a warm-up (the order of the two steps alternates from
//! one repeat to the next). Noise is drawn ahead by the job's noise thread, so the DP step is
//! timed with a pre-drawn buffer and the draw is reported beside it.
//!
//! [`dp_step_breakdown`] splits both steps into their parts (forward, backward, per-unit norms
//! and clipped sums per kind and shape of layer, update) to show where the DP step's extra time
//! goes.

use super::data::{Dataset, Example};
use super::dpsgd::{nonprivate_backward, MicroBatch, NORM_EPS};
use super::finetune::FineTune;
use super::job::{private_step, PrivacySpec};
use super::model::{sequence_losses, Model};
use super::noise::NoiseSource;
use super::optim::{Optimizer, OptimizerKind, Schedule};
use super::synthetic::{write_model_with_intermediate, Family, Shape};
use super::tape::{clipped_sums, squared_norms, unit_grads, Record, Tape};
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
        let ids = Tensor::randint(shape.vocab, [shape.batch as i64, shape.seq_len], (Kind::Int64, Device::Cpu));
        let rows: Vec<Vec<i64>> = (0..shape.batch).map(|r| Vec::<i64>::try_from(&ids.get(r as i64)).unwrap_or_default()).collect();
        let data = Dataset {
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
        };
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
        let (mut dp_times, mut plain_times, mut draw_times, mut ratios) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for rep in 0..=shape.repeats {
            let t = Instant::now();
            source.fill_gaussian_parallel(1.0, &mut noise, threads);
            let draw = t.elapsed().as_secs_f64();
            let mut dp_step = || -> Result<f64, TrainError> {
                let t = Instant::now();
                private_step(&model, &fx.data, &fx.batch, &privacy, shape.batch, &noise, shape.batch as f64, &mut opt_dp, &params, device)?;
                sync(device);
                Ok(t.elapsed().as_secs_f64())
            };
            // Alternate which step goes first, so neither always runs on a warmer cache.
            let (dp, plain) = if rep % 2 == 0 {
                let dp = dp_step()?;
                (dp, plain_step(&model, &mb, &mut opt_plain, &params, device)?)
            } else {
                let plain = plain_step(&model, &mb, &mut opt_plain, &params, device)?;
                (dp_step()?, plain)
            };
            if rep > 0 {
                dp_times.push(dp);
                plain_times.push(plain);
                draw_times.push(draw);
                ratios.push(dp / plain);
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

/// Kind and shape of a record, the rule it follows (§6.1 of the design: ghost norm iff
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
    let (clip, row_scale) = timed(&mut c, "clip factors", device, || {
        let norms = n2.sqrt();
        let clip = (&norms + NORM_EPS).reciprocal().clamp_max(1.0);
        let clip = clip.where_self(&norms.isfinite(), &Tensor::zeros_like(&clip));
        let row_scale = clip.index_select(0, &mb.units.unit_of_row);
        (clip, row_scale)
    });
    let mut sums: Vec<(usize, Tensor)> = Vec::new();
    let slot: std::collections::HashMap<usize, usize> = params.iter().enumerate().map(|(i, p)| (p.data_ptr() as usize, i)).collect();
    for (r, g, per_unit, label) in per_record {
        timed(&mut c, &format!("clipped sum {label}"), device, || {
            for (param, sum) in r.params().into_iter().zip(clipped_sums(r, g, &per_unit, &clip, &row_scale)) {
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

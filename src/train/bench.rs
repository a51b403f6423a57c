//! The DP-overhead benchmark behind `ewtune bench dp-step`: on one random GPT-2-shaped model,
//! the same batch, the same binary, the time of a DP-SGD step over the time of a non-private
//! step, for LoRA and for full fine-tuning (targets <= 1.15 and <= 1.3, DESIGN.md). Timings are
//! medians of alternating repeats after a warm-up. Noise is drawn ahead by the job's noise
//! thread, so the DP step is timed with a pre-drawn buffer and the draw is reported beside it.

use super::data::{Dataset, Example};
use super::finetune::FineTune;
use super::job::{private_step, PrivacySpec};
use super::model::Model;
use super::noise::NoiseSource;
use super::optim::{Optimizer, OptimizerKind, Schedule};
use super::synthetic::{write_model, Family, Shape};
use super::TrainError;
use serde::Serialize;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Shape and batch of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchShape {
    /// Blocks.
    pub layers: i64,
    /// Width.
    pub d_model: i64,
    /// Heads.
    pub heads: i64,
    /// Tokens per sequence.
    pub seq_len: i64,
    /// Sequences per batch.
    pub batch: usize,
    /// Vocabulary.
    pub vocab: i64,
    /// Timed repeats of each step.
    pub repeats: usize,
}

/// One line of the benchmark's output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DpStepTiming {
    /// "lora" or "full".
    pub mode: &'static str,
    /// Median DP step (clipping + pre-drawn noise + update), seconds.
    pub dp_step_s: f64,
    /// Median non-private step, seconds.
    pub nondp_step_s: f64,
    /// dp / non-dp.
    pub ratio: f64,
    /// Seconds to draw this step's noise on the noise thread (overlapped with compute in jobs).
    pub noise_draw_s: f64,
    /// Trainable coordinates.
    pub trainable_params: usize,
    /// Device used.
    pub device: String,
    /// Echo of the shape.
    pub layers: i64,
    /// Echo of the shape.
    pub d_model: i64,
    /// Echo of the shape.
    pub seq_len: i64,
    /// Echo of the shape.
    pub batch: usize,
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

/// Runs the benchmark for both modes on `device`.
pub fn dp_step(shape: BenchShape, device: Device) -> Result<Vec<DpStepTiming>, TrainError> {
    let dir = std::env::temp_dir().join(format!("ewtune-bench-{}", std::process::id()));
    let s = Shape { vocab: shape.vocab, d_model: shape.d_model, layers: shape.layers, heads: shape.heads, kv_heads: shape.heads, positions: shape.seq_len.max(8) };
    write_model(&dir, Family::Gpt2, s, 0, None)?;
    tch::manual_seed(1);
    let ids = Tensor::randint(shape.vocab, [shape.batch as i64, shape.seq_len], (Kind::Int64, Device::Cpu));
    let rows: Vec<Vec<i64>> = (0..shape.batch).map(|r| Vec::<i64>::try_from(&ids.get(r as i64)).unwrap_or_default()).collect();
    let data = Dataset {
        units: rows.into_iter().map(|ids| {
            let mut mask = vec![1; ids.len()];
            mask[0] = 0;
            vec![Example { ids, loss_mask: mask }]
        }).collect(),
        dropped_examples: 0,
        truncated_examples: 0,
    };
    let batch: Vec<usize> = (0..shape.batch).collect();
    let mut out = Vec::new();
    for (mode, ft) in [("lora", FineTune::default()), ("full", FineTune::Full)] {
        let model = Model::load(&dir, &ft, None, device)?;
        let params: Vec<Tensor> = model.trainable().into_iter().map(|(_, p)| p).collect();
        let numel: usize = params.iter().map(|p| p.numel()).sum();
        let mut opt_dp = Optimizer::new(OptimizerKind::default(), 1e-5, Schedule::Constant, 1000, &params);
        let mut opt_plain = Optimizer::new(OptimizerKind::default(), 1e-5, Schedule::Constant, 1000, &params);
        let mut source = NoiseSource::from_os()?;
        let mut noise = vec![0f32; numel];
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let privacy = PrivacySpec { epsilon: None, noise_multiplier: Some(1.0), delta: 1e-5, clip_norm: 1.0 };
        let mb = data.micro_batch(&batch, device);
        let mut plain_step = || -> Result<f64, TrainError> {
            let t = Instant::now();
            super::dpsgd::nonprivate_backward(&model, &mb)?;
            let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).collect();
            opt_plain.apply(&params, &grads);
            for p in &params {
                let mut g = p.grad();
                let _ = g.f_zero_();
            }
            sync(device);
            Ok(t.elapsed().as_secs_f64())
        };
        let (mut dp_times, mut plain_times, mut draw_times) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..=shape.repeats {
            let t = Instant::now();
            source.fill_gaussian_parallel(1.0, &mut noise, threads);
            let draw = t.elapsed().as_secs_f64();
            let t = Instant::now();
            private_step(&model, &data, &batch, &privacy, shape.batch, &noise, shape.batch as f64, &mut opt_dp, &params, device)?;
            sync(device);
            let dp = t.elapsed().as_secs_f64();
            let plain = plain_step()?;
            if rep > 0 {
                dp_times.push(dp);
                plain_times.push(plain);
                draw_times.push(draw);
            }
        }
        let (dp, plain) = (median(dp_times), median(plain_times));
        out.push(DpStepTiming {
            mode,
            dp_step_s: dp,
            nondp_step_s: plain,
            ratio: dp / plain,
            noise_draw_s: median(draw_times),
            trainable_params: numel,
            device: format!("{device:?}"),
            layers: shape.layers,
            d_model: shape.d_model,
            seq_len: shape.seq_len,
            batch: shape.batch,
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

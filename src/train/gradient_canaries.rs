//! The self-audit's gradient canaries inside the DP-SGD step (docs/self_audit.md, Gradient
//! canaries): m synthetic units whose gradient is 10 C on one coordinate each of an audit block,
//! a tensor of m values that the forward pass never reads and that is never saved with the model.
//!
//! Each canary is included with probability 1/2 (OS CSPRNG). The included ones join the
//! sampler's population after the dataset's N units, so the real Poisson sampler draws them at
//! the accounted q; the accounted q and the normaliser q N are left as they were. A drawn canary
//! goes through the step's clipping (norm, factor, sum) and the block is noised and divided like
//! every trainable tensor; its update is not applied (nothing reads the block). What the step
//! privatised on the block, and the realised noise of every tensor, feed the
//! [`Observations`](super::self_audit::Observations).

use super::dpsgd::{clip_and_accumulate_coordinates, ClippedSum};
use super::noise::{os_seeded_rng, NoiseError};
use super::self_audit::Observations;
use super::TrainError;
use rand::Rng;
use tch::{Device, Kind, Tensor};

/// The name the audit block goes by among the trainable tensors' noise statistics.
pub const BLOCK_NAME: &str = "self_audit.canaries";

/// A canary's raw gradient in clip norms: 10 C, so that clipping is exercised.
pub const MAGNITUDE: f64 = 10.0;

/// The most coordinates of one tensor whose realised noise is measured per step (the first ones,
/// in the tensor's flat order): enough for a test that resolves the noise std to well under 1 %
/// after a few steps, without a copy of every large tensor.
pub const NOISE_SAMPLE: i64 = 1 << 16;

/// A job's gradient canaries and what they observed.
pub struct GradientCanaries {
    block: Tensor,
    /// Coordinates of the included canaries: sampler index `first_index + j` is canary
    /// `coordinates[j]`.
    coordinates: Vec<usize>,
    first_index: usize,
    clip_norm: f64,
    observations: Observations,
    /// This step's realised-noise sums of squares, on the device until [`Self::observe_step`]
    /// reads them all in one copy.
    pending: Vec<(String, u64, Tensor)>,
}

impl GradientCanaries {
    /// Draws which of `m` canaries are included (OS CSPRNG), for a job over `population` units
    /// at sampling rate `q`, noise multiplier `sigma` and clip norm `clip_norm`.
    pub fn draw(m: usize, population: usize, q: f64, sigma: f64, clip_norm: f64, device: Device) -> Result<Self, NoiseError> {
        let mut rng = os_seeded_rng()?;
        let included = (0..m).map(|_| rng.random_bool(0.5)).collect();
        Ok(Self::resume(Observations::new(included, q, sigma), population, clip_norm, device))
    }

    /// Goes on from `observations` (a checkpoint's).
    pub fn resume(observations: Observations, population: usize, clip_norm: f64, device: Device) -> Self {
        let included = observations.included();
        let coordinates = (0..included.len()).filter(|&i| included[i]).collect();
        let block = Tensor::zeros([included.len() as i64], (Kind::Float, device));
        GradientCanaries { block, coordinates, first_index: population, clip_norm, observations, pending: Vec::new() }
    }

    /// Included canaries: the sampler's population grows by this many.
    pub fn units(&self) -> usize {
        self.coordinates.len()
    }

    /// A sampled logical batch split into the dataset's units and the canaries' coordinates.
    pub fn split(&self, batch: &[usize]) -> (Vec<usize>, Vec<usize>) {
        let (real, canaries): (Vec<usize>, Vec<usize>) = batch.iter().partition(|&&u| u < self.first_index);
        (real, canaries.into_iter().map(|u| self.coordinates[u - self.first_index]).collect())
    }

    /// Clips the sampled canaries (`coordinates`, from [`Self::split`]) at `clip_norm` into
    /// `acc`, the block joining its tensors.
    pub fn accumulate(&self, coordinates: &[usize], clip_norm: f64, acc: &mut ClippedSum) -> Result<(), TrainError> {
        acc.push_tensor(BLOCK_NAME, &self.block);
        clip_and_accumulate_coordinates(&self.block, coordinates, MAGNITUDE * self.clip_norm, clip_norm, acc)
    }

    /// Records the realised noise of tensor `name`: `privatised - clipped` over its first
    /// [`NOISE_SAMPLE`] coordinates (`clipped`: those coordinates of the sum before noise,
    /// overwritten). The sum of squares stays on the device until the step's end.
    pub fn observe_noise(&mut self, name: &str, mut clipped: Tensor, privatised: &Tensor) -> Result<(), TrainError> {
        let n = clipped.numel() as i64;
        let noise = clipped.f_neg_()?.f_add_(&privatised.f_reshape([-1])?.f_narrow(0, 0, n)?)?;
        self.pending.push((name.to_owned(), n as u64, noise.f_square()?.f_sum(Kind::Double)?));
        Ok(())
    }

    /// The first [`NOISE_SAMPLE`] coordinates of a sum before noise, for [`Self::observe_noise`].
    pub fn noise_sample(sum: &Tensor) -> Result<Tensor, TrainError> {
        let flat = sum.f_reshape([-1])?;
        let n = flat.numel().min(NOISE_SAMPLE as usize) as i64;
        Ok(flat.f_narrow(0, 0, n)?.copy())
    }

    /// Records one step: the block's privatised sum (before division by q N) and how many
    /// canaries the sampler drew; also reads this step's realised noise (every tensor's must have
    /// been observed by now).
    pub fn observe_step(&mut self, privatised_block: &Tensor, sampled: usize) -> Result<(), TrainError> {
        let y = Vec::<f64>::try_from(&(privatised_block.f_to_kind(Kind::Double)? / self.clip_norm))?;
        self.observations.observe_step(&y, sampled);
        let pending = std::mem::take(&mut self.pending);
        let sums: Vec<Tensor> = pending.iter().map(|(_, _, s)| s.shallow_clone()).collect();
        let sums = Vec::<f64>::try_from(&Tensor::f_stack(&sums, 0)?)?;
        let c2 = self.clip_norm * self.clip_norm;
        for ((name, count, _), sum_sq) in pending.iter().zip(sums) {
            self.observations.observe_noise(name, *count, sum_sq / c2);
        }
        Ok(())
    }

    /// What was observed so far.
    pub fn observations(&self) -> &Observations {
        &self.observations
    }
}

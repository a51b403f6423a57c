//! Deliberate bugs in the DP-SGD machinery, for the self-audit's mutation tests only
//! (docs/self_audit.md, Mutation tests): the noise std halved, no noise on one tensor, clipping
//! off, the true sampling rate 2q while q is accounted, noise added per micro-batch.
//!
//! Every hook is read where the real engine does the thing it breaks, so a mutant runs the whole
//! production step. Outside `cargo test` of this crate the hooks are constants (the identity, or
//! "no"): the [`Mutation`] type and the switch that sets one exist only under `#[cfg(test)]`, so
//! no binary, release or debug, can carry a mutation.

#[cfg(test)]
pub(crate) use active::{with, Mutation};

/// The noise std's factor (1; 0.5 under the noise-halved mutant).
pub(crate) fn noise_scale() -> f64 {
    #[cfg(test)]
    if active::get() == Mutation::NoiseHalved {
        return 0.5;
    }
    1.0
}

/// The clip norm the clipping uses (C; infinite, i.e. no clipping, under the clipping-off
/// mutant).
pub(crate) fn clip_norm(clip_norm: f64) -> f64 {
    #[cfg(test)]
    if active::get() == Mutation::ClippingOff {
        return f64::INFINITY;
    }
    clip_norm
}

/// The rate the sampler draws at (q; 2q under the double-rate mutant, while q is accounted).
pub(crate) fn sample_rate(q: f64) -> f64 {
    #[cfg(test)]
    if active::get() == Mutation::DoubleRate {
        return (2.0 * q).min(1.0);
    }
    q
}

/// Whether tensor `name` goes without its noise (never; the tensor named under the no-noise
/// mutant).
pub(crate) fn skips_noise(name: &str) -> bool {
    #[cfg(test)]
    if let Mutation::NoNoiseOn(tensor) = active::get() {
        return tensor == name;
    }
    let _ = name;
    false
}

/// Adds to `sum` what a step that noises every micro-batch would add beyond the step's one draw
/// `noise`: `passes - 1` further draws of its std (nothing, except under the per-micro-batch
/// mutant).
pub(crate) fn add_per_pass_noise(sum: &mut tch::Tensor, passes: usize, noise: &tch::Tensor) {
    #[cfg(test)]
    if active::get() == Mutation::NoisePerMicroBatch {
        let std = noise.std(false).double_value(&[]);
        for _ in 1..passes {
            let _ = sum.f_add_(&(sum.randn_like() * std));
        }
    }
    let _ = (sum, passes, noise);
}

#[cfg(test)]
mod active {
    use std::cell::RefCell;

    /// One deliberate bug.
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub(crate) enum Mutation {
        /// The real machinery.
        #[default]
        Honest,
        /// Noise std sigma C / 2.
        NoiseHalved,
        /// No noise on this trainable tensor.
        NoNoiseOn(String),
        /// Units never clipped.
        ClippingOff,
        /// The sampler draws at 2q; q is accounted.
        DoubleRate,
        /// Noise added per physical micro-batch instead of once per logical step.
        NoisePerMicroBatch,
    }

    thread_local! {
        static ACTIVE: RefCell<Mutation> = RefCell::new(Mutation::Honest);
    }

    pub(super) fn get() -> Mutation {
        ACTIVE.with(|m| m.borrow().clone())
    }

    /// Runs `f` with `mutation` active on this thread (the job loop runs on its caller's thread;
    /// the noise is drawn on another thread at the std this one hands it).
    pub(crate) fn with<T>(mutation: Mutation, f: impl FnOnce() -> T) -> T {
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                ACTIVE.with(|m| *m.borrow_mut() = Mutation::Honest);
            }
        }
        ACTIVE.with(|m| *m.borrow_mut() = mutation);
        let _reset = Reset;
        f()
    }
}

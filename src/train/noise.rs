//! The Gaussian noise of the DP-SGD step: a ChaCha20 CSPRNG seeded from the operating system and
//! a floating-point-safe N(0, std²) sampler that fills `f32` buffers, serially or on threads.
//! Implements docs/dpsgd.md, Noise (as Opacus `secure_mode`: CSPRNG plus the Holohan & Braghin
//! sum-of-Gaussians defence). It does not own the noise scale (σ·C comes from the job), the
//! tensors the noise is added to, or the batch sampler (`sampler.rs`, which can draw from the
//! same source because [`NoiseSource`] implements [`RngCore`]).

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;
use ring::rand::SecureRandom;

/// Fewest coordinates worth a thread of their own in [`NoiseSource::fill_gaussian_parallel`]
/// (about a millisecond of work): smaller buffers use fewer chunks.
pub const MIN_PARALLEL_CHUNK: usize = 1 << 15;

/// Why a noise source could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    /// ring's `SystemRandom` (getrandom(2) on Linux) refused to give the ChaCha20 key.
    #[error("the OS random source (ring SystemRandom) failed to provide a {bytes}-byte ChaCha20 seed")]
    OsRandomUnavailable {
        /// Length of the seed that was asked for.
        bytes: usize,
    },
}

/// Where a [`NoiseSource`]'s key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseOrigin {
    /// 32 bytes from the operating system's CSPRNG: unpredictable, fit for private training.
    Os,
    /// Expanded from a public `u64` test seed: anyone who knows the seed can subtract the noise.
    TestSeed(u64),
}

/// A ChaCha20 CSPRNG that produces Gaussian noise resisting floating-point attacks.
///
/// Not `Clone` on purpose: a copy would replay the same noise. `Debug` prints the origin only,
/// never the key or the stream position.
pub struct NoiseSource {
    rng: ChaCha20Rng,
    origin: NoiseOrigin,
}

impl std::fmt::Debug for NoiseSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseSource").field("origin", &self.origin).finish_non_exhaustive()
    }
}

/// A ChaCha20 generator keyed with 32 bytes from the operating system (ring's `SystemRandom`):
/// the CSPRNG behind both the noise and the Poisson sampling of private training.
pub fn os_seeded_rng() -> Result<ChaCha20Rng, NoiseError> {
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| NoiseError::OsRandomUnavailable { bytes: seed.len() })?;
    let rng = ChaCha20Rng::from_seed(seed);
    seed.fill(0);
    Ok(rng)
}

impl NoiseSource {
    /// A source keyed with 32 bytes from the operating system (ring's `SystemRandom`), as Opacus
    /// secure mode keys torchcsprng from urandom (docs/dpsgd.md, Noise). This is the only
    /// constructor fit for private training.
    pub fn from_os() -> Result<Self, NoiseError> {
        Ok(Self { rng: os_seeded_rng()?, origin: NoiseOrigin::Os })
    }

    /// A source expanded from a public test seed, so that runs and tests reproduce exactly.
    ///
    /// **NOT PRIVATE**: whoever knows `seed` can regenerate and subtract every noise value
    /// (docs/dpsgd.md, Noise). Use it for tests
    /// and reproducible experiments only; [`NoiseSource::is_private`] returns `false` for it.
    pub fn seeded_for_tests(seed: u64) -> Self {
        Self { rng: ChaCha20Rng::seed_from_u64(seed), origin: NoiseOrigin::TestSeed(seed) }
    }

    /// Where this source's key came from.
    pub fn origin(&self) -> NoiseOrigin {
        self.origin
    }

    /// Whether the key came from the operating system (and so the noise is secret).
    pub fn is_private(&self) -> bool {
        self.origin == NoiseOrigin::Os
    }

    /// Fills `out` with independent N(0, `std`²) samples, consuming five standard normals per
    /// coordinate from this source.
    ///
    /// Follows Holohan & Braghin, "Secure Random Sampling in Differential Privacy" (arXiv
    /// 2107.10138, §5.1, n = 2), the construction Opacus uses in `secure_mode`
    /// (`optimizers/optimizer.py:_generate_noise`): draw and discard one standard normal, then
    /// return `(Z1 + Z2 + Z3 + Z4) / 2 · std`, which is exactly N(0, std²) and raises the cost of
    /// recovering the unnoised value from the bits of a sample from 2^53 to 2^159 (Opacus'
    /// docstring: 2^(p(2n−1)) with p = 53). Opacus discards one sample per call; here one is
    /// discarded per coordinate, which costs a fifth more draws and is no weaker. Each standard
    /// normal is rand_distr's ziggurat `StandardNormal` on `f64`: a 52-bit uniform on [−1, 1) and
    /// an 8-bit layer index from one ChaCha20 `u64`, plus `f64` uniforms in its rare rejection and
    /// tail steps, never an `f32` uniform. The sum and scaling are in `f64`, rounded to `f32` once.
    ///
    /// `std` is σ·C and must be finite and non-negative (validate it where the job is built): `std = 0` gives
    /// zeros, a negative `std` gives the same distribution as `|std|`, and NaN propagates.
    pub fn fill_gaussian(&mut self, std: f64, out: &mut [f32]) {
        fill_holohan_braghin(&mut self.rng, std, out);
    }

    /// [`NoiseSource::fill_gaussian`] split over up to `threads` threads (`0` counts as `1`).
    ///
    /// With `k = min(threads, ceil(len / MIN_PARALLEL_CHUNK))`, `out` is cut into contiguous
    /// chunks of `ceil(len / k)` coordinates (at most `k` of them, the last one possibly shorter).
    /// If `k <= 1` this is exactly `fill_gaussian`. Otherwise chunk `j` gets its own `ChaCha20Rng`
    /// keyed with the `j`-th 32-byte block that this source outputs (`fill_bytes`, in chunk
    /// order), and a scoped thread fills the chunk from it as `fill_gaussian` would.
    ///
    /// Why the chunks are independent: the child keys are consecutive ChaCha20 keystream bytes,
    /// which are computationally indistinguishable from independent uniform 256-bit keys, and
    /// ChaCha20 streams under independent uniform keys are indistinguishable from independent
    /// uniform streams (the PRF assumption on ChaCha20 that the CSPRNG itself rests on). Two
    /// children share a key with probability below k²/2^257. The chunks are disjoint slices, each
    /// written by one thread, and the parent has moved past the key bytes it handed out, so later
    /// calls (serial or parallel) never reuse a child's key. The output is a deterministic function
    /// of (source state, `out.len()`, `threads`): with a test seed it reproduces exactly for the
    /// same thread count, and differs, with the same distribution, for another.
    pub fn fill_gaussian_parallel(&mut self, std: f64, out: &mut [f32], threads: usize) {
        let max_chunks = out.len().div_ceil(MIN_PARALLEL_CHUNK);
        let chunks = threads.max(1).min(max_chunks);
        if chunks <= 1 {
            self.fill_gaussian(std, out);
            return;
        }
        let chunk_len = out.len().div_ceil(chunks);
        let mut children = Vec::with_capacity(chunks);
        for _ in out.chunks(chunk_len) {
            let mut key = [0u8; 32];
            self.rng.fill_bytes(&mut key);
            children.push(ChaCha20Rng::from_seed(key));
            key.fill(0);
        }
        std::thread::scope(|scope| {
            for (chunk, mut child) in out.chunks_mut(chunk_len).zip(children) {
                scope.spawn(move || fill_holohan_braghin(&mut child, std, chunk));
            }
        });
    }
}

/// Lets the batch sampler draw from the same CSPRNG, as Opacus secure mode drives both the noise
/// and the Poisson sampler from one generator (docs/dpsgd.md, Noise).
impl RngCore for NoiseSource {
    fn next_u32(&mut self) -> u32 {
        self.rng.next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.rng.fill_bytes(dst)
    }
}

/// Holohan & Braghin (arXiv 2107.10138, §5.1) with n = 2, per coordinate: discard one standard
/// normal, then (Z1 + Z2 + Z3 + Z4) / 2 · std, summed in `f64` and rounded to `f32` once.
fn fill_holohan_braghin(rng: &mut ChaCha20Rng, std: f64, out: &mut [f32]) {
    let half_std = 0.5 * std;
    for x in out.iter_mut() {
        let _discarded: f64 = rng.sample(StandardNormal);
        let z1: f64 = rng.sample(StandardNormal);
        let z2: f64 = rng.sample(StandardNormal);
        let z3: f64 = rng.sample(StandardNormal);
        let z4: f64 = rng.sample(StandardNormal);
        *x = (((z1 + z2) + z3 + z4) * half_std) as f32;
    }
}

/// Noise for the next logical batches, drawn ahead on a dedicated thread so that the CSPRNG's
/// cost overlaps the forward/backward of the current step. Each buffer holds `len` independent
/// `N(0, std^2)` coordinates from one [`NoiseSource`]; buffers are never reused before they are
/// overwritten with fresh draws.
pub struct NoiseStream {
    filled: std::sync::mpsc::Receiver<Vec<f32>>,
    empty: std::sync::mpsc::SyncSender<Vec<f32>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl NoiseStream {
    /// Starts drawing with `threads` worker threads per buffer, one buffer ahead.
    pub fn start(mut source: NoiseSource, std: f64, len: usize, threads: usize) -> Self {
        let (filled_tx, filled) = std::sync::mpsc::sync_channel::<Vec<f32>>(1);
        let (empty, empty_rx) = std::sync::mpsc::sync_channel::<Vec<f32>>(2);
        let worker = std::thread::spawn(move || {
            let mut buf = vec![0f32; len];
            loop {
                source.fill_gaussian_parallel(std, &mut buf, threads);
                if filled_tx.send(buf).is_err() {
                    return;
                }
                buf = match empty_rx.recv() {
                    Ok(b) => b,
                    Err(_) => return,
                };
            }
        });
        NoiseStream { filled, empty, worker: Some(worker) }
    }

    /// The next buffer of fresh noise. Hand it back with [`NoiseStream::recycle`] when done.
    pub fn next_buffer(&mut self) -> Vec<f32> {
        self.filled.recv().expect("the noise worker only stops when the stream is dropped")
    }

    /// Returns a used buffer for the worker to overwrite with fresh draws.
    pub fn recycle(&mut self, buf: Vec<f32>) {
        let _ = self.empty.try_send(buf);
    }
}

impl Drop for NoiseStream {
    fn drop(&mut self) {
        // Closing both channels stops the worker after its current fill.
        let (_, dummy) = std::sync::mpsc::sync_channel(1);
        let filled = std::mem::replace(&mut self.filled, dummy);
        drop(filled);
        let (dummy_tx, _) = std::sync::mpsc::sync_channel(1);
        drop(std::mem::replace(&mut self.empty, dummy_tx));
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    //! Every test but `from_os_sources_differ` uses a fixed, public test seed and is reproducible.

    use super::*;

    const N: usize = 1_000_000;

    /// Φ(x) = erfc(−x/√2)/2, erfc from Numerical Recipes (3rd ed., §6.2, Chebyshev fit,
    /// relative error < 1.2e-7).
    fn normal_cdf(x: f64) -> f64 {
        const C: [f64; 10] = [
            -1.265_512_23,
            1.000_023_68,
            0.374_091_96,
            0.096_784_18,
            -0.186_288_06,
            0.278_868_07,
            -1.135_203_98,
            1.488_515_87,
            -0.822_152_23,
            0.170_872_77,
        ];
        let y = -x / std::f64::consts::SQRT_2;
        let z = y.abs();
        let t = 1.0 / (1.0 + 0.5 * z);
        let poly = C.iter().rev().fold(0.0, |acc, &c| acc * t + c);
        let erfc_abs = t * (-z * z + poly).exp();
        let erfc = if y >= 0.0 { erfc_abs } else { 2.0 - erfc_abs };
        0.5 * erfc
    }

    fn mean_var(xs: &[f32]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = xs.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var)
    }

    /// Asymptotic Kolmogorov critical value: P(√n·D > c) ≈ 2·exp(−2c²) = 1e-6 at c = 2.69.
    const KS_C: f64 = 2.69;

    fn ks_one_sample(xs: &[f32], std: f64) -> f64 {
        let mut v: Vec<f64> = xs.iter().map(|&x| f64::from(x) / std).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        v.iter()
            .enumerate()
            .map(|(i, &x)| {
                let f = normal_cdf(x);
                (f - i as f64 / n).abs().max(((i + 1) as f64 / n - f).abs())
            })
            .fold(0.0, f64::max)
    }

    fn ks_two_sample(a: &[f32], b: &[f32]) -> f64 {
        let mut a = a.to_vec();
        let mut b = b.to_vec();
        a.sort_by(f32::total_cmp);
        b.sort_by(f32::total_cmp);
        let (na, nb) = (a.len() as f64, b.len() as f64);
        let (mut i, mut j, mut d) = (0usize, 0usize, 0.0f64);
        while i < a.len() && j < b.len() {
            let x = a[i].min(b[j]);
            while i < a.len() && a[i] <= x {
                i += 1;
            }
            while j < b.len() && b[j] <= x {
                j += 1;
            }
            d = d.max((i as f64 / na - j as f64 / nb).abs());
        }
        d
    }

    /// Checks mean, variance, fourth moment and the 3σ tail against N(0, std²), each within six
    /// standard errors.
    fn assert_gaussian_moments(xs: &[f32], std: f64) {
        let n = xs.len() as f64;
        let (mean, var) = mean_var(xs);
        // SE(mean) = std/√n; SE(sample variance) = std²·√(2/(n−1)) for a normal.
        assert!(mean.abs() < 6.0 * std / n.sqrt(), "mean {mean}");
        assert!((var - std * std).abs() < 6.0 * std * std * (2.0 / (n - 1.0)).sqrt(), "var {var}");
        // E z⁴ = 3, Var z⁴ = E z⁸ − 9 = 96.
        let m4 = xs.iter().map(|&x| (f64::from(x) / std).powi(4)).sum::<f64>() / n;
        assert!((m4 - 3.0).abs() < 6.0 * (96.0 / n).sqrt(), "fourth moment {m4}");
        // P(|z| > 3) = erfc(3/√2) = 0.002_699_796_063_260_2, binomial standard error.
        let p = 0.002_699_796_063_260_2;
        let tail = xs.iter().filter(|&&x| (f64::from(x) / std).abs() > 3.0).count() as f64 / n;
        assert!((tail - p).abs() < 6.0 * (p * (1.0 - p) / n).sqrt(), "3-sigma tail {tail}");
    }

    #[test]
    fn normal_cdf_reference_points() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.0) - 0.841_344_746_068_542_9).abs() < 1e-7);
        assert!((normal_cdf(-1.959_963_984_540_054) - 0.025).abs() < 1e-7);
        assert!((normal_cdf(3.0) - 0.998_650_101_968_369_9).abs() < 1e-7);
    }

    #[test]
    fn serial_moments_match_std() {
        let std = 2.5;
        let mut src = NoiseSource::seeded_for_tests(1);
        let mut out = vec![0f32; N];
        src.fill_gaussian(std, &mut out);
        assert_gaussian_moments(&out, std);
    }

    #[test]
    fn serial_passes_kolmogorov_smirnov() {
        let std = 0.7;
        let mut src = NoiseSource::seeded_for_tests(2);
        let mut out = vec![0f32; N];
        src.fill_gaussian(std, &mut out);
        let d = ks_one_sample(&out, std);
        assert!(d < KS_C / (N as f64).sqrt(), "KS D = {d}");
    }

    #[test]
    fn parallel_moments_and_kolmogorov_smirnov() {
        let std = 1.3;
        let mut src = NoiseSource::seeded_for_tests(3);
        let mut out = vec![0f32; N];
        src.fill_gaussian_parallel(std, &mut out, 4);
        assert_gaussian_moments(&out, std);
        let d = ks_one_sample(&out, std);
        assert!(d < KS_C / (N as f64).sqrt(), "KS D = {d}");
    }

    #[test]
    fn parallel_and_serial_have_the_same_distribution() {
        let std = 1.0;
        let mut serial = vec![0f32; N];
        let mut parallel = vec![0f32; N];
        NoiseSource::seeded_for_tests(4).fill_gaussian(std, &mut serial);
        NoiseSource::seeded_for_tests(5).fill_gaussian_parallel(std, &mut parallel, 3);
        let d = ks_two_sample(&serial, &parallel);
        let n = N as f64;
        assert!(d < KS_C * (2.0 / n).sqrt(), "two-sample KS D = {d}");
        let ((m1, v1), (m2, v2)) = (mean_var(&serial), mean_var(&parallel));
        assert!((m1 - m2).abs() < 6.0 * (2.0 / n).sqrt());
        assert!((v1 - v2).abs() < 6.0 * (4.0 / n).sqrt());
    }

    #[test]
    fn parallel_chunks_are_uncorrelated() {
        let threads = 4;
        let mut out = vec![0f32; threads * MIN_PARALLEL_CHUNK * 4];
        NoiseSource::seeded_for_tests(6).fill_gaussian_parallel(1.0, &mut out, threads);
        let chunk = out.len() / threads;
        let se = 1.0 / (chunk as f64).sqrt();
        for j in 1..threads {
            let (a, b) = (&out[..chunk], &out[j * chunk..(j + 1) * chunk]);
            assert_ne!(a, b);
            let corr =
                a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum::<f64>() / chunk as f64;
            assert!(corr.abs() < 6.0 * se, "chunk 0 vs {j}: correlation {corr}");
        }
    }

    /// Pins the construction: five f64 standard normals per coordinate from the seeded ChaCha20,
    /// the first discarded, `(z1 + z2 + z3 + z4) / 2 · std` rounded to f32.
    #[test]
    fn serial_matches_reference_construction_bit_for_bit() {
        let std = 3.0;
        let mut out = vec![0f32; 1000];
        NoiseSource::seeded_for_tests(7).fill_gaussian(std, &mut out);
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        for &x in &out {
            let z: Vec<f64> = (0..5).map(|_| rng.sample(StandardNormal)).collect();
            let expected = ((z[1] + z[2] + z[3] + z[4]) / 2.0 * std) as f32;
            assert_eq!(x.to_bits(), expected.to_bits());
        }
    }

    /// Pins the documented derivation of the parallel streams.
    #[test]
    fn parallel_matches_documented_derivation() {
        let len = 3 * MIN_PARALLEL_CHUNK + 17;
        let mut out = vec![0f32; len];
        NoiseSource::seeded_for_tests(8).fill_gaussian_parallel(0.5, &mut out, 3);
        let mut parent = NoiseSource::seeded_for_tests(8);
        let chunk_len = len.div_ceil(3);
        let mut expected = vec![0f32; len];
        let mut keys = Vec::new();
        for _ in 0..3 {
            let mut key = [0u8; 32];
            parent.fill_bytes(&mut key);
            keys.push(key);
        }
        for (chunk, key) in expected.chunks_mut(chunk_len).zip(keys) {
            fill_holohan_braghin(&mut ChaCha20Rng::from_seed(key), 0.5, chunk);
        }
        assert_eq!(out, expected);
    }

    #[test]
    fn same_test_seed_reproduces_exactly() {
        let mut a = vec![0f32; 10_000];
        let mut b = vec![0f32; 10_000];
        NoiseSource::seeded_for_tests(9).fill_gaussian(1.0, &mut a);
        NoiseSource::seeded_for_tests(9).fill_gaussian(1.0, &mut b);
        assert_eq!(a, b);
        let mut c = vec![0f32; 4 * MIN_PARALLEL_CHUNK];
        let mut d = vec![0f32; 4 * MIN_PARALLEL_CHUNK];
        NoiseSource::seeded_for_tests(9).fill_gaussian_parallel(1.0, &mut c, 4);
        NoiseSource::seeded_for_tests(9).fill_gaussian_parallel(1.0, &mut d, 4);
        assert_eq!(c, d);
        NoiseSource::seeded_for_tests(10).fill_gaussian(1.0, &mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn successive_calls_continue_the_stream() {
        let mut src = NoiseSource::seeded_for_tests(11);
        let mut a = vec![0f32; 2 * MIN_PARALLEL_CHUNK];
        let mut b = vec![0f32; 2 * MIN_PARALLEL_CHUNK];
        src.fill_gaussian_parallel(1.0, &mut a, 2);
        src.fill_gaussian_parallel(1.0, &mut b, 2);
        assert_ne!(a, b);
        src.fill_gaussian(1.0, &mut a);
        assert_ne!(a, b);
    }

    #[test]
    fn small_or_single_thread_parallel_equals_serial() {
        for (len, threads) in [(0, 4), (1, 4), (1000, 16), (MIN_PARALLEL_CHUNK, 8), (5000, 0), (70_000, 1)] {
            let mut a = vec![0f32; len];
            let mut b = vec![0f32; len];
            NoiseSource::seeded_for_tests(12).fill_gaussian(1.0, &mut a);
            NoiseSource::seeded_for_tests(12).fill_gaussian_parallel(1.0, &mut b, threads);
            assert_eq!(a, b, "len {len}, threads {threads}");
        }
    }

    #[test]
    fn zero_std_gives_zeros() {
        let mut out = vec![1f32; 100];
        NoiseSource::seeded_for_tests(13).fill_gaussian(0.0, &mut out);
        assert!(out.iter().all(|&x| x == 0.0));
    }

    /// The only unseeded test: two OS-keyed sources must not produce the same noise.
    #[test]
    fn from_os_sources_differ() {
        let mut a = NoiseSource::from_os().unwrap();
        let mut b = NoiseSource::from_os().unwrap();
        assert!(a.is_private() && b.is_private());
        assert_eq!(a.origin(), NoiseOrigin::Os);
        let mut xa = vec![0f32; 64];
        let mut xb = vec![0f32; 64];
        a.fill_gaussian(1.0, &mut xa);
        b.fill_gaussian(1.0, &mut xb);
        assert_ne!(xa, xb);
    }

    #[test]
    fn test_seeded_source_is_marked_not_private() {
        let src = NoiseSource::seeded_for_tests(14);
        assert!(!src.is_private());
        assert_eq!(src.origin(), NoiseOrigin::TestSeed(14));
        assert_eq!(format!("{src:?}"), "NoiseSource { origin: TestSeed(14), .. }");
    }
}

//! The privacy-loss log-likelihood ratio (PLLR) of the Poisson-subsampled Gaussian mechanism, its
//! exact one-step hockey-stick curves, and its cumulants by quadrature (cached per (q, sigma)).
//!
//! See docs/accounting.md, "One DP-SGD step". With `mu = 1/sigma`, the dominating pair is
//! `P = N(0,1)` (neighbour without the example) and `Q = (1-q) N(0,1) + q N(mu,1)` (with it);
//! `L(x) = log(1 - q + q exp(mu x - mu^2/2))`, `X = L(xi), xi ~ P`, `Y = L(xi), xi ~ Q`.
//! `q = 1` is the plain Gaussian mechanism.

use crate::domain::{check_noise_multiplier, check_sample_rate};
use crate::error::Result;
use crate::normal;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Most points of the cumulant quadrature (never reached for an accepted sigma).
const MAX_QUADRATURE_POINTS: usize = 1 << 21;

/// One DP-SGD step: the Gaussian mechanism with noise multiplier `sigma` (noise std / L2
/// sensitivity) applied to a Poisson sample drawn at rate `q`, add/remove-one adjacency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SubsampledGaussian {
    /// Noise standard deviation in units of the L2 sensitivity (clip norm).
    pub noise_multiplier: f64,
    /// Poisson sampling probability of each example, in (0, 1].
    pub sample_rate: f64,
}

/// Most (q, sigma) points whose PLLR statistics stay cached.
const PLLR_CACHE_CAPACITY: usize = 4096;

impl SubsampledGaussian {
    /// Validates and builds the mechanism: `noise_multiplier` finite and
    /// `>= MIN_NOISE_MULTIPLIER` (0.01), `sample_rate` in `(0, 1]` (see [`crate::domain`]).
    pub fn new(noise_multiplier: f64, sample_rate: f64) -> Result<Self> {
        check_noise_multiplier(noise_multiplier)?;
        check_sample_rate(sample_rate)?;
        Ok(Self { noise_multiplier, sample_rate })
    }

    /// `mu = 1/sigma`, the shift of the Gaussian pair in standard units.
    pub fn mu(&self) -> f64 {
        1.0 / self.noise_multiplier
    }

    /// `log(1 - q)`, the infimum of the PLLR (`-inf` for q = 1).
    pub fn loss_infimum(&self) -> f64 {
        if self.sample_rate >= 1.0 {
            f64::NEG_INFINITY
        } else {
            (-self.sample_rate).ln_1p()
        }
    }

    /// The PLLR `L(x)`, evaluated as `logaddexp(log1p(-q), log q + mu x - mu^2/2)`.
    pub fn privacy_loss(&self, x: f64) -> f64 {
        let mu = self.mu();
        let shifted = mu * x - 0.5 * mu * mu;
        if self.sample_rate >= 1.0 {
            return shifted;
        }
        let a = (-self.sample_rate).ln_1p();
        let b = self.sample_rate.ln() + shifted;
        let (hi, lo) = if a > b { (a, b) } else { (b, a) };
        hi + (lo - hi).exp().ln_1p()
    }

    /// The inverse of the increasing map `x -> L(x)`: `x_t` with `L(x) <= t <=> x <= x_t`
    /// (`-inf` at or below the infimum).
    pub fn inverse_loss(&self, t: f64) -> f64 {
        let mu = self.mu();
        if self.sample_rate >= 1.0 {
            return (t + 0.5 * mu * mu) / mu;
        }
        let q = self.sample_rate;
        // (e^t - (1-q))/q = 1 + expm1(t)/q, so log of it is log1p(expm1(t)/q).
        let ratio = t.exp_m1() / q;
        if ratio <= -1.0 {
            return f64::NEG_INFINITY;
        }
        (ratio.ln_1p() + 0.5 * mu * mu) / mu
    }

    /// Exact one-step `delta(eps)` of the REMOVE pair (A = Q, B = P):
    /// `q Phibar(x_eps - mu) - (e^eps - 1 + q) Phibar(x_eps)`, and `1 - e^eps` below the infimum.
    pub fn remove_delta(&self, eps: f64) -> f64 {
        let x = self.inverse_loss(eps);
        if x == f64::NEG_INFINITY {
            return -eps.exp_m1();
        }
        let q = self.sample_rate;
        let mu = self.mu();
        (q * normal::sf(x - mu) - (eps.exp_m1() + q) * normal::sf(x)).max(0.0)
    }

    /// Exact one-step `delta(eps)` of the ADD pair (A = P, B = Q, loss `-L`):
    /// `F_X(-eps) - e^eps F_Y(-eps)` with `F_X(t) = Phi(x_t)`, `F_Y(t) = (1-q)Phi(x_t) + q Phi(x_t - mu)`.
    pub fn add_delta(&self, eps: f64) -> f64 {
        let x = self.inverse_loss(-eps);
        if x == f64::NEG_INFINITY {
            return 0.0;
        }
        let q = self.sample_rate;
        let mu = self.mu();
        let fx = normal::cdf(x);
        let fy = (1.0 - q) * fx + q * normal::cdf(x - mu);
        (fx - eps.exp() * fy).max(0.0)
    }

    /// Cumulants and absolute moments of X and Y, computed once per (q, sigma) and cached (at
    /// most [`PLLR_CACHE_CAPACITY`] entries; cleared when full).
    pub fn pllr_stats(&self) -> Arc<PllrStats> {
        type Cache = Mutex<HashMap<(u64, u64), Arc<PllrStats>>>;
        static CACHE: OnceLock<Cache> = OnceLock::new();
        let key = (self.sample_rate.to_bits(), self.noise_multiplier.to_bits());
        let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        if let Some(hit) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return hit.clone();
        }
        let stats = Arc::new(self.compute_pllr_stats());
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: every calibration a client asks for adds a few dozen (q, sigma) points.
        if cache.len() >= PLLR_CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(key, stats.clone());
        stats
    }

    /// The trapezoid rule: uniform grid `x_k = -40 + k h` up to `40 + mu`,
    /// `h = min(0.01, 0.02/mu)`, weights `phi(x)` (for X) and `phi(x) e^{L(x)}` (for Y, by the
    /// change of measure), each normalised to sum 1; two-pass central moments. No absolute
    /// tolerance anywhere: the cumulants scale like q^j.
    fn compute_pllr_stats(&self) -> PllrStats {
        let mu = self.mu();
        let h = (0.02 / mu).min(0.01);
        let end = 40.0 + mu + h;
        // At the sigma floor (mu = 100) this is 9e5 points; the cap only guards a mechanism
        // built around `new` (its fields are public) from allocating without bound.
        let count = (((end + 40.0) / h).ceil() as usize).min(MAX_QUADRATURE_POINTS);
        let mut losses = Vec::with_capacity(count);
        let mut w_p = Vec::with_capacity(count);
        let mut w_q = Vec::with_capacity(count);
        for k in 0..count {
            let x = -40.0 + k as f64 * h;
            if x >= end {
                break;
            }
            let l = self.privacy_loss(x);
            let log_w = -0.5 * x * x - normal::LN_SQRT_2PI;
            losses.push(l);
            w_p.push(log_w.exp());
            w_q.push((log_w + l).exp());
        }
        PllrStats { x: Moments::from_weighted(&losses, &w_p), y: Moments::from_weighted(&losses, &w_q) }
    }
}

/// Per-step statistics of one PLLR distribution (X or Y).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    /// Cumulants kappa_1 .. kappa_6.
    pub kappa: [f64; 6],
    /// `E|L - E L|`.
    pub abs1: f64,
    /// `E|L - E L|^3`.
    pub abs3: f64,
    /// `E (L - E L)^4`.
    pub central4: f64,
}

impl Moments {
    fn from_weighted(values: &[f64], weights: &[f64]) -> Self {
        let total: f64 = weights.iter().sum();
        let m1 = values.iter().zip(weights).map(|(v, w)| v * w).sum::<f64>() / total;
        let mut c = [0.0f64; 7];
        let (mut abs1, mut abs3) = (0.0, 0.0);
        for (v, w) in values.iter().zip(weights) {
            let d = v - m1;
            let mut p = d;
            for cj in c.iter_mut().skip(2) {
                p *= d;
                *cj += w * p;
            }
            abs1 += w * d.abs();
            abs3 += w * d.abs() * d * d;
        }
        for cj in c.iter_mut() {
            *cj /= total;
        }
        let (c2, c3, c4, c5, c6) = (c[2], c[3], c[4], c[5], c[6]);
        Moments {
            kappa: [
                m1,
                c2,
                c3,
                c4 - 3.0 * c2 * c2,
                c5 - 10.0 * c3 * c2,
                c6 - 15.0 * c4 * c2 - 10.0 * c3 * c3 + 30.0 * c2 * c2 * c2,
            ],
            abs1: abs1 / total,
            abs3: abs3 / total,
            central4: c4,
        }
    }

    /// Inputs of the Derumigny-Girard-Guyonvarch bound (Derumigny, Girard, Guyonvarch,
    /// arXiv 2101.05780; docs/accounting.md, "The finite-sample interval"):
    /// `(lambda3, K3, K3~, K4)` of the centred per-step PLLR.
    pub fn standardized(&self) -> Standardized {
        let var = self.kappa[1];
        let sd = var.sqrt();
        let k3 = self.abs3 / (sd * sd * sd);
        Standardized { lambda3: self.kappa[2] / (sd * sd * sd), k3, k3_tilde: k3 + self.abs1 / sd, k4: self.central4 / (var * var) }
    }
}

/// Standardized moments of one step (inputs of the finite-sample bound).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standardized {
    /// Skewness `E Z^3 / s^3`.
    pub lambda3: f64,
    /// `E|Z|^3 / s^3`.
    pub k3: f64,
    /// `K3 + E|Z| / s`.
    pub k3_tilde: f64,
    /// `E Z^4 / s^4`.
    pub k4: f64,
}

/// Cumulants of the PLLR under both members of the REMOVE pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PllrStats {
    /// Statistics of X = L(xi), xi ~ P = N(0, 1).
    pub x: Moments,
    /// Statistics of Y = L(xi), xi ~ Q (the mixture).
    pub y: Moments,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn rel(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    /// Cumulant test vectors (per step), from an independent high-precision quadrature.
    #[test]
    fn cumulant_table_of_spec() {
        let table: [(f64, f64, [f64; 6], [f64; 6]); 4] = [
            (0.01, 0.8,
             [-1.6716530482e-04, 3.1710468031e-04, 4.7076683617e-05, 1.6198167514e-05, 9.4664336864e-06, 7.9197377284e-06],
             [1.7665253682e-04, 3.7427977218e-04, 6.9811750613e-05, 3.1728216034e-05, 2.4654096561e-05, 2.7064768584e-05]),
            (0.001, 1.0,
             [-8.5457782306e-07, 1.7046437977e-06, 1.3461349255e-08, 2.9377212414e-10, 1.4797275243e-11, 1.5236248624e-12],
             [8.5684624097e-07, 1.7182545652e-06, 1.3762786473e-08, 3.0938209352e-10, 1.6477691689e-11, 1.8545798169e-12]),
            (0.1, 2.0,
             [-1.3465682252e-03, 2.6263049751e-03, 1.9396218192e-04, 2.5140406916e-05, 4.7373485836e-06, 1.1783363416e-06],
             [1.3811156528e-03, 2.8336792573e-03, 2.2168407299e-04, 3.0533914526e-05, 6.1234042065e-06, 1.6220188972e-06]),
            (2000.0 / 67349.0, 0.7865,
             [-1.3405397079e-03, 2.3897672834e-03, 7.3921448322e-04, 4.4095509558e-04, 3.9294397107e-04, 4.6069414799e-04],
             [1.5137464247e-03, 3.4417680122e-03, 1.4944197816e-03, 1.2476098003e-03, 1.5173244303e-03, 2.3625979248e-03]),
        ];
        for (q, sigma, kx, ky) in table {
            let s = SubsampledGaussian::new(sigma, q).unwrap().pllr_stats();
            for j in 0..6 {
                assert!(rel(s.x.kappa[j], kx[j]) < 1e-8, "q={q} sigma={sigma} X k{} = {} vs {}", j + 1, s.x.kappa[j], kx[j]);
                assert!(rel(s.y.kappa[j], ky[j]) < 1e-8, "q={q} sigma={sigma} Y k{} = {} vs {}", j + 1, s.y.kappa[j], ky[j]);
            }
        }
        // Standardized per-step moments (the inputs of the Derumigny-Girard-Guyonvarch bound).
        let s = SubsampledGaussian::new(0.8, 0.01).unwrap().pllr_stats();
        let (x, y) = (s.x.standardized(), s.y.standardized());
        for (got, want) in [(x.lambda3, 8.3368), (x.k3, 8.4292), (x.k3_tilde, 8.9431), (x.k4, 164.09),
                            (y.lambda3, 9.6413), (y.k3, 9.7226), (y.k3_tilde, 10.2180), (y.k4, 229.49)] {
            assert!(rel(got, want) < 1e-4, "{got} vs {want}");
        }
    }

    /// The quadrature's mean equals an independent 30-digit adaptive quadrature.
    #[test]
    fn mean_matches_high_precision_quadrature() {
        let s = SubsampledGaussian::new(0.8, 0.01).unwrap().pllr_stats();
        assert!(rel(s.x.kappa[0], -1.6716530481846e-04) < 1e-10);
    }

    /// One-step oracle: exact delta_R(eps) for q = 0.01, sigma = 0.8.
    #[test]
    fn one_step_remove_delta_oracle() {
        let m = SubsampledGaussian::new(0.8, 0.01).unwrap();
        for (eps, want) in [(0.0, 4.680289419026e-03), (0.01, 2.893065429274e-03), (0.05, 8.831196935171e-04),
                            (0.1, 3.486452108221e-04), (0.5, 8.970588825809e-06), (1.0, 5.685389548580e-07)] {
            assert!(rel(m.remove_delta(eps), want) < 1e-9, "eps={eps}: {} vs {want}", m.remove_delta(eps));
        }
    }

    /// Independent route: the one-step delta by direct numerical integration of
    /// E_A[(1 - e^{eps - loss})_+] must equal the closed forms, in both directions.
    #[test]
    fn one_step_deltas_match_direct_integration() {
        let m = SubsampledGaussian::new(0.9, 0.05).unwrap();
        let (q, mu) = (m.sample_rate, m.mu());
        for eps in [0.0, 0.02, 0.1, 0.4, 1.0] {
            let (mut rem, mut add) = (0.0, 0.0);
            let h = 1e-4;
            let mut x = -30.0 + h / 2.0; // midpoint rule
            while x < 30.0 + mu {
                let l = m.privacy_loss(x);
                let p = normal::pdf(x);
                let qd = (1.0 - q) * p + q * normal::pdf(x - mu);
                rem += qd * (1.0 - (eps - l).exp()).max(0.0) * h;
                add += p * (1.0 - (eps + l).exp()).max(0.0) * h;
                x += h;
            }
            assert!((m.remove_delta(eps) - rem).abs() < 1e-7 * rem.max(1e-6), "remove eps={eps}: {} vs {rem}", m.remove_delta(eps));
            assert!((m.add_delta(eps) - add).abs() < 1e-7 * add.max(1e-6), "add eps={eps}: {} vs {add}", m.add_delta(eps));
        }
    }

    #[test]
    fn inverse_loss_inverts() {
        let m = SubsampledGaussian::new(0.7, 0.003).unwrap();
        for x in [-5.0, -1.0, 0.0, 0.5, 3.0, 8.0] {
            let t = m.privacy_loss(x);
            assert!((m.inverse_loss(t) - x).abs() < 1e-6, "x={x}");
        }
        assert_eq!(m.inverse_loss(m.loss_infimum() - 1e-9), f64::NEG_INFINITY);
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(matches!(SubsampledGaussian::new(0.0, 0.1), Err(Error::InvalidArgument { name: "sigma", .. })));
        assert!(matches!(SubsampledGaussian::new(f64::NAN, 0.1), Err(Error::InvalidArgument { name: "sigma", .. })));
        assert!(matches!(SubsampledGaussian::new(1.0, 0.0), Err(Error::InvalidArgument { name: "sample_rate", .. })));
        assert!(matches!(SubsampledGaussian::new(1.0, 1.5), Err(Error::InvalidArgument { name: "sample_rate", .. })));
        assert!(SubsampledGaussian::new(1.0, 1.0).is_ok());
        assert!(matches!(SubsampledGaussian::new(1e-300, 0.1), Err(Error::OutOfRange { name: "sigma", .. })));
    }
}

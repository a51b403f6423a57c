//! Rényi DP of the Poisson-subsampled Gaussian: the classic, loose baseline that ewtune prints
//! beside the certified value. Same orders and conversion as dp_accounting 0.6.0's `RdpAccountant`.
//!
//! Integer orders: the binomial expansion of `A_alpha` (Mironov, Talwar, Zhang, arXiv 1908.10530
//! v1, §3.2); fractional orders: its two-sided series (§3.3). Conversion to (eps, delta):
//! Canonne, Kamath, Steinke, arXiv 2004.00010 v4, Proposition 12, with the KL shortcut
//! `delta <= sqrt(1 - exp(-KL))`.

use crate::domain::{check_delta, check_epsilon};
use crate::error::Result;
use crate::event::History;
use crate::normal;
use serde::Serialize;

/// dp_accounting's default orders: 1.1..10.9 by 0.1, 11..63, 128, 256, 512, 1024.
pub fn default_orders() -> Vec<f64> {
    let mut orders: Vec<f64> = (1..100).map(|x| 1.0 + x as f64 / 10.0).collect();
    orders.extend((11..64).map(|x| x as f64));
    orders.extend([128.0, 256.0, 512.0, 1024.0]);
    orders
}

/// An RDP epsilon with the order that achieved it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RdpEpsilon {
    /// The (eps, delta) epsilon implied by the best order.
    pub epsilon: f64,
    /// The optimal Rényi order.
    pub order: f64,
}

fn log_add(a: f64, b: f64) -> f64 {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    (lo - hi).exp().ln_1p() + hi
}

/// `ln |C(n, k)|` for real n (scipy's `gammaln` convention: log of the absolute value).
fn log_comb(n: f64, k: f64) -> f64 {
    libm::lgamma(n + 1.0) - libm::lgamma(k + 1.0) - libm::lgamma(n - k + 1.0)
}

fn log_erfc(x: f64) -> f64 {
    std::f64::consts::LN_2 + normal::log_sf(x * std::f64::consts::SQRT_2)
}

fn log_a_int(q: f64, sigma: f64, alpha: u64) -> f64 {
    let log1mq = (-q).ln_1p();
    (0..=alpha).fold(f64::NEG_INFINITY, |acc, i| {
        let i = i as f64;
        let a = alpha as f64;
        let log_coef = log_comb(a, i) + i * q.ln() + (a - i) * log1mq;
        log_add(acc, log_coef + (i * i - i) / (2.0 * sigma * sigma))
    })
}

fn log_a_frac(q: f64, sigma: f64, alpha: f64) -> f64 {
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let log1mq = (-q).ln_1p();
    let (mut last_s0, mut last_s1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for i in 0..1000 {
        let i = i as f64;
        let log_coef = log_comb(alpha, i);
        let j = alpha - i;
        let log_t0 = log_coef + i * q.ln() + j * log1mq;
        let log_t1 = log_coef + j * q.ln() + i * log1mq;
        let log_e0 = 0.5f64.ln() + log_erfc((i - z0) / (std::f64::consts::SQRT_2 * sigma));
        let log_e1 = 0.5f64.ln() + log_erfc((z0 - j) / (std::f64::consts::SQRT_2 * sigma));
        let log_s0 = log_t0 + (i * i - i) / (2.0 * sigma * sigma) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * sigma * sigma) + log_e1;
        log_a0 = log_add(log_a0, log_s0);
        log_a1 = log_add(log_a1, log_s1);
        let total = log_add(log_a0, log_a1);
        if log_s0 < last_s0 && log_s1 < last_s1 && log_s0.max(log_s1) < total - 30.0 {
            return total;
        }
        last_s0 = log_s0;
        last_s1 = log_s1;
    }
    f64::INFINITY
}

/// RDP of one subsampled-Gaussian step at order `alpha`.
pub fn step_rdp(q: f64, sigma: f64, alpha: f64) -> f64 {
    if q >= 1.0 {
        return alpha / (2.0 * sigma * sigma);
    }
    let log_a = if alpha.fract() == 0.0 { log_a_int(q, sigma, alpha as u64) } else { log_a_frac(q, sigma, alpha) };
    log_a / (alpha - 1.0)
}

/// RDP of a whole history at order `alpha`: RDP adds under composition.
fn history_rdp(history: &History, alpha: f64) -> f64 {
    history.groups().iter().map(|g| g.steps as f64 * step_rdp(g.sample_rate, g.noise_multiplier, alpha)).sum()
}

/// The RDP epsilon of a history at `delta`, over dp_accounting's default orders.
pub fn epsilon(history: &History, delta: f64) -> Result<RdpEpsilon> {
    history.require_nonempty()?;
    check_delta(delta)?;
    let mut best = RdpEpsilon { epsilon: f64::INFINITY, order: f64::NAN };
    for alpha in default_orders() {
        let rdp = history_rdp(history, alpha);
        // Negative RDP (numerical) or delta^2 > 1 - e^{-KL} (the KL shortcut) both give 0.
        let eps = if rdp < 0.0 || delta * delta + (-rdp).exp_m1() > 0.0 {
            0.0
        } else if alpha > 1.01 {
            rdp + (-1.0 / alpha).ln_1p() - (delta * alpha).ln() / (alpha - 1.0)
        } else {
            f64::INFINITY
        };
        if eps < best.epsilon {
            best = RdpEpsilon { epsilon: eps.max(0.0), order: alpha };
        }
    }
    Ok(best)
}

/// The RDP delta of a history at `eps` (dp_accounting's `compute_delta`).
pub fn delta(history: &History, eps: f64) -> Result<f64> {
    history.require_nonempty()?;
    check_epsilon(eps)?;
    let mut best = f64::INFINITY;
    for alpha in default_orders() {
        let rdp = history_rdp(history, alpha);
        let mut log_delta = if rdp <= 0.0 { f64::NEG_INFINITY } else { 0.5 * (-(-rdp).exp()).ln_1p() };
        if alpha > 1.01 {
            log_delta = log_delta.min((alpha - 1.0) * (rdp - eps + (-1.0 / alpha).ln_1p()) - alpha.ln());
        }
        best = best.min(log_delta);
    }
    Ok(best.exp().min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent route: for q = 1 the RDP of the Gaussian is alpha/(2 sigma^2) exactly, and the
    /// subsampled formula at q -> 1 must approach it.
    #[test]
    fn subsampled_approaches_gaussian() {
        for alpha in [2.0, 3.5, 10.0] {
            let full = alpha / 2.0;
            let near = step_rdp(1.0 - 1e-9, 1.0, alpha);
            assert!((near - full).abs() < 1e-6 * full, "alpha={alpha}: {near} vs {full}");
        }
    }

    /// Integer and fractional routes agree where they meet (alpha -> integer).
    #[test]
    fn fractional_series_matches_integer_formula() {
        for alpha in [2.0, 5.0, 17.0] {
            let int = step_rdp(0.01, 0.9, alpha);
            let frac = log_a_frac(0.01, 0.9, alpha + 1e-9) / (alpha + 1e-9 - 1.0);
            assert!(((int - frac) / int).abs() < 1e-6, "alpha={alpha}: {int} vs {frac}");
        }
    }
}

//! The Edgeworth accountant of EW-Tune (Wang et al., arXiv 2206.04236): an analytic *estimate*
//! of epsilon from the cumulants of the summed PLLRs. It states no guarantee; ewtune shows it
//! beside the certified PLD value (docs/accounting.md, "The Edgeworth estimate").
//!
//! REMOVE direction only (dominant for this mechanism); orders 0-3 of the Edgeworth series of the
//! CDF; delta(eps) = SF_Y(eps) - e^eps SF_X(eps); eps(delta) by a bracketed Brent search;
//! heterogeneous histories by summed cumulants; the Derumigny-Girard-Guyonvarch finite-sample
//! interval (homogeneous histories only) reported as infinite where it is vacuous.

use crate::brent::brentq;
use crate::domain::{check_delta, check_epsilon};
use crate::error::{Error, Result};
use crate::event::History;
use crate::normal::{self, LN_SQRT_2PI};
use serde::Serialize;

/// Largest epsilon the inversion searches; beyond it the estimate is reported as infinite.
pub const EPSILON_SEARCH_CAP: f64 = 500.0;

/// Order of the Edgeworth expansion (0 = normal with the exact mean and variance).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Order(u8);

impl Order {
    /// The default order of ewtune's estimates.
    pub const DEFAULT: Order = Order(2);

    /// Validates an order in 0..=3.
    pub fn new(order: u8) -> Result<Self> {
        if order <= 3 {
            Ok(Order(order))
        } else {
            Err(Error::InvalidArgument { name: "order", value: order.to_string(), reason: "the Edgeworth order must be 0, 1, 2 or 3" })
        }
    }

    /// The order as a number.
    pub fn get(self) -> u8 {
        self.0
    }
}

/// Cumulants K1..K6 of a sum of independent PLLRs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SumCumulants(pub [f64; 6]);

impl SumCumulants {
    /// Standardized cumulant `lambda_j = K_j / K_2^{j/2}` (j in 3..=6).
    pub fn lambda(&self, j: usize) -> f64 {
        self.0[j - 1] / self.0[1].powf(j as f64 / 2.0)
    }

    /// `exp(log_scale) * (1 - F(x))` under the order-`order` Edgeworth approximation of F,
    /// without forming `exp(log_scale)` alone.
    pub fn scaled_sf(&self, x: f64, order: Order, log_scale: f64) -> f64 {
        let s = self.0[1].sqrt();
        let z = (x - self.0[0]) / s;
        let main = (log_scale + normal::log_sf(z)).exp();
        if order.0 == 0 {
            return main;
        }
        let weight = (log_scale - 0.5 * z * z - LN_SQRT_2PI).exp();
        if weight == 0.0 {
            // Far in the tail (or an epsilon of 1e300): the correction's polynomial may be
            // infinite there, and 0 * inf must not turn the answer into NaN.
            return main;
        }
        main + weight * self.correction(z, order)
    }

    /// `c_r(z)` of the series (docs/accounting.md, "The Edgeworth estimate"): `F(x) ~ Phi(z) - phi(z) c_r(z)`.
    pub fn correction(&self, z: f64, order: Order) -> f64 {
        let z2 = z * z;
        let he2 = z2 - 1.0;
        let l3 = self.lambda(3);
        let mut c = l3 / 6.0 * he2;
        if order.0 >= 2 {
            let he3 = z * (z2 - 3.0);
            let he5 = z * (z2 * z2 - 10.0 * z2 + 15.0);
            c += self.lambda(4) / 24.0 * he3 + l3 * l3 / 72.0 * he5;
        }
        if order.0 >= 3 {
            let he4 = z2 * z2 - 6.0 * z2 + 3.0;
            let he6 = z2 * z2 * z2 - 15.0 * z2 * z2 + 45.0 * z2 - 15.0;
            let he8 = z2 * z2 * z2 * z2 - 28.0 * z2 * z2 * z2 + 210.0 * z2 * z2 - 420.0 * z2 + 105.0;
            c += self.lambda(5) / 120.0 * he4 + l3 * self.lambda(4) / 144.0 * he6 + l3 * l3 * l3 / 1296.0 * he8;
        }
        c
    }
}

/// The summed cumulants of a history: `(K(sum X), K(sum Y))`; cumulants add over independent steps.
pub fn sum_cumulants(history: &History) -> (SumCumulants, SumCumulants) {
    let (mut kx, mut ky) = ([0.0; 6], [0.0; 6]);
    for g in history.groups() {
        let stats = g.mechanism().pllr_stats();
        let n = g.steps as f64;
        for j in 0..6 {
            kx[j] += n * stats.x.kappa[j];
            ky[j] += n * stats.y.kappa[j];
        }
    }
    (SumCumulants(kx), SumCumulants(ky))
}

/// Edgeworth `delta(eps) = SF_{sum Y}(eps) - e^eps SF_{sum X}(eps)` (REMOVE, eq. 1.1).
pub fn delta_from_cumulants(kx: &SumCumulants, ky: &SumCumulants, eps: f64, order: Order) -> f64 {
    ky.scaled_sf(eps, order, 0.0) - kx.scaled_sf(eps, order, eps)
}

/// `inf{eps >= 0 : delta_fn(eps) <= delta}` by doubling from 1 and Brent; `inf` above the cap.
pub(crate) fn invert_delta(mut delta_fn: impl FnMut(f64) -> f64, delta: f64) -> f64 {
    if delta_fn(0.0) <= delta {
        return 0.0;
    }
    let mut hi = 1.0;
    while delta_fn(hi) > delta {
        hi *= 2.0;
        if hi > EPSILON_SEARCH_CAP {
            return f64::INFINITY;
        }
    }
    brentq(|e| delta_fn(e) - delta, 0.0, hi, 1e-10, 1e-12).unwrap_or(f64::INFINITY)
}

/// The finite-sample interval with the Derumigny-Girard-Guyonvarch bound (order 1, i.i.d. steps;
/// docs/accounting.md, "The finite-sample interval").
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FiniteSampleInterval {
    /// A valid lower bound on epsilon (0 when uninformative).
    pub lower: f64,
    /// A valid upper bound; `inf` where the bound is vacuous (`D_Y >= delta`).
    pub upper: f64,
    /// Kolmogorov-distance bound of the order-1 expansion of sum X.
    pub d_x: f64,
    /// Kolmogorov-distance bound of the order-1 expansion of sum Y.
    pub d_y: f64,
}

/// An Edgeworth estimate with its diagnostics (docs/accounting.md, "Why it is only an estimate").
/// Always an estimate, never a guarantee.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EdgeworthEstimate {
    /// Expansion order.
    pub order: u8,
    /// Point estimate of epsilon (`inf` above the search cap).
    pub estimate: f64,
    /// Standardized third cumulant of sum Y (the Edgeworth small parameter).
    pub lambda3_sum: f64,
    /// Standardized fourth cumulant of sum Y.
    pub lambda4_sum: f64,
    /// True when the series correction at the answer exceeds half the normal tail (a red flag).
    pub tail_correction_large: bool,
    /// The finite-sample interval (homogeneous histories only; `None` for heterogeneous ones).
    pub finite_sample: Option<FiniteSampleInterval>,
}

/// Edgeworth estimate of epsilon at `delta` for a history.
pub fn epsilon(history: &History, delta: f64, order: Order) -> Result<EdgeworthEstimate> {
    history.require_nonempty()?;
    check_delta(delta)?;
    let (kx, ky) = sum_cumulants(history);
    let estimate = invert_delta(|e| delta_from_cumulants(&kx, &ky, e, order), delta);
    let tail_correction_large = estimate.is_finite() && order.0 > 0 && {
        let z = (estimate - ky.0[0]) / ky.0[1].sqrt();
        let normal_tail_over_pdf = (normal::log_sf(z) + 0.5 * z * z + LN_SQRT_2PI).exp();
        ky.correction(z, order).abs() > 0.5 * normal_tail_over_pdf
    };
    let finite_sample = match history.groups() {
        [g] => Some(finite_sample_interval(&g.mechanism().pllr_stats(), g.steps, &kx, &ky, delta)),
        _ => None,
    };
    Ok(EdgeworthEstimate { order: order.0, estimate, lambda3_sum: ky.lambda(3), lambda4_sum: ky.lambda(4), tail_correction_large, finite_sample })
}

/// Edgeworth estimate of delta at `eps` for a history.
pub fn delta(history: &History, eps: f64, order: Order) -> Result<f64> {
    history.require_nonempty()?;
    check_epsilon(eps)?;
    let (kx, ky) = sum_cumulants(history);
    Ok(delta_from_cumulants(&kx, &ky, eps, order).clamp(0.0, 1.0))
}

fn finite_sample_interval(
    stats: &crate::mechanism::PllrStats,
    steps: u64,
    kx: &SumCumulants,
    ky: &SumCumulants,
    delta: f64,
) -> FiniteSampleInterval {
    let order = Order(1);
    let d_x = derumigny_bound_iid(steps as f64, stats.x.standardized(), 0.1);
    let d_y = derumigny_bound_iid(steps as f64, stats.y.standardized(), 0.1);
    let d_lo = |e: f64| (ky.scaled_sf(e, order, 0.0) - d_y - kx.scaled_sf(e, order, e) - e.exp() * d_x).max(0.0);
    let d_up = |e: f64| (ky.scaled_sf(e, order, 0.0) + d_y - (kx.scaled_sf(e, order, e) - e.exp() * d_x).max(0.0)).min(1.0);
    let lower = invert_delta(d_lo, delta);
    let upper = if d_y >= delta { f64::INFINITY } else { invert_delta(d_up, delta) };
    FiniteSampleInterval { lower: if lower.is_finite() { lower } else { 0.0 }, upper, d_x, d_y }
}

/// Upper incomplete gamma function `Gamma(a, x)` (unnormalised).
fn upper_gamma(a: f64, x: f64) -> f64 {
    statrs::function::gamma::gamma(a) * statrs::function::gamma::gamma_ur(a, x)
}

/// Derumigny, Girard, Guyonvarch, arXiv 2101.05780 (v3), Theorem A.3 / eq. (17): a bound on
/// `sup_x |P(S_n <= x) - Phi(x) - lambda3/(6 sqrt n)(1 - x^2) phi(x)|` for n i.i.d. summands,
/// as in their `BoundEdgeworth::Bound_EE1` (docs/accounting.md, "The finite-sample interval"). `e` in (0, 1/3).
pub fn derumigny_bound_iid(n: f64, m: crate::mechanism::Standardized, e: f64) -> f64 {
    use std::f64::consts::PI;
    let (k4, k3, k3t, lam3) = (m.k4, m.k3, m.k3_tilde, m.lambda3);
    let c_psi = 1.0253;
    let r = 1.0 - 3.0 * e;
    let main = 0.1995 * k3t / n.sqrt() + (0.031 * k3t * k3t + 0.327 * k4 * (1.0 / 12.0 + 1.0 / (4.0 * r * r))) / n;
    let e3 = (e * e / 6.0 + e * e / ((2.0 * r) * (2.0 * r))).exp();
    let skew = (0.054 * lam3.abs() * k3t + 0.037 * e3 * lam3 * lam3) / n;
    let p2n = 48.0 * e * (k4 / n).sqrt()
        + 4.0 * e * e * k4 / n
        + 96.0 * (2.0 * e).sqrt() * lam3.abs() / (k4.powf(0.25) * n.powf(0.25))
        + 32.0 * e * lam3 * lam3 / (k4 * n).sqrt()
        + 16.0 * 2f64.sqrt() * k4.powf(0.25) * lam3.abs() * e.powf(1.5) / n.powf(0.75);
    let e2n = (e * e * (1.0 / 6.0 + 1.0 / (2.0 * r * r) + 2.0 * p2n / (576.0 * r * r))).exp();
    let den = 2.0 * r * r * PI;
    let paren = k4 / 12.0 + 1.0 / (4.0 * r * r) + p2n / (576.0 * r * r);
    let g = statrs::function::gamma::gamma;
    let a1 = c_psi / den * lam3.abs() / (6.0 * n.powf(1.5)) * 2f64.sqrt() * g(1.5);
    let a2 = c_psi / den * k4 / (24.0 * n * n) * 8.0 * g(4.0);
    let a3 = c_psi / den * lam3 * lam3 / (36.0 * n * n) * 8.0 * g(4.0);
    let a4 = c_psi / den * k4 * lam3.abs() / (72.0 * n.powf(2.5)) * 2f64.powf(3.5) * g(4.5);
    let a5 = c_psi / den * k4 * k4 / (576.0 * n.powi(3)) * 16.0 * g(5.0);
    let a6 = c_psi / PI * e2n / (8.0 * n * n) * paren * 16.0 * g(5.0);
    let a7 = c_psi / PI * e2n * lam3.abs() / (12.0 * n.powf(1.5)) * paren * 2f64.powf(3.5) * g(4.5);
    let m_low = ((2.0 * e).sqrt() * (n / k4).powf(0.25)).min(2.0 * n.sqrt() / k3t);
    let r1n = (14.1961 + 67.0415) * k3t.powi(4) / (16.0 * PI.powi(4) * n * n)
        + 4.3394 * lam3.abs() * k3t.powi(3) / (8.0 * PI.powi(3) * n * n)
        + (a1 + a2 + a3 + a4 + a5 + a6 + a7)
        + 1.306 * (e2n - e3) * lam3 * lam3 / (36.0 * n)
        + lam3.abs() * (upper_gamma(1.5, m_low) - upper_gamma(1.5, 2.0 * n.sqrt() / k3t)) / n.sqrt()
        + c_psi * 2f64.powf(2.5) * k3 / (3.0 * PI * n.sqrt())
            * (upper_gamma(1.5, m_low * m_low / 8.0) - upper_gamma(1.5, 4.0 * n / (8.0 * k3t * k3t)));
    main + skew + r1n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    /// For the plain Gaussian mechanism every order reproduces the closed form (docs/accounting.md, "One DP-SGD step").
    #[test]
    fn gaussian_closed_form_at_every_order() {
        for (sigma, n, eps, want) in [(1.0, 1, 1.0, 1.269367375066e-01), (2.0, 10, 1.0, 3.525180588949e-01),
                                      (1.0, 4, 2.0, 3.318979987768e-01), (0.8, 1, 3.0, 1.297929429725e-02)] {
            let h = History::homogeneous(sigma, 1.0, n).unwrap();
            for order in 0..=3 {
                let d = delta(&h, eps, Order::new(order).unwrap()).unwrap();
                assert!(rel(d, want) < 1e-8, "sigma={sigma} n={n} order={order}: {d} vs {want}");
            }
        }
    }

    /// The EW-Tune SST-2 setting, order 1, matches the authors' code (7.992898902498).
    #[test]
    fn ew_tune_sst2_order1() {
        let h = History::homogeneous(0.7865, 2000.0 / 67349.0, 660).unwrap();
        let est = epsilon(&h, 1e-5, Order::new(1).unwrap()).unwrap();
        assert!((est.estimate - 7.992898902498).abs() < 1e-6, "{}", est.estimate);
        // Orders 0/1/2/3 -> 7.43/7.99/8.37/8.63 vs truth 8.29.
        for (order, want) in [(0, 7.43), (2, 8.37), (3, 8.63)] {
            let e = epsilon(&h, 1e-5, Order::new(order).unwrap()).unwrap().estimate;
            assert!((e - want).abs() < 0.006, "order {order}: {e}");
        }
    }

    /// Calibrating the order-1 estimate to eps = 8 reproduces the sigmas EW-Tune chose.
    #[test]
    fn ew_tune_sigmas_reproduced() {
        for (n_data, delta, sigma_ewtune) in [(67349u64, 1e-5, 0.7865), (104743, 1e-5, 0.711), (363849, 1e-5, 0.5635),
                                              (392702, 1e-5, 0.557), (104743, 1e-6, 0.7395), (363849, 1e-6, 0.58), (392702, 1e-6, 0.573)] {
            let q = 2000.0 / n_data as f64;
            let steps = 20 * (n_data / 2000);
            let sigma = brentq(|s| {
                epsilon(&History::homogeneous(s, q, steps).unwrap(), delta, Order::new(1).unwrap()).unwrap().estimate - 8.0
            }, 0.3, 3.0, 1e-6, 1e-12).unwrap();
            // EW-Tune walks a descending grid of step 0.0005 and keeps the first sigma with eps < 8.
            assert!(sigma <= sigma_ewtune && sigma_ewtune - sigma < 0.0005 + 1e-6, "N={n_data}: {sigma} vs {sigma_ewtune}");
        }
    }

    /// The finite-sample interval with the Derumigny-Girard-Guyonvarch bound, m = 10^6 and 2 * 10^5.
    #[test]
    fn finite_sample_interval_matches_the_reference_values() {
        for (m, lo, up, dx, dy) in [(1_000_000u64, 0.3202, 0.4983, 0.00833, 0.00870), (200_000, 0.1550, 0.9381, 0.0254, 0.0269)] {
            let q = 0.08 * (m as f64).ln().sqrt() / (m as f64).sqrt();
            let est = epsilon(&History::homogeneous(0.8, q, m).unwrap(), 0.1, Order::new(1).unwrap()).unwrap();
            let fs = est.finite_sample.unwrap();
            assert!((fs.lower - lo).abs() < 6e-5 && (fs.upper - up).abs() < 6e-5, "m={m}: {fs:?}");
            assert!(rel(fs.d_x, dx) < 6e-3 && rel(fs.d_y, dy) < 6e-3, "m={m}: {fs:?}");
        }
        // At DP-SGD deltas the bound is vacuous: reported as infinite, never as a number.
        let est = epsilon(&History::homogeneous(0.7865, 2000.0 / 67349.0, 660).unwrap(), 1e-5, Order::DEFAULT).unwrap();
        assert_eq!(est.finite_sample.unwrap().upper, f64::INFINITY);
    }

    #[test]
    fn bad_input_is_named() {
        let h = History::homogeneous(1.0, 0.01, 10).unwrap();
        assert!(matches!(epsilon(&h, 0.0, Order::DEFAULT), Err(Error::InvalidArgument { name: "delta", .. })));
        assert!(matches!(epsilon(&h, f64::NAN, Order::DEFAULT), Err(Error::InvalidArgument { name: "delta", .. })));
        assert!(matches!(Order::new(4), Err(Error::InvalidArgument { name: "order", .. })));
        assert!(matches!(epsilon(&History::new(), 1e-5, Order::DEFAULT), Err(Error::InvalidArgument { name: "history", .. })));
    }
}

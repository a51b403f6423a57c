//! Empirical ε lower bounds from a membership audit (docs/audit.md, The one-run lower bound):
//! β = 0.05 with Bonferroni over every guess count tried, the classic Clopper–Pearson bound of
//! Jagielski et al. 2020 / Nasr et al. 2021 (valid for independent trials, i.e. multi-run audits)
//! and the one-run bound of Steinke, Nasr & Jagielski (NeurIPS 2023, arXiv 2305.08846), the headline for
//! canary audits, with its ceilings, mirroring the Python reference that produced the test vectors.
//!
//! What this module owns: the binomial / beta arithmetic, the bisection for ε, the ranking of
//! canaries into guesses and the multiple-testing correction. What it does not own: drawing S
//! (the canary manifest), scoring canaries (`audit::scores`), choosing δ (the job's δ), the
//! "heuristic" label a single-run Clopper–Pearson number must carry, and the violation alarm
//! (ε_lb > ε_claimed, docs/audit.md, Violations and false alarms), which belong to the report.

use statrs::function::beta::{checked_beta_reg, inv_beta_reg};
use statrs::function::factorial::ln_binomial;

use super::metrics::{self, MetricError};

/// The significance of the audit: β = 0.05, i.e. 95% confidence.
pub const DEFAULT_BETA: f64 = 0.05;

/// The default k+ grid for m = 1000 (with k− = 0 and Bonferroni β/8; docs/audit.md, The one-run lower bound).
pub const DEFAULT_K_PLUS: [usize; 8] = [10, 20, 50, 100, 200, 300, 400, 500];

/// Bisection tolerance on ε (the reference's `tol`; the tests ask for 1e-6).
const EPS_TOL: f64 = 1e-10;

/// Beyond this ε the one-run bisection stops and reports +∞ (reference behaviour).
const EPS_MAX: f64 = 1e4;

/// A rejected bound argument; each variant names the argument and carries its value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BoundError {
    /// A count exceeds its total (`k ≤ n` for Clopper–Pearson).
    #[error("count {k} exceeds total {n}")]
    Count {
        /// The count.
        k: u64,
        /// The total.
        n: u64,
    },
    /// One-run counts must satisfy v ≤ r ≤ m.
    #[error("one-run counts need v <= r <= m, got m = {m}, r = {r}, v = {v}")]
    OneRunCounts {
        /// Canaries.
        m: u64,
        /// Guesses.
        r: u64,
        /// Correct guesses.
        v: u64,
    },
    /// A confidence level parameter (α or β) must lie in (0, 1).
    #[error("{what} must be in (0, 1), got {value}")]
    Level {
        /// `"alpha"` or `"beta"`.
        what: &'static str,
        /// The rejected value.
        value: f64,
    },
    /// δ must lie in [0, 1].
    #[error("delta must be in [0, 1], got {delta}")]
    Delta {
        /// The rejected value.
        delta: f64,
    },
    /// ε must be ≥ 0 (and not NaN).
    #[error("epsilon must be >= 0, got {eps}")]
    Epsilon {
        /// The rejected value.
        eps: f64,
    },
    /// Canary scores and inclusion bits differ in length.
    #[error("{scores} canary scores but {included} inclusion bits")]
    LengthMismatch {
        /// Number of scores.
        scores: usize,
        /// Number of inclusion bits.
        included: usize,
    },
    /// A canary score is NaN, so it cannot be ranked; rescore or fix the canary.
    #[error("canary {index} has a NaN score")]
    NanScore {
        /// The canary's index.
        index: usize,
    },
    /// No (k+, k−) pair of the grid fits m canaries.
    #[error("no (k+, k-) pair of the grid has k+ + k- <= m = {m}")]
    EmptyGrid {
        /// Canaries.
        m: usize,
    },
    /// The ROC for the best-threshold classic bound could not be built.
    #[error(transparent)]
    Metric(#[from] MetricError),
}

fn check_level(what: &'static str, value: f64) -> Result<(), BoundError> {
    if value > 0.0 && value < 1.0 {
        Ok(())
    } else {
        Err(BoundError::Level { what, value })
    }
}

fn check_delta(delta: f64) -> Result<(), BoundError> {
    if (0.0..=1.0).contains(&delta) {
        Ok(())
    } else {
        Err(BoundError::Delta { delta })
    }
}

fn check_count(k: u64, n: u64) -> Result<(), BoundError> {
    if k <= n {
        Ok(())
    } else {
        Err(BoundError::Count { k, n })
    }
}

// ---------------------------------------------------------------------------------------------
// Classic bound (docs/audit.md, The one-run lower bound: `eps_classic_heuristic`)
// ---------------------------------------------------------------------------------------------

/// One-sided Clopper–Pearson upper bound on a binomial proportion from k successes in n trials:
/// `1` if k = n, else `BetaInv(1 − α; k + 1, n − k)` (Clopper–Pearson).
pub fn cp_upper(k: u64, n: u64, alpha: f64) -> Result<f64, BoundError> {
    check_count(k, n)?;
    check_level("alpha", alpha)?;
    if k == n {
        return Ok(1.0);
    }
    Ok(inv_beta_reg(k as f64 + 1.0, (n - k) as f64, 1.0 - alpha))
}

/// One-sided Clopper–Pearson lower bound: `0` if k = 0, else `BetaInv(α; k, n − k + 1)`.
pub fn cp_lower(k: u64, n: u64, alpha: f64) -> Result<f64, BoundError> {
    check_count(k, n)?;
    check_level("alpha", alpha)?;
    if k == 0 {
        return Ok(0.0);
    }
    Ok(inv_beta_reg(k as f64, (n - k + 1) as f64, alpha))
}

/// Confusion counts at one threshold, members being the positives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confusion {
    /// Members guessed member.
    pub tp: u64,
    /// Non-members guessed member.
    pub fp: u64,
    /// Members guessed non-member.
    pub fn_: u64,
    /// Non-members guessed non-member.
    pub tn: u64,
}

/// The classic bound with its parts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassicBound {
    /// `max(0, ε_fwd, ε_rev)`.
    pub eps_lb: f64,
    /// `ln(1 − δ − FNR_ub) − ln(FPR_ub)`; `None` when the log argument is ≤ 0.
    pub eps_forward: Option<f64>,
    /// `ln(1 − δ − FPR_ub) − ln(FNR_ub)`; `None` when the log argument is ≤ 0.
    pub eps_reverse: Option<f64>,
    /// `CP_upper(FP, N, α/2)`.
    pub fpr_ub: f64,
    /// `CP_upper(FN, P, α/2)`.
    pub fnr_ub: f64,
}

/// The classic (ε, δ) lower bound at confidence 1 − α from the counts of one threshold
/// (Jagielski et al. 2020; Nasr et al. 2021): (ε, δ)-DP implies FPR + e^ε·FNR ≥ 1 − δ and FNR + e^ε·FPR ≥ 1 − δ (the
/// hypothesis-testing view of Kairouz, Oh & Viswanath, ICML 2015); with one-sided CP bounds at
/// α/2 each (union bound), ε_fwd = ln(1 − δ − FNR_ub) − ln FPR_ub (Jagielski, Ullman & Oprea,
/// NeurIPS 2020) and ε_rev = ln(1 − δ − FPR_ub) − ln FNR_ub (the reverse test of Nasr et al.,
/// IEEE S&P 2021, arXiv 2101.04535). Valid for independent trials (one decision per training
/// run); in a one-run audit it is a heuristic only (docs/audit.md, The one-run lower bound).
pub fn eps_classic(counts: Confusion, delta: f64, alpha: f64) -> Result<ClassicBound, BoundError> {
    check_delta(delta)?;
    let p = counts.tp + counts.fn_;
    let n = counts.fp + counts.tn;
    let fpr_ub = cp_upper(counts.fp, n, alpha / 2.0)?;
    let fnr_ub = cp_upper(counts.fn_, p, alpha / 2.0)?;
    // Drop a term whose log argument is ≤ 0. Both upper bounds are > 0 (CP_upper is 1
    // for k = n, including an empty class), so the subtracted logs are finite.
    let term = |num: f64, den: f64| (num > 0.0).then(|| num.ln() - den.ln());
    let eps_forward = term(1.0 - delta - fnr_ub, fpr_ub);
    let eps_reverse = term(1.0 - delta - fpr_ub, fnr_ub);
    let eps_lb = [eps_forward, eps_reverse].into_iter().flatten().fold(0.0, f64::max);
    Ok(ClassicBound { eps_lb, eps_forward, eps_reverse, fpr_ub, fnr_ub })
}

/// The best classic bound over every ROC threshold (reference `eps_classic_best`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassicBest {
    /// The largest ε_lb over the thresholds (0 when none beats 0).
    pub eps_lb: f64,
    /// The ROC point that gave it ((0, 0) when none did).
    pub point: metrics::RocPoint,
    /// Thresholds tried (ROC points, including (0, 0)).
    pub thresholds: usize,
    /// The α each threshold was bounded at.
    pub alpha_used: f64,
    /// NaN scores dropped.
    pub dropped_nan: usize,
}

/// The classic bound at the best threshold, with α split over all |thresholds| (Bonferroni,
/// jax_privacy's default; there is no uncorrected variant, since the best of
/// many thresholds at the full α is optimistic). For a threshold fixed in advance use
/// [`eps_classic`] on its counts. For multi-run audits: `scores[i]` is the score of run i's
/// target example and `members[i]` whether it was trained on.
pub fn eps_classic_best(scores: &[f64], members: &[bool], delta: f64, alpha: f64) -> Result<ClassicBest, BoundError> {
    check_level("alpha", alpha)?;
    let roc = metrics::roc(scores, members)?;
    let alpha_used = alpha / roc.points.len() as f64;
    let (p, n) = (roc.n_pos as u64, roc.n_neg as u64);
    let mut best = (0.0, metrics::RocPoint { fp: 0, tp: 0 });
    for &pt in &roc.points {
        let (tp, fp) = (pt.tp as u64, pt.fp as u64);
        let e = eps_classic(Confusion { tp, fp, fn_: p - tp, tn: n - fp }, delta, alpha_used)?.eps_lb;
        if e > best.0 {
            best = (e, pt);
        }
    }
    Ok(ClassicBest {
        eps_lb: best.0,
        point: best.1,
        thresholds: roc.points.len(),
        alpha_used,
        dropped_nan: roc.dropped_nan,
    })
}

// ---------------------------------------------------------------------------------------------
// One-run bound (Steinke, Nasr & Jagielski, arXiv 2305.08846)
// ---------------------------------------------------------------------------------------------

/// `ln(1 + e^x)` without overflow.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// `P[Binomial(r, q) = j]` with `q = logistic(eps)`, through lgamma, with `ln q = −softplus(−ε)`
/// and `ln(1 − q) = −softplus(ε)` so that 1 − q does not underflow for large ε.
fn binom_pmf(j: u64, r: u64, eps: f64) -> f64 {
    (ln_binomial(r, j) - j as f64 * softplus(-eps) - (r - j) as f64 * softplus(eps)).exp()
}

/// `P[Binomial(r, q) ≥ v]` = `I_q(v, r − v + 1)` (regularized incomplete beta), 1 for v = 0 and
/// 0 for v > r (the reference's `binom_sf_ge`).
pub fn binom_sf_ge(v: u64, r: u64, q: f64) -> f64 {
    if v == 0 {
        return 1.0;
    }
    if v > r {
        return 0.0;
    }
    // v ≥ 1 and r − v + 1 ≥ 1 here; a q outside [0, 1] gives NaN rather than a panic.
    checked_beta_reg(v as f64, (r - v + 1) as f64, q).unwrap_or(f64::NAN)
}

/// The one-run p-value bound (Steinke, Nasr & Jagielski, NeurIPS 2023, arXiv 2305.08846, main
/// theorem in the form of the authors' appendix code; docs/audit.md, The one-run lower bound): if training is (ε, δ)-DP per canary,
/// `P[#correct ≥ v] ≤ f(v) + 2mδ · max_{i=1..v} (f(v−i) − f(v)) / i`, with
/// `f(u) = P[Bin(r, logistic(ε)) ≥ u]`; the max is the paper code's running sum of
/// `pmf(v−1), pmf(v−2), …`. Capped at 1.
pub fn one_run_pvalue(m: u64, r: u64, v: u64, eps: f64, delta: f64) -> Result<f64, BoundError> {
    if !(v <= r && r <= m) {
        return Err(BoundError::OneRunCounts { m, r, v });
    }
    if eps.is_nan() || eps < 0.0 {
        return Err(BoundError::Epsilon { eps });
    }
    check_delta(delta)?;
    Ok(pvalue(m, r, v, eps, delta))
}

fn pvalue(m: u64, r: u64, v: u64, eps: f64, delta: f64) -> f64 {
    let q = 1.0 / (1.0 + (-eps).exp());
    let fv = binom_sf_ge(v, r, q);
    if delta == 0.0 || v == 0 {
        return fv.min(1.0);
    }
    let (mut acc, mut alpha) = (0.0, 0.0_f64);
    for i in 1..=v {
        acc += binom_pmf(v - i, r, eps);
        alpha = alpha.max(acc / i as f64);
    }
    (fv + alpha * delta * 2.0 * m as f64).min(1.0)
}

/// The one-run lower bound `sup{ε ≥ 0 : p(ε) < β}`, or 0 if `p(0) ≥ β`, by doubling
/// then bisection to 1e-10 (p is non-decreasing in ε; the reference's `eps_lb`). +∞ if p stays below β
/// past ε = 1e4.
pub fn one_run_eps(m: u64, r: u64, v: u64, delta: f64, beta: f64) -> Result<f64, BoundError> {
    check_level("beta", beta)?;
    if one_run_pvalue(m, r, v, 0.0, delta)? >= beta {
        return Ok(0.0);
    }
    let (mut lo, mut hi) = (0.0, 1.0);
    while pvalue(m, r, v, hi, delta) < beta {
        lo = hi;
        hi *= 2.0;
        if hi > EPS_MAX {
            return Ok(f64::INFINITY);
        }
    }
    while hi - lo > EPS_TOL {
        let mid = 0.5 * (lo + hi);
        if pvalue(m, r, v, mid, delta) < beta {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// One (k+, k−) row of a one-run audit.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct OneRunRow {
    /// Canaries guessed "included": the k+ highest scores.
    pub k_plus: usize,
    /// Canaries guessed "excluded": the k− lowest scores.
    pub k_minus: usize,
    /// r = k+ + k−, the guesses made.
    pub r: usize,
    /// Correct guesses.
    pub v: usize,
    /// [`one_run_eps`] at the corrected β.
    pub eps_lb: f64,
}

/// A one-run audit: the best row, every row, and the parameters it was run at (the report's
/// `canary_audit`, docs/audit.md, The report).
#[derive(Debug, Clone, PartialEq)]
pub struct OneRunAudit {
    /// The first row with the largest ε_lb.
    pub best: OneRunRow,
    /// Every (k+, k−) pair tried, k+ outer, k− inner, as given.
    pub grid: Vec<OneRunRow>,
    /// m, the canaries.
    pub m: usize,
    /// n_included, canaries with S = +1.
    pub n_included: usize,
    /// δ.
    pub delta: f64,
    /// β asked for.
    pub beta: f64,
    /// β each row was bounded at: β / grid size (Bonferroni).
    pub beta_used: f64,
}

/// The one-run audit (docs/audit.md, The one-run lower bound): rank canaries by (score descending, index ascending), a
/// tie-break independent of S; for each (k+, k−) with k+ + k− ≤ m, guess +1 for the top k+
/// and −1 for the bottom k−, count the correct guesses v and bound ε at β / |grid| (Bonferroni,
/// always applied, unlike ML Privacy Meter: a single (k+, k−) pair fixed in advance
/// is the uncorrected case). `included[i]` is S_i = +1. NaN scores are refused
/// ([`BoundError::NanScore`]). The correction covers this grid only: when several scores are
/// tried, divide `beta` by their number as well (docs/audit.md, Violations and false alarms).
pub fn one_run_audit(
    scores: &[f64],
    included: &[bool],
    delta: f64,
    beta: f64,
    k_plus: &[usize],
    k_minus: &[usize],
) -> Result<OneRunAudit, BoundError> {
    if scores.len() != included.len() {
        return Err(BoundError::LengthMismatch { scores: scores.len(), included: included.len() });
    }
    if let Some(index) = scores.iter().position(|s| s.is_nan()) {
        return Err(BoundError::NanScore { index });
    }
    check_level("beta", beta)?;
    check_delta(delta)?;
    let m = scores.len();
    let pairs: Vec<(usize, usize)> = k_plus
        .iter()
        .flat_map(|&kp| k_minus.iter().map(move |&km| (kp, km)))
        .filter(|&(kp, km)| kp + km <= m)
        .collect();
    if pairs.is_empty() {
        return Err(BoundError::EmptyGrid { m });
    }
    let beta_used = beta / pairs.len() as f64;
    let mut grid = Vec::with_capacity(pairs.len());
    for (&(k_plus, k_minus), v) in pairs.iter().zip(correct_guesses(scores, included, &pairs)) {
        let r = k_plus + k_minus;
        let eps_lb = one_run_eps(m as u64, r as u64, v as u64, delta, beta_used)?;
        grid.push(OneRunRow { k_plus, k_minus, r, v, eps_lb });
    }
    let mut best = grid[0];
    for row in &grid[1..] {
        if row.eps_lb > best.eps_lb {
            best = *row;
        }
    }
    Ok(OneRunAudit { best, grid, m, n_included: included.iter().filter(|&&s| s).count(), delta, beta, beta_used })
}

/// The right guesses of each `(k+, k−)` pair (`k+ + k− <= m`): canaries ranked by (score
/// descending, index ascending), a tie-break independent of S; the top k+ guessed +1, the bottom
/// k− guessed −1; a guess is right when it matches `included`. One sort, then prefix counts.
pub fn correct_guesses(scores: &[f64], included: &[bool], pairs: &[(usize, usize)]) -> Vec<usize> {
    let m = scores.len();
    let mut order: Vec<usize> = (0..m).collect();
    // Stable sort, descending score: equal scores keep ascending index.
    order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]));
    // in_top[k] = included among the first k; out_bottom[k] = excluded among the last k.
    let mut in_top = vec![0usize; m + 1];
    let mut out_bottom = vec![0usize; m + 1];
    for k in 0..m {
        in_top[k + 1] = in_top[k] + usize::from(included[order[k]]);
        out_bottom[k + 1] = out_bottom[k] + usize::from(!included[order[m - 1 - k]]);
    }
    pairs.iter().map(|&(k_plus, k_minus)| in_top[k_plus] + out_bottom[k_minus]).collect()
}

/// The largest ε a one-run audit with m canaries can certify, and the r that gives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ceiling {
    /// The best ε_lb with every guess correct.
    pub eps: f64,
    /// The number of guesses r at the best.
    pub r: usize,
}

/// Ceilings (docs/audit.md, The one-run lower bound; reference `ceilings`): the best [`one_run_eps`]`(m, r, r, δ, β)` over
/// r ∈ {⌊m/10⌋, ⌊m/4⌋, ⌊m/2⌋, m}, the smallest r winning ties. Report it beside ε_lb
/// (`eps_ceiling_for_m`, docs/audit.md, The report).
pub fn one_run_ceiling(m: usize, delta: f64, beta: f64) -> Result<Ceiling, BoundError> {
    let mut rs = vec![m / 10, m / 4, m / 2, m];
    rs.sort_unstable();
    rs.dedup();
    let mut best: Option<Ceiling> = None;
    for r in rs {
        let eps = one_run_eps(m as u64, r as u64, r as u64, delta, beta)?;
        if best.is_none_or(|b| eps > b.eps) {
            best = Some(Ceiling { eps, r });
        }
    }
    Ok(best.unwrap_or(Ceiling { eps: 0.0, r: 0 }))
}

#[cfg(test)]
mod tests {
    //! Randomised checks use ChaCha20Rng with fixed, public test seeds: reproducible.

    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    use super::super::testutil::{f, u, vectors};

    /// `P[Bin(r, q) ≥ v]` by summing the pmf: an independent route for `binom_sf_ge`.
    fn sf_by_sum(v: u64, r: u64, eps: f64) -> f64 {
        (v..=r).map(|j| binom_pmf(j, r, eps)).sum()
    }

    #[test]
    fn cp_vectors() {
        let v = vectors();
        let cp = &v["cp"];
        // Tolerance: CP bounds ≤ 1e-9 abs.
        assert!((cp_upper(0, 1000, 0.025).unwrap() - f(&cp["cp_upper(0,1000,0.025)"])).abs() <= 1e-9);
        assert!((cp_upper(10, 1000, 0.025).unwrap() - f(&cp["cp_upper(10,1000,0.025)"])).abs() <= 1e-9);
        assert!((cp_lower(990, 1000, 0.025).unwrap() - f(&cp["cp_lower(990,1000,0.025)"])).abs() <= 1e-9);
        // Closed form at k = 0: 1 − (α)^(1/n).
        assert!((cp_upper(0, 1000, 0.025).unwrap() - (1.0 - 0.025f64.powf(1e-3))).abs() < 1e-12);
        assert_eq!(cp_upper(7, 7, 0.05).unwrap(), 1.0);
        assert_eq!(cp_lower(0, 7, 0.05).unwrap(), 0.0);
        assert_eq!(cp_upper(8, 7, 0.05), Err(BoundError::Count { k: 8, n: 7 }));
        assert!(matches!(cp_upper(1, 7, 0.0), Err(BoundError::Level { what: "alpha", .. })));

        // Tolerance: ε_lb ≤ 1e-6 abs.
        let cases = [
            ("eps(tp=500,fp=0,fn=500,tn=1000,d=0,a=0.05)", Confusion { tp: 500, fp: 0, fn_: 500, tn: 1000 }, 0.0),
            ("eps(tp=900,fp=50,fn=100,tn=950,d=1e-5,a=0.05)", Confusion { tp: 900, fp: 50, fn_: 100, tn: 950 }, 1e-5),
            ("eps(tp=1000,fp=0,fn=0,tn=1000,d=1e-5,a=0.05)", Confusion { tp: 1000, fp: 0, fn_: 0, tn: 1000 }, 1e-5),
            ("eps(null tp=500,fp=500,fn=500,tn=500)", Confusion { tp: 500, fp: 500, fn_: 500, tn: 500 }, 1e-5),
        ];
        for (key, counts, delta) in cases {
            let got = eps_classic(counts, delta, 0.05).unwrap().eps_lb;
            assert!((got - f(&cp[key])).abs() <= 1e-6, "{key}: {got}");
        }
        // Classic-bound values of the Python reference.
        let perfect = eps_classic(Confusion { tp: 1000, fp: 0, fn_: 0, tn: 1000 }, 1e-5, 0.05).unwrap();
        assert!((perfect.eps_lb - 5.600577).abs() < 1e-6);
        assert!((perfect.fpr_ub - 0.0036820839).abs() < 1e-10);
    }

    #[test]
    fn cp_matches_the_beta_cdf() {
        // BetaInv inverted back through I_x: an independent route (statrs AS 109 vs the CF).
        for (k, n) in [(1u64, 10u64), (3, 50), (10, 1000), (500, 1000), (999, 1000), (40, 20_000)] {
            for alpha in [0.025, 0.05 / 8.0, 1e-4] {
                let hi = cp_upper(k, n, alpha).unwrap();
                let lo = cp_lower(k, n, alpha).unwrap();
                let cdf_hi = checked_beta_reg(k as f64 + 1.0, (n - k) as f64, hi).unwrap();
                let cdf_lo = checked_beta_reg(k as f64, (n - k + 1) as f64, lo).unwrap();
                assert!((cdf_hi - (1.0 - alpha)).abs() < 1e-12, "upper {k}/{n} {alpha}");
                assert!((cdf_lo - alpha).abs() < 1e-12 * alpha.max(1e-3) * 1e3, "lower {k}/{n} {alpha}");
                let p = k as f64 / n as f64;
                assert!(lo < p && p < hi);
            }
        }
    }

    #[test]
    fn one_run_vectors() {
        let v = vectors();
        let cases = v["one_run"].as_array().unwrap();
        assert_eq!(cases.len(), 10);
        for c in cases {
            let (m, r, vv) = (u(&c["m"]), u(&c["r"]), u(&c["v"]));
            let (delta, beta) = (f(&c["delta"]), f(&c["beta"]));
            // Tolerance: one-run p-values ≤ 1e-9 rel, ε_lb ≤ 1e-6 abs.
            let p = one_run_pvalue(m, r, vv, 1.0, delta).unwrap();
            let want_p = f(&c["p_at_eps1"]);
            assert!(((p - want_p) / want_p).abs() <= 1e-9, "p {m} {r} {vv} {delta}: {p} vs {want_p}");
            let eps = one_run_eps(m, r, vv, delta, beta).unwrap();
            let want = f(&c["eps_lb"]);
            assert!((eps - want).abs() <= 1e-6, "eps {m} {r} {vv} {delta}: {eps} vs {want}");
        }
    }

    #[test]
    fn binom_sf_matches_the_pmf_sum() {
        for (r, eps) in [(10u64, 0.0f64), (100, 1.0), (1000, 2.5), (5000, 0.3), (10_000, 1.0), (20_000, 0.1)] {
            let q = 1.0 / (1.0 + (-eps).exp());
            for frac in [0.0, 0.3, 0.5, 0.55, 0.7, 0.9, 1.0] {
                let v = (r as f64 * frac) as u64;
                let a = binom_sf_ge(v, r, q);
                let b = sf_by_sum(v, r, eps).min(1.0);
                assert!((a - b).abs() <= 1e-12 + 1e-9 * b, "r {r} eps {eps} v {v}: {a} vs {b}");
            }
        }
        // The δ term: running pmf sum equals the sf-difference form of the reference.
        for (m, r, v, d) in [(1000u64, 100u64, 100u64, 1e-5), (1000, 100, 90, 1e-5), (1000, 500, 500, 1e-5)] {
            let eps: f64 = 2.0;
            let q = 1.0 / (1.0 + (-eps).exp());
            let fv = binom_sf_ge(v, r, q);
            let alpha = (1..=v).map(|i| (binom_sf_ge(v - i, r, q) - fv) / i as f64).fold(0.0, f64::max);
            let reference = (fv + alpha * d * 2.0 * m as f64).min(1.0);
            assert!((one_run_pvalue(m, r, v, eps, d).unwrap() - reference).abs() < 1e-12);
        }
    }

    #[test]
    fn one_run_argument_checks() {
        assert_eq!(one_run_pvalue(10, 11, 1, 0.0, 0.0), Err(BoundError::OneRunCounts { m: 10, r: 11, v: 1 }));
        assert_eq!(one_run_pvalue(10, 5, 6, 0.0, 0.0), Err(BoundError::OneRunCounts { m: 10, r: 5, v: 6 }));
        assert!(matches!(one_run_pvalue(10, 5, 5, -1.0, 0.0), Err(BoundError::Epsilon { .. })));
        assert!(matches!(one_run_pvalue(10, 5, 5, f64::NAN, 0.0), Err(BoundError::Epsilon { .. })));
        assert!(matches!(one_run_eps(10, 5, 5, 2.0, 0.05), Err(BoundError::Delta { .. })));
        assert!(matches!(one_run_eps(10, 5, 5, 0.0, 1.0), Err(BoundError::Level { what: "beta", .. })));
        assert_eq!(one_run_eps(100, 0, 0, 1e-5, 0.05).unwrap(), 0.0);
        assert!(matches!(
            one_run_audit(&[1.0, f64::NAN], &[true, false], 0.0, 0.05, &[1], &[0]),
            Err(BoundError::NanScore { index: 1 })
        ));
        assert!(matches!(
            one_run_audit(&[1.0], &[true, false], 0.0, 0.05, &[1], &[0]),
            Err(BoundError::LengthMismatch { .. })
        ));
        assert!(matches!(
            one_run_audit(&[1.0, 0.0], &[true, false], 0.0, 0.05, &[3], &[0]),
            Err(BoundError::EmptyGrid { m: 2 })
        ));
    }

    /// Ceilings, as the Python reference prints them (3 decimals): (m, δ, ceiling, ε at
    /// r = m/2). A 2-decimal table of the same values shows 4.41 for 4.4048 at m = 500,
    /// r = m/2, δ = 1e-5 (rounded twice).
    #[test]
    fn ceilings_match_the_reference() {
        let table = [
            (100, 0.0, 3.493, 2.785),
            (100, 1e-5, 3.490, 2.782),
            (250, 0.0, 4.418, 3.719),
            (250, 1e-5, 4.412, 3.712),
            (500, 0.0, 5.114, 4.418),
            (500, 1e-5, 5.101, 4.405),
            (1000, 0.0, 5.809, 5.114),
            (1000, 1e-5, 5.782, 5.088),
            (2000, 0.0, 6.503, 5.809),
            (2000, 1e-5, 6.449, 5.755),
            (5000, 0.0, 7.420, 6.726),
            (5000, 1e-5, 7.284, 6.590),
            (10000, 0.0, 8.113, 7.420),
            (10000, 1e-5, 7.834, 7.141),
        ];
        for (m, delta, ceiling, half) in table {
            let c = one_run_ceiling(m, delta, 0.05).unwrap();
            let h = one_run_eps(m as u64, m as u64 / 2, m as u64 / 2, delta, 0.05).unwrap();
            assert!((c.eps - ceiling).abs() <= 5e-4 + 1e-9, "m {m} δ {delta}: {}", c.eps);
            assert!((h - half).abs() <= 5e-4 + 1e-9, "m {m} δ {delta}: {h}");
            assert_eq!(c.r, m);
        }
    }

    /// Draws a synthetic design with a seeded ChaCha20 stream (numpy's stream is not
    /// reproduced): S uniform ±1, scores N(1.5·[S = +1], 1) via Box–Muller.
    fn synthetic(seed: u64, m: usize, shift: f64) -> (Vec<f64>, Vec<bool>) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let s: Vec<bool> = (0..m).map(|_| rng.random_bool(0.5)).collect();
        let y = s
            .iter()
            .map(|&inc| {
                let (u1, u2): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random());
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                z + if inc { shift } else { 0.0 }
            })
            .collect();
        (y, s)
    }

    /// `one_run_audit_synthetic`: the reference's (k+, v) outcomes reproduce its ε exactly
    /// through the Bonferroni-corrected β; the audit logic is then checked on a seeded draw of
    /// the same design.
    #[test]
    fn one_run_audit_synthetic_vector() {
        let v = vectors();
        let syn = &v["one_run_audit_synthetic"];
        // "uncorrected" is the reference's optimistic variant; here it is the 1-pair grid.
        for (key, grid, grid_len) in [("bonferroni", &DEFAULT_K_PLUS[..], 8.0), ("uncorrected", &[50][..], 1.0)] {
            let best = &syn[key];
            let beta_used = f(&best["beta_used"]);
            assert_eq!(beta_used, 0.05 / grid_len);
            let (m, r, vv) = (u(&best["m"]), u(&best["r"]), u(&best["v"]));
            let eps = one_run_eps(m, r, vv, 1e-5, beta_used).unwrap();
            assert!((eps - f(&best["eps"])).abs() <= 1e-6, "{key}: {eps}");

            // Same design, our seeded stream: a perfect top-50 also wins here, with the same ε.
            let (scores, s) = synthetic(12345, 1000, 1.5);
            let audit = one_run_audit(&scores, &s, 1e-5, 0.05, grid, &[0]).unwrap();
            assert_eq!(audit.beta_used, beta_used);
            assert_eq!(audit.grid.len(), grid.len());
            for row in &audit.grid {
                let direct = one_run_eps(1000, row.r as u64, row.v as u64, 1e-5, beta_used).unwrap();
                assert_eq!(row.eps_lb, direct);
            }
            assert!(audit.grid.iter().all(|row| row.eps_lb <= audit.best.eps_lb));
            assert!(audit.best.eps_lb > 1.0, "{key}: {:?}", audit.best);
        }
    }

    #[test]
    fn one_run_audit_counts_both_sides_and_breaks_ties_by_index() {
        // Scores tie everywhere: order is by index, so the top 2 are canaries 0 and 1.
        let scores = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        let s = [true, false, true, false, false, true];
        let audit = one_run_audit(&scores, &s, 0.0, 0.05, &[2], &[0, 3]).unwrap();
        assert_eq!((audit.grid[0].r, audit.grid[0].v), (2, 1));
        // Bottom 3 are canaries 3, 4, 5: two are excluded (S = −1), one correct from the top.
        assert_eq!((audit.grid[1].r, audit.grid[1].v), (5, 3));
        assert_eq!(audit.n_included, 3);
    }

    /// As jax_privacy PR #270 checks (docs/audit.md, Violations and false alarms): null scores give ε_lb = 0 in ≥ 95% of 200
    /// seeded trials; reversed scores give 0; identical target and base (all scores 0) give 0.
    #[test]
    fn null_and_reversed_scores_give_zero() {
        let grid = [10, 20, 50, 100];
        let mut zero = 0;
        for seed in 0..200 {
            let (scores, s) = synthetic(1000 + seed, 200, 0.0);
            let audit = one_run_audit(&scores, &s, 1e-5, 0.05, &grid, &[0]).unwrap();
            zero += usize::from(audit.best.eps_lb == 0.0);
        }
        assert!(zero >= 190, "{zero} of 200 null audits gave 0");

        let (scores, s) = synthetic(7, 1000, 3.0);
        let reversed: Vec<f64> = scores.iter().map(|x| -x).collect();
        let forward = one_run_audit(&scores, &s, 1e-5, 0.05, &DEFAULT_K_PLUS, &[0]).unwrap();
        let backward = one_run_audit(&reversed, &s, 1e-5, 0.05, &DEFAULT_K_PLUS, &[0]).unwrap();
        assert!(forward.best.eps_lb > 2.0);
        assert_eq!(backward.best.eps_lb, 0.0);

        let flat = vec![0.0; 200];
        let (_, s) = synthetic(9, 200, 0.0);
        let null = one_run_audit(&flat, &s, 1e-5, 0.05, &grid, &[0]).unwrap();
        assert_eq!(null.best.eps_lb, 0.0);

        // The classic bound on null and reversed scores is 0 too.
        let members: Vec<bool> = s.clone();
        let (noise, _) = synthetic(10, 200, 0.0);
        assert_eq!(eps_classic_best(&noise, &members, 1e-5, 0.05).unwrap().eps_lb, 0.0);
    }

    #[test]
    fn eps_classic_best_finds_the_separating_threshold() {
        // 1000 independent runs, perfect separation: the (0 FP, all TP) point gives the
        // perfect-count bound at α / |thresholds|.
        let scores: Vec<f64> = (0..2000).map(|i| i as f64).collect();
        let members: Vec<bool> = (0..2000).map(|i| i >= 1000).collect();
        let best = eps_classic_best(&scores, &members, 1e-5, 0.05).unwrap();
        assert_eq!(best.thresholds, 2001);
        assert_eq!(best.point, metrics::RocPoint { fp: 0, tp: 1000 });
        let direct = eps_classic(Confusion { tp: 1000, fp: 0, fn_: 0, tn: 1000 }, 1e-5, 0.05 / 2001.0).unwrap();
        assert_eq!(best.eps_lb, direct.eps_lb);
        // At the full α it would be the perfect-count value 5.600577.
        assert!(best.eps_lb < 5.600577);
    }
}

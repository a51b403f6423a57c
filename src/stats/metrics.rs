//! Membership-inference metrics over one score column: exact ROC AUC with ties, TPR at a fixed
//! FPR in the three conventions found in the wild, and stratified percentile bootstrap CIs.
//! Implements docs/audit.md, Metrics, mirroring the Python reference's `auc_exact`,
//! `roc_points`, `tpr_at_fpr`, `quantile_linear` and `bootstrap_ci`.
//!
//! Conventions: `members[i] == true` is label 1, the positive class; higher score ⇒ predicted
//! member. NaN scores are dropped first and every result carries the count (`dropped_nan`,
//! it must be reported). ±inf are ordinary values. Score equality is exact f64 equality.
//! What this module does not own: computing scores (`audit::scores`), ε bounds
//! ([`super::bounds`]), or the report.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// The FPR targets (docs/audit.md, Metrics): 0.1%, 1%, 5%.
pub const FPR_TARGETS: [f64; 3] = [0.001, 0.01, 0.05];

/// A rejected metric argument; each variant names the argument and carries its value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricError {
    /// Scores and labels differ in length.
    #[error("{scores} scores but {labels} labels")]
    LengthMismatch {
        /// `scores.len()`.
        scores: usize,
        /// `members.len()`.
        labels: usize,
    },
    /// After dropping NaN scores a class is empty, so the metric is undefined.
    #[error("need at least one member and one non-member after dropping {dropped_nan} NaN scores, got {members} and {nonmembers}")]
    EmptyClass {
        /// Members left.
        members: usize,
        /// Non-members left.
        nonmembers: usize,
        /// NaN scores dropped.
        dropped_nan: usize,
    },
    /// A target FPR must lie in [0, 1].
    #[error("target FPR must be in [0, 1], got {target}")]
    Target {
        /// The rejected target.
        target: f64,
    },
    /// The bootstrap needs at least two resamples (its sd has B − 1 in the denominator).
    #[error("bootstrap needs at least 2 resamples, got {resamples}")]
    Resamples {
        /// The rejected count.
        resamples: usize,
    },
    /// Quantiles must lie in [0, 1].
    #[error("quantile must be in [0, 1], got {quantile}")]
    Quantile {
        /// The rejected quantile.
        quantile: f64,
    },
    /// A replayed resample index is outside the cleaned data.
    #[error("replayed index {index} out of range for {len} non-NaN scores")]
    ReplayIndex {
        /// The index.
        index: usize,
        /// The number of scores left after dropping NaN.
        len: usize,
    },
}

/// Scores with NaN dropped, as in the reference `_clean`.
#[derive(Debug, Clone, PartialEq)]
struct Clean {
    scores: Vec<f64>,
    members: Vec<bool>,
    n_pos: usize,
    n_neg: usize,
    dropped_nan: usize,
}

fn clean(scores: &[f64], members: &[bool]) -> Result<Clean, MetricError> {
    if scores.len() != members.len() {
        return Err(MetricError::LengthMismatch { scores: scores.len(), labels: members.len() });
    }
    let (mut s, mut m) = (Vec::with_capacity(scores.len()), Vec::with_capacity(scores.len()));
    for (&x, &y) in scores.iter().zip(members) {
        if !x.is_nan() {
            s.push(x);
            m.push(y);
        }
    }
    let n_pos = m.iter().filter(|&&y| y).count();
    let n_neg = m.len() - n_pos;
    let dropped_nan = scores.len() - s.len();
    if n_pos == 0 || n_neg == 0 {
        return Err(MetricError::EmptyClass { members: n_pos, nonmembers: n_neg, dropped_nan });
    }
    Ok(Clean { scores: s, members: m, n_pos, n_neg, dropped_nan })
}

/// Exact ROC AUC, as the integer pair and the f64 it reduces to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Auc {
    /// 2·U, U the Mann–Whitney statistic with ties counting ½.
    pub two_u: u64,
    /// 2·P·N.
    pub two_pn: u64,
    /// `two_u / two_pn` (equals sklearn `roc_auc_score`).
    pub auc: f64,
    /// P, members kept.
    pub n_pos: usize,
    /// N, non-members kept.
    pub n_neg: usize,
    /// NaN scores dropped.
    pub dropped_nan: usize,
}

/// ROC AUC by Mann–Whitney with ties = ½, from exact integer ranks (docs/audit.md, Metrics): sort ascending by
/// `f64::total_cmp`, give each member of a tie group at 1-based positions a..b the twice-rank
/// a + b, then `two_U = Σ_members twice_rank − P(P+1)` and `AUC = two_U / (2PN)`.
pub fn auc(scores: &[f64], members: &[bool]) -> Result<Auc, MetricError> {
    let c = clean(scores, members)?;
    Ok(auc_clean(&c.scores, &c.members, c.dropped_nan))
}

/// AUC of NaN-free data with both classes present.
fn auc_clean(scores: &[f64], members: &[bool], dropped_nan: usize) -> Auc {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&i, &j| scores[i].total_cmp(&scores[j]));
    let mut rank_sum: u64 = 0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        // total_cmp puts −0.0 right before 0.0, so `==` groups them, as numpy's equality does.
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let twice_rank = (i + 1 + j + 1) as u64;
        rank_sum += twice_rank * order[i..=j].iter().filter(|&&k| members[k]).count() as u64;
        i = j + 1;
    }
    let n_pos = members.iter().filter(|&&y| y).count();
    let n_neg = members.len() - n_pos;
    let (p, n) = (n_pos as u64, n_neg as u64);
    let two_u = rank_sum - p * (p + 1);
    let two_pn = 2 * p * n;
    Auc { two_u, two_pn, auc: two_u as f64 / two_pn as f64, n_pos, n_neg, dropped_nan }
}

/// One ROC point: counts after classifying "member" iff score ≥ a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RocPoint {
    /// False positives.
    pub fp: usize,
    /// True positives.
    pub tp: usize,
}

/// The full ROC with the class sizes and the NaN count.
#[derive(Debug, Clone, PartialEq)]
pub struct Roc {
    /// (0, 0) then one point per distinct score, in descending score order; no point dropped.
    pub points: Vec<RocPoint>,
    /// P.
    pub n_pos: usize,
    /// N.
    pub n_neg: usize,
    /// NaN scores dropped.
    pub dropped_nan: usize,
}

/// The ROC points (reference `roc_points`).
pub fn roc(scores: &[f64], members: &[bool]) -> Result<Roc, MetricError> {
    let c = clean(scores, members)?;
    Ok(roc_clean(&c))
}

fn roc_clean(c: &Clean) -> Roc {
    let mut order: Vec<usize> = (0..c.scores.len()).collect();
    // Descending, stable: the reference's argsort(−s, kind="mergesort").
    order.sort_by(|&i, &j| c.scores[j].total_cmp(&c.scores[i]));
    let mut points = vec![RocPoint { fp: 0, tp: 0 }];
    let (mut fp, mut tp) = (0, 0);
    for (pos, &i) in order.iter().enumerate() {
        if c.members[i] {
            tp += 1;
        } else {
            fp += 1;
        }
        let last_of_group = order.get(pos + 1).is_none_or(|&next| c.scores[next] != c.scores[i]);
        if last_of_group {
            points.push(RocPoint { fp, tp });
        }
    }
    Roc { points, n_pos: c.n_pos, n_neg: c.n_neg, dropped_nan: c.dropped_nan }
}

/// FPR values a drawn ROC keeps per factor of ten ([`roc_for_plot`]).
pub const ROC_PLOT_POINTS_PER_DECADE: f64 = 80.0;

/// The ROC thinned for a log-log plot: the points are grouped by their false-positive count
/// (every count below [`ROC_PLOT_POINTS_PER_DECADE`] its own group, larger counts in groups of
/// equal width on a log scale) and each group keeps its first and last point. Below that count
/// only collinear points are dropped (those inside a vertical run), so the curve there, and the
/// area under it, is the ROC's exactly. Nothing is interpolated: every point kept is a point of
/// the ROC, the first (0, 0) and the last (N, P) among them. At most about `2 × 80 × (1 +
/// log10(N / 80))` points.
pub fn roc_for_plot(roc: &Roc) -> Vec<RocPoint> {
    let group = |fp: usize| -> u64 {
        let linear = ROC_PLOT_POINTS_PER_DECADE;
        if (fp as f64) < linear {
            fp as u64
        } else {
            linear as u64 + ((fp as f64 / linear).log10() * ROC_PLOT_POINTS_PER_DECADE) as u64
        }
    };
    let mut kept: Vec<RocPoint> = Vec::new();
    let mut run_start = 0; // index in `kept` of the current group's first point
    for p in &roc.points {
        match kept.get(run_start) {
            Some(first) if group(first.fp) == group(p.fp) => {
                if kept.len() == run_start + 2 {
                    kept[run_start + 1] = *p;
                } else {
                    kept.push(*p);
                }
            }
            _ => {
                run_start = kept.len();
                kept.push(*p);
            }
        }
    }
    kept
}

/// Counts of scores per bin, members and non-members apart, over the same bins.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// `bins + 1` increasing edges: bin `i` is `[edges[i], edges[i + 1])`, the last one closed.
    pub edges: Vec<f64>,
    /// Members per bin.
    pub members: Vec<u64>,
    /// Non-members per bin.
    pub nonmembers: Vec<u64>,
}

/// The histogram of the finite scores over `bins` equal bins from the smallest to the largest
/// (one bin of width 1 around the value when they are all equal); NaN and infinite scores are
/// left out (the metrics count NaNs).
pub fn histogram(scores: &[f64], members: &[bool], bins: usize) -> Result<Histogram, MetricError> {
    if scores.len() != members.len() {
        return Err(MetricError::LengthMismatch { scores: scores.len(), labels: members.len() });
    }
    let bins = bins.max(1);
    let finite = || scores.iter().copied().filter(|s| s.is_finite());
    let lo = finite().fold(f64::INFINITY, f64::min);
    let hi = finite().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if !lo.is_finite() {
        (0.0, 1.0)
    } else if lo == hi {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    };
    let width = (hi - lo) / bins as f64;
    let edges = (0..=bins).map(|i| if i == bins { hi } else { lo + width * i as f64 }).collect();
    let mut out = Histogram { edges, members: vec![0; bins], nonmembers: vec![0; bins] };
    for (&s, &m) in scores.iter().zip(members).filter(|(s, _)| s.is_finite()) {
        let i = (((s - lo) / width) as usize).min(bins - 1);
        if m {
            out.members[i] += 1;
        } else {
            out.nonmembers[i] += 1;
        }
    }
    Ok(out)
}

/// How "TPR at FPR t" is read off the ROC (docs/audit.md, Metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FprMode {
    /// Max TPR over points with FPR < t (LiRA, detect-pretrain-code, MIMIR). The default.
    Strict,
    /// Max TPR over points with FPR ≤ t (mink-plus-plus).
    Leq,
    /// TPR of the best randomised threshold at FPR = t: linear interpolation on the ROC's upper
    /// concave hull (jax_privacy `tpr_at_given_fpr`).
    Interp,
}

/// TPR at a target FPR, with what was actually achieved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TprAtFpr {
    /// The target t.
    pub target: f64,
    /// The convention used.
    pub mode: FprMode,
    /// TP/P at the chosen point.
    pub tpr: f64,
    /// FP/N at the chosen point (for `Interp`, t itself unless t lies beyond the hull).
    pub realised_fpr: f64,
    /// The chosen ROC point; `None` for `Interp`, which mixes two points.
    pub point: Option<RocPoint>,
    /// P.
    pub n_pos: usize,
    /// N.
    pub n_neg: usize,
    /// NaN scores dropped.
    pub dropped_nan: usize,
    /// N < 10/t: too few non-members for a meaningful value at this target; always
    /// true at t = 0.
    pub underpowered: bool,
}

/// TPR at FPR `target` in the given convention (reference `tpr_at_fpr`). Strict at
/// t = 0 is undefined and returns TPR 0 at the (0, 0) point. Among points with equal TPR the
/// lowest FPR is reported.
pub fn tpr_at_fpr(scores: &[f64], members: &[bool], target: f64, mode: FprMode) -> Result<TprAtFpr, MetricError> {
    if !(0.0..=1.0).contains(&target) {
        return Err(MetricError::Target { target });
    }
    let c = clean(scores, members)?;
    Ok(tpr_at_fpr_roc(&roc_clean(&c), target, mode))
}

fn tpr_at_fpr_roc(roc: &Roc, target: f64, mode: FprMode) -> TprAtFpr {
    let (p, n) = (roc.n_pos as f64, roc.n_neg as f64);
    let (tpr, realised_fpr, point) = match mode {
        FprMode::Strict | FprMode::Leq => {
            let mut best = (0.0, 0.0, RocPoint { fp: 0, tp: 0 });
            for &pt in &roc.points {
                let (f, t) = (pt.fp as f64 / n, pt.tp as f64 / p);
                let admissible = match mode {
                    FprMode::Strict => f < target,
                    _ => f <= target,
                };
                // Python's tuple order (tpr, −fpr) > (best_tpr, −best_fpr).
                if admissible && (t > best.0 || (t == best.0 && f < best.1)) {
                    best = (t, f, pt);
                }
            }
            (best.0, best.1, Some(best.2))
        }
        FprMode::Interp => {
            let (t, f) = interp_on_hull(roc, target);
            (t, f, None)
        }
    };
    TprAtFpr {
        target,
        mode,
        tpr,
        realised_fpr,
        point,
        n_pos: roc.n_pos,
        n_neg: roc.n_neg,
        dropped_nan: roc.dropped_nan,
        underpowered: n * target < 10.0,
    }
}

/// (tpr, fpr) on the upper concave hull at FPR `target`, as the reference computes it.
fn interp_on_hull(roc: &Roc, target: f64) -> (f64, f64) {
    let (p, n) = (roc.n_pos as f64, roc.n_neg as f64);
    let mut hull: Vec<(f64, f64)> = Vec::with_capacity(roc.points.len());
    for pt in &roc.points {
        let (x, y) = (pt.fp as f64 / n, pt.tp as f64 / p);
        while let [.., (x1, y1), (x2, y2)] = hull[..] {
            if (y2 - y1) * (x - x1) <= (y - y1) * (x2 - x1) {
                hull.pop();
            } else {
                break;
            }
        }
        hull.push((x, y));
    }
    for w in hull.windows(2) {
        let ((x1, y1), (x2, y2)) = (w[0], w[1]);
        if x1 <= target && target <= x2 {
            if x2 == x1 {
                return (y1.max(y2), target);
            }
            return (y1 + (target - x1) * (y2 - y1) / (x2 - x1), target);
        }
    }
    // The ROC always ends at (1, 1), so this is reached only through rounding.
    hull.last().map_or((0.0, 0.0), |&(x, y)| (y, x))
}

/// Settings of the stratified percentile bootstrap (docs/audit.md, Metrics).
#[derive(Debug, Clone, PartialEq)]
pub struct BootstrapConfig {
    /// B, the number of resamples (default 1000).
    pub resamples: usize,
    /// Seed of the ChaCha20 stream that draws the resamples; record it in the report.
    pub seed: u64,
    /// The CI's quantiles, numpy's "linear" (type 7) rule (default 0.025 and 0.975).
    pub quantiles: (f64, f64),
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        Self { resamples: 1000, seed: 0, quantiles: (0.025, 0.975) }
    }
}

/// A bootstrap CI with the mean and sd of the resampled statistic.
#[derive(Debug, Clone, PartialEq)]
pub struct BootstrapCi {
    /// Lower quantile of the resampled statistic.
    pub lo: f64,
    /// Upper quantile.
    pub hi: f64,
    /// Mean over resamples (of the statistic itself: no MIMIR-style 1 − AUC).
    pub mean: f64,
    /// Sample sd over resamples (ddof = 1).
    pub sd: f64,
    /// B.
    pub resamples: usize,
    /// The seed of the ChaCha20Rng that drew the resamples; `None` for a replay.
    pub seed: Option<u64>,
    /// NaN scores dropped before resampling.
    pub dropped_nan: usize,
}

/// numpy's default quantile ("linear", Hyndman–Fan type 7) of ascending, non-empty values.
pub fn quantile_linear(sorted: &[f64], q: f64) -> Result<f64, MetricError> {
    if !(0.0..=1.0).contains(&q) {
        return Err(MetricError::Quantile { quantile: q });
    }
    let Some(last) = sorted.len().checked_sub(1) else {
        return Ok(f64::NAN);
    };
    let h = last as f64 * q;
    let lo = (h.floor() as usize).min(last);
    let hi = (lo + 1).min(last);
    Ok(sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo]))
}

/// Stratified percentile bootstrap (reference `bootstrap_ci`): each resample draws P
/// members and N non-members with replacement, separately, and recomputes `stat` on
/// (scores, members) of the resample, members first. Seeded: the indices come from
/// `ChaCha20Rng::seed_from_u64(config.seed)` (numpy's PCG64 stream is not reproduced, so
/// parity with Python is statistical or via [`bootstrap_replay`]).
pub fn bootstrap_ci<F>(
    scores: &[f64],
    members: &[bool],
    config: &BootstrapConfig,
    mut stat: F,
) -> Result<BootstrapCi, MetricError>
where
    F: FnMut(&[f64], &[bool]) -> Result<f64, MetricError>,
{
    if config.resamples < 2 {
        return Err(MetricError::Resamples { resamples: config.resamples });
    }
    check_quantiles(config.quantiles)?;
    let c = clean(scores, members)?;
    let pos: Vec<usize> = (0..c.members.len()).filter(|&i| c.members[i]).collect();
    let neg: Vec<usize> = (0..c.members.len()).filter(|&i| !c.members[i]).collect();
    let mut rng = ChaCha20Rng::seed_from_u64(config.seed);
    let mut idx = Vec::with_capacity(c.scores.len());
    let mut values = Vec::with_capacity(config.resamples);
    for _ in 0..config.resamples {
        idx.clear();
        idx.extend((0..pos.len()).map(|_| pos[rng.random_range(0..pos.len())]));
        idx.extend((0..neg.len()).map(|_| neg[rng.random_range(0..neg.len())]));
        values.push(stat_on(&c, &idx, &mut stat)?);
    }
    summarise(values, config.quantiles, Some(config.seed), c.dropped_nan)
}

/// The bootstrap on given resamples: `resamples[b]` indexes the scores left after dropping NaN
/// (the reference's `index_sink`), so a Python run can be replayed exactly.
pub fn bootstrap_replay<F>(
    scores: &[f64],
    members: &[bool],
    resamples: &[Vec<usize>],
    quantiles: (f64, f64),
    mut stat: F,
) -> Result<BootstrapCi, MetricError>
where
    F: FnMut(&[f64], &[bool]) -> Result<f64, MetricError>,
{
    if resamples.len() < 2 {
        return Err(MetricError::Resamples { resamples: resamples.len() });
    }
    check_quantiles(quantiles)?;
    let c = clean(scores, members)?;
    let mut values = Vec::with_capacity(resamples.len());
    for idx in resamples {
        if let Some(&index) = idx.iter().find(|&&i| i >= c.scores.len()) {
            return Err(MetricError::ReplayIndex { index, len: c.scores.len() });
        }
        values.push(stat_on(&c, idx, &mut stat)?);
    }
    summarise(values, quantiles, None, c.dropped_nan)
}

fn check_quantiles((lo, hi): (f64, f64)) -> Result<(), MetricError> {
    for q in [lo, hi] {
        if !(0.0..=1.0).contains(&q) {
            return Err(MetricError::Quantile { quantile: q });
        }
    }
    Ok(())
}

fn stat_on<F>(c: &Clean, idx: &[usize], stat: &mut F) -> Result<f64, MetricError>
where
    F: FnMut(&[f64], &[bool]) -> Result<f64, MetricError>,
{
    let s: Vec<f64> = idx.iter().map(|&i| c.scores[i]).collect();
    let y: Vec<bool> = idx.iter().map(|&i| c.members[i]).collect();
    stat(&s, &y)
}

fn summarise(
    mut values: Vec<f64>,
    (q_lo, q_hi): (f64, f64),
    seed: Option<u64>,
    dropped_nan: usize,
) -> Result<BootstrapCi, MetricError> {
    values.sort_by(f64::total_cmp);
    let b = values.len() as f64;
    let mean = values.iter().sum::<f64>() / b;
    let sd = (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (b - 1.0)).sqrt();
    Ok(BootstrapCi {
        lo: quantile_linear(&values, q_lo)?,
        hi: quantile_linear(&values, q_hi)?,
        mean,
        sd,
        resamples: values.len(),
        seed,
        dropped_nan,
    })
}

/// Bootstrap CI of the AUC.
pub fn bootstrap_auc(scores: &[f64], members: &[bool], config: &BootstrapConfig) -> Result<BootstrapCi, MetricError> {
    bootstrap_ci(scores, members, config, |s, y| auc(s, y).map(|a| a.auc))
}

/// Bootstrap CI of TPR at FPR `target` (expect wide intervals).
pub fn bootstrap_tpr_at_fpr(
    scores: &[f64],
    members: &[bool],
    target: f64,
    mode: FprMode,
    config: &BootstrapConfig,
) -> Result<BootstrapCi, MetricError> {
    bootstrap_ci(scores, members, config, |s, y| tpr_at_fpr(s, y, target, mode).map(|t| t.tpr))
}

#[cfg(test)]
mod tests {
    //! Randomised checks use ChaCha20Rng with fixed, public test seeds: reproducible.

    use super::super::testutil::{f, fs, labels, reference_rows, u, vectors};
    use super::*;

    #[test]
    fn the_plotted_roc_is_the_roc_exactly_at_low_false_positive_counts() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let n = 20_000;
        let members: Vec<bool> = (0..n).map(|i| i % 3 == 0).collect();
        let scores: Vec<f64> = members.iter().map(|&m| rng.random::<f64>() + if m { 0.3 } else { 0.0 }).collect();
        let full = roc(&scores, &members).unwrap();
        let plot = roc_for_plot(&full);
        assert_eq!(plot.first(), full.points.first());
        assert_eq!(plot.last(), full.points.last());
        assert!(plot.len() <= 2 * 80 * (1 + 3) && plot.len() > 200, "{} points", plot.len());
        assert!(plot.iter().all(|p| full.points.contains(p)));
        assert!(plot.windows(2).all(|w| w[0].fp <= w[1].fp && w[0].tp <= w[1].tp));
        // Below 80 false positives every count is kept, with its least and largest true-positive
        // counts: the curve there is the ROC's, and so is the area under it.
        for fp in 0..80 {
            let tps = full.points.iter().filter(|p| p.fp == fp).map(|p| p.tp);
            let (least, most) = (tps.clone().min().unwrap(), tps.max().unwrap());
            assert!(plot.contains(&RocPoint { fp, tp: least }) && plot.contains(&RocPoint { fp, tp: most }), "fp {fp}");
        }
        let area = |pts: &[RocPoint]| pts.windows(2).map(|w| (w[1].fp - w[0].fp) as f64 * (w[0].tp + w[1].tp) as f64).sum::<f64>();
        let small = roc(&scores[..100], &members[..100]).unwrap();
        assert!(small.n_neg < 80);
        assert_eq!(area(&roc_for_plot(&small)), area(&small.points));
        assert_eq!(area(&small.points), auc(&scores[..100], &members[..100]).unwrap().two_u as f64, "twice the area is 2U");
    }

    #[test]
    fn histograms_count_every_finite_score_once() {
        let scores = [0.0, 1.0, 2.0, 3.0, 4.0, f64::NAN, f64::INFINITY, 4.0];
        let members = [true, false, true, false, true, true, true, false];
        let h = histogram(&scores, &members, 4).unwrap();
        assert_eq!(h.edges, [0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(h.members, [1, 0, 1, 1]);
        assert_eq!(h.nonmembers, [0, 1, 0, 2]);
        let flat = histogram(&[2.0, 2.0], &[true, false], 3).unwrap();
        assert_eq!((flat.edges[0], flat.edges[3], flat.members.iter().sum::<u64>(), flat.nonmembers.iter().sum::<u64>()), (1.5, 2.5, 1, 1));
        assert!(histogram(&[1.0], &[true, false], 3).is_err());
    }

    /// The O(PN) definition of the AUC, for cross-checks.
    fn auc_pairs(s: &[f64], y: &[bool]) -> (u64, u64) {
        let mut two_u = 0;
        let mut pairs = 0;
        for (i, &si) in s.iter().enumerate().filter(|&(i, _)| y[i]) {
            for (_, &sj) in s.iter().enumerate().filter(|&(j, _)| !y[j]) {
                pairs += 1;
                two_u += if si > sj {
                    2
                } else if si == sj {
                    1
                } else {
                    0
                };
            }
            let _ = i;
        }
        (two_u, 2 * pairs)
    }

    #[test]
    fn auc_ties_vector() {
        let v = vectors();
        let t = &v["auc_ties"];
        let a = auc(&fs(&t["scores"]), &labels(&t["labels"])).unwrap();
        let frac: Vec<u64> = t["auc_fraction"].as_array().unwrap().iter().map(u).collect();
        // Exact rational equality: two_u / two_pn reduces to the reference's Fraction.
        assert_eq!(a.two_u * frac[1], a.two_pn * frac[0]);
        assert_eq!((a.two_u, a.two_pn), (21, 32));
        assert_eq!(a.auc, f(&t["auc"]));
        assert_eq!(a.dropped_nan as u64, u(&t["dropped_nan"]));
        assert_eq!((a.n_pos, a.n_neg), (4, 4));
    }

    #[test]
    fn tpr_at_fpr_vector_all_modes() {
        let v = vectors();
        let t = &v["tpr_at_fpr"];
        let (s, y) = (fs(&t["scores"]), labels(&t["labels"]));
        let mut checked = 0;
        for (key, want) in t.as_object().unwrap() {
            let Some((mode, target)) = key.split_once('@') else { continue };
            let mode = match mode {
                "strict" => FprMode::Strict,
                "leq" => FprMode::Leq,
                "interp" => FprMode::Interp,
                other => panic!("unknown mode {other}"),
            };
            let target: f64 = target.parse().unwrap();
            let got = tpr_at_fpr(&s, &y, target, mode).unwrap();
            let want = fs(want);
            // Exact on identical inputs.
            assert_eq!((got.tpr, got.realised_fpr), (want[0], want[1]), "{key}");
            checked += 1;
        }
        assert_eq!(checked, 12);
        let strict = tpr_at_fpr(&s, &y, 0.2, FprMode::Strict).unwrap();
        assert_eq!(strict.point, Some(RocPoint { fp: 1, tp: 4 }));
        assert!(strict.underpowered); // N = 6 < 10 / 0.2
    }

    #[test]
    fn strict_tpr_matches_the_roc_curve_idiom() {
        // tpr[np.where(fpr < t)[0][-1]] on a full ROC equals the strict mode.
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let y: Vec<bool> = (0..3000).map(|_| rng.random_bool(0.5)).collect();
        let s: Vec<f64> =
            y.iter().map(|&m| (rng.random_range(0..200) as f64) / 20.0 + if m { 0.8 } else { 0.0 }).collect();
        let r = roc(&s, &y).unwrap();
        for t in FPR_TARGETS {
            let last = r.points.iter().rev().find(|p| (p.fp as f64 / r.n_neg as f64) < t).unwrap();
            let got = tpr_at_fpr(&s, &y, t, FprMode::Strict).unwrap();
            assert_eq!(got.tpr, last.tp as f64 / r.n_pos as f64);
            assert!(got.realised_fpr < t);
        }
    }

    #[test]
    fn auc_matches_pair_counting_with_heavy_ties() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        for _ in 0..20 {
            let n = rng.random_range(2..300);
            let mut y: Vec<bool> = (0..n).map(|_| rng.random_bool(0.4)).collect();
            y[0] = true;
            y[1] = false;
            let s: Vec<f64> = (0..n).map(|_| rng.random_range(0..8) as f64 - 3.0).collect();
            let a = auc(&s, &y).unwrap();
            assert_eq!((a.two_u, a.two_pn), auc_pairs(&s, &y));
            // AUC(s) + AUC(−s) = 1 (with ties too, since ties count ½ both ways).
            let neg: Vec<f64> = s.iter().map(|x| -x).collect();
            assert_eq!(auc(&neg, &y).unwrap().two_u + a.two_u, a.two_pn);
            // Permuting leaves it unchanged.
            let (rs, ry): (Vec<f64>, Vec<bool>) = s.iter().rev().zip(y.iter().rev()).map(|(a, b)| (*a, *b)).unzip();
            assert_eq!(auc(&rs, &ry).unwrap(), a);
        }
        // Signed zeros are equal; infinities are ordinary values.
        let a = auc(&[-0.0, 0.0, f64::INFINITY, f64::NEG_INFINITY], &[true, false, true, false]).unwrap();
        assert_eq!((a.two_u, a.two_pn), (7, 8)); // −0 = 0 ties: ½ pair
    }

    #[test]
    fn errors_and_nan_counts() {
        assert!(matches!(auc(&[1.0], &[true, false]), Err(MetricError::LengthMismatch { .. })));
        assert_eq!(
            auc(&[1.0, f64::NAN], &[true, false]),
            Err(MetricError::EmptyClass { members: 1, nonmembers: 0, dropped_nan: 1 })
        );
        assert!(matches!(
            tpr_at_fpr(&[1.0, 0.0], &[true, false], 1.5, FprMode::Strict),
            Err(MetricError::Target { .. })
        ));
        let t = tpr_at_fpr(&[1.0, 0.0, f64::NAN], &[true, false, true], 0.0, FprMode::Strict).unwrap();
        assert_eq!((t.tpr, t.realised_fpr, t.dropped_nan), (0.0, 0.0, 1));
        let cfg = BootstrapConfig { resamples: 1, ..BootstrapConfig::default() };
        assert!(matches!(bootstrap_auc(&[1.0, 0.0], &[true, false], &cfg), Err(MetricError::Resamples { .. })));
        assert!(matches!(quantile_linear(&[1.0], 2.0), Err(MetricError::Quantile { .. })));
    }

    #[test]
    fn quantile_is_numpy_linear() {
        let v = [1.0, 2.0, 4.0, 8.0];
        assert_eq!(quantile_linear(&v, 0.0).unwrap(), 1.0);
        assert_eq!(quantile_linear(&v, 1.0).unwrap(), 8.0);
        assert_eq!(quantile_linear(&v, 0.5).unwrap(), 3.0); // h = 1.5
        assert_eq!(quantile_linear(&v, 0.25).unwrap(), 1.75); // h = 0.75
    }

    /// Seeded (ChaCha20, seed 7) bootstrap: reproducible, centred on the AUC (not MIMIR's
    /// 1 − AUC), and matching the normal-theory width at the example's scale.
    #[test]
    fn bootstrap_auc_is_seeded_and_sane() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let y: Vec<bool> = (0..400).map(|i| i < 200).collect();
        // Roughly the reference's example: N(0.5·member, 1) via a sum of uniforms.
        let s: Vec<f64> = y
            .iter()
            .map(|&m| (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0 + if m { 0.5 } else { 0.0 })
            .collect();
        let point = auc(&s, &y).unwrap().auc;
        let cfg = BootstrapConfig { resamples: 1000, seed: 7, quantiles: (0.025, 0.975) };
        let a = bootstrap_auc(&s, &y, &cfg).unwrap();
        assert_eq!(a, bootstrap_auc(&s, &y, &cfg).unwrap());
        assert_eq!(a.seed, Some(7));
        assert!(a.lo < point && point < a.hi);
        assert!((a.mean - point).abs() < 0.005, "mean {} vs auc {point}", a.mean);
        // The reference's run on the same design: sd 0.0271, CI width 0.107 (vectors
        // `bootstrap_auc`); Hanley–McNeil gives the same scale.
        let v = vectors();
        let want_sd = f(&v["bootstrap_auc"]["sd"]);
        assert!((a.sd - want_sd).abs() < 0.005, "sd {} vs {want_sd}", a.sd);
        assert!(((a.hi - a.lo) - 0.10684812).abs() < 0.02);
        let other = bootstrap_auc(&s, &y, &BootstrapConfig { seed: 8, ..cfg.clone() }).unwrap();
        assert!((other.lo - a.lo).abs() < 0.01 && (other.hi - a.hi).abs() < 0.01);
        assert_ne!(other, a);
        let tpr = bootstrap_tpr_at_fpr(&s, &y, 0.05, FprMode::Strict, &cfg).unwrap();
        assert!(tpr.lo <= tpr.hi && tpr.hi <= 1.0);
    }

    #[test]
    fn bootstrap_replay_uses_the_given_indices() {
        let s = [0.9, 0.1, f64::NAN, 0.8, 0.2];
        let y = [true, false, true, true, false];
        // Indices refer to the NaN-free data [0.9, 0.1, 0.8, 0.2].
        let resamples = vec![vec![0, 0, 1, 3], vec![0, 2, 3, 1], vec![2, 2, 1, 1]];
        let r = bootstrap_replay(&s, &y, &resamples, (0.0, 1.0), |s, y| auc(s, y).map(|a| a.auc)).unwrap();
        assert_eq!((r.lo, r.hi, r.mean, r.seed, r.dropped_nan), (1.0, 1.0, 1.0, None, 1));
        assert_eq!(
            bootstrap_replay(&s, &y, &[vec![0, 4], vec![0, 1]], (0.0, 1.0), |_, _| Ok(0.0)),
            Err(MetricError::ReplayIndex { index: 4, len: 4 })
        );
    }

    /// The fixture AUCs from the score columns of `reference_scores.jsonl`.
    #[test]
    fn fixture_aucs_from_reference_scores() {
        let rows = reference_rows();
        let y: Vec<bool> = rows.iter().map(|r| u(&r["label"]) == 1).collect();
        for (column, want) in [
            ("score_loss", 0.96875),
            ("score_zlib", 0.890625),
            ("score_lowercase", 0.90625),
            ("score_ref", 1.0),
            ("min_k_0.2", 0.828125),
            ("min_k_pp_0.2", 0.828125),
        ] {
            let s: Vec<f64> = rows.iter().map(|r| f(&r[column])).collect();
            let a = auc(&s, &y).unwrap();
            assert_eq!(a.auc, want, "{column}");
            assert_eq!((a.n_pos, a.n_neg, a.dropped_nan), (8, 8, 0));
        }
    }
}

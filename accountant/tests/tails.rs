//! The certified accountant at tiny delta and on long histories (issue 11, item 1): against the
//! closed form of the composed Gaussian mechanism (an independent, exact route), against
//! dp_accounting's PLD on single jobs and ledger-shaped histories (`tests/data/tails_reference.csv`, made by
//! scripts/reference/tails_reference.py at the repository root),
//! and `epsilon` and `delta` agreeing with each other on the same point.

use ewtune_accountant::pld::PldAccountant;
use ewtune_accountant::{History, StepGroup};

/// `P(Z > x)` through libm's erfc (relative accuracy in the far tail).
fn sf(x: f64) -> f64 {
    0.5 * libm::erfc(x / std::f64::consts::SQRT_2)
}

/// delta(eps) of the Gaussian mechanism with sensitivity/noise ratio `mu` (Balle & Wang 2018,
/// Thm. 8): `Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)`. `n` steps of noise multiplier
/// sigma at q = 1 compose to `mu = sqrt(n) / sigma` exactly.
fn gaussian_delta(mu: f64, eps: f64) -> f64 {
    sf(eps / mu - mu / 2.0) - eps.exp() * sf(eps / mu + mu / 2.0)
}

/// The exact epsilon at delta, by bisection on the closed form (decreasing in eps).
fn gaussian_epsilon(mu: f64, delta: f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while gaussian_delta(mu, hi) > delta {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if gaussian_delta(mu, mid) > delta { lo = mid } else { hi = mid }
    }
    hi
}

/// Full-batch Gaussian steps (q = 1) have an exact answer at any delta: the certified interval
/// must contain it and the guarantee must be within 0.5 % of it, down to delta = 1e-10 and up to
/// 10^6 steps, and `delta` must bracket the closed form at that epsilon.
#[test]
fn gaussian_composition_at_tiny_delta_matches_the_closed_form() {
    let acc = PldAccountant::default();
    for (sigma, steps, delta) in [(1000.0, 1_000_000u64, 1e-10), (300.0, 100_000, 1e-8), (30.0, 10_000, 1e-10), (100.0, 1_000_000, 1e-5), (3.0, 100, 1e-10)] {
        let mu = (steps as f64).sqrt() / sigma;
        let exact = gaussian_epsilon(mu, delta);
        let h = History::homogeneous(sigma, 1.0, steps).unwrap();
        let e = acc.epsilon(&h, delta).unwrap().bounds;
        let at = format!("sigma={sigma} steps={steps} delta={delta}: {e:?} vs exact {exact}");
        assert!(e.lower <= exact && exact <= e.upper, "{at}");
        assert!(e.upper <= exact * 1.005, "{at}");
        let d = acc.delta(&h, exact).unwrap();
        assert!(d.lower <= delta && delta <= d.upper && d.upper <= delta * 1.05, "{at}: {d:?}");
    }
}

/// `epsilon` then `delta` on the point it certified agree: the delta certified at the stated
/// epsilon is at most the delta asked for (and within 5 % of it), and the way back stays within
/// 0.2 % in epsilon.
#[test]
fn epsilon_and_delta_modes_agree_on_the_same_point() {
    let acc = PldAccountant::default();
    for (sigma, q, steps, delta) in [
        (2.89, 0.003984, 369u64, 1e-8),
        (3.6955, 0.0405, 112_343, 1e-8),
        (1.0, 0.01, 1000, 1e-5),
        (0.8, 0.004, 100_000, 1e-10),
        (1.5, 0.02, 10_000, 1e-6),
    ] {
        let h = History::homogeneous(sigma, q, steps).unwrap();
        let e = acc.epsilon(&h, delta).unwrap().bounds;
        let d = acc.delta(&h, e.upper).unwrap();
        let at = format!("sigma={sigma} q={q} steps={steps} delta={delta}: eps {e:?}, delta {d:?}");
        assert!(d.upper <= delta, "{at}");
        assert!(d.upper >= 0.95 * delta, "{at}");
        // And back: `delta` runs on a grid twice as fine, so its delta is a little smaller (a
        // few per cent at most), and `epsilon` at that smaller delta a little larger.
        let back = acc.epsilon(&h, d.upper).unwrap().bounds;
        assert!(back.upper <= e.upper * (1.0 + 2e-3), "{at}: back {back:?}");
    }
}

struct Row {
    history: Vec<StepGroup>,
    delta: f64,
    eps_pld: f64,
    eps_lower: Option<f64>,
}

fn reference_rows() -> Vec<Row> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tails_reference.csv");
    let mut reader = csv::ReaderBuilder::new().comment(Some(b'#')).from_path(path).unwrap();
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap_or_else(|| panic!("column {name}"));
    let (ih, id, ip, io, il) = (col("history"), col("delta"), col("eps_pld"), col("eps_pld_optimistic"), col("eps_prv_lower"));
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            let history = r[ih]
                .split(';')
                .map(|job| {
                    let f: Vec<&str> = job.split(':').collect();
                    StepGroup { sample_rate: f[0].parse().unwrap(), noise_multiplier: f[1].parse().unwrap(), steps: f[2].parse().unwrap() }
                })
                .collect();
            let optimistic: Option<f64> = r[io].parse().ok();
            let prv_lower: Option<f64> = r[il].parse().ok();
            // The reference lower bound: the larger of dp_accounting's optimistic estimate and
            // prv_accountant's lower bound, where they ran.
            let eps_lower = match (optimistic, prv_lower) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            Row { history, delta: r[id].parse().unwrap(), eps_pld: r[ip].parse().unwrap(), eps_lower }
        })
        .collect()
}

/// Single jobs of 10^4 to 10^6 steps and ledgers of 10 and 20 jobs, at delta 1e-5, 1e-8 and
/// 1e-10: the guarantee is within 0.5 % of dp_accounting's PLD and never below the reference
/// lower bound.
#[test]
fn certified_upper_against_dp_accounting_at_tiny_delta_and_long_ledgers() {
    let acc = PldAccountant::default();
    let rows = reference_rows();
    assert!(rows.len() >= 30, "{} rows", rows.len());
    let mut worst = (0.0f64, String::new());
    for r in rows {
        let h = History::from_groups(r.history.iter().copied()).unwrap();
        let at = format!("{} jobs, {} steps, delta {}", r.history.len(), h.total_steps(), r.delta);
        let c = acc.epsilon(&h, r.delta).unwrap_or_else(|e| panic!("{at}: {e}"));
        let b = c.bounds;
        assert!(b.lower <= b.estimate && b.estimate <= b.upper, "{at}: {b:?}");
        assert!(b.upper <= r.eps_pld * 1.005, "{at}: {b:?} vs dp_accounting {}", r.eps_pld);
        if let Some(lower) = r.eps_lower {
            assert!(b.upper >= lower * (1.0 - 1e-6), "{at}: {b:?} below the reference lower bound {lower}");
        }
        let excess = b.upper / r.eps_pld - 1.0;
        if excess > worst.0 {
            worst = (excess, at);
        }
    }
    eprintln!("largest excess over dp_accounting: {:+.4} % ({})", 100.0 * worst.0, worst.1);
}

/// A ledger of hundreds of distinct jobs (each with its own calibrated sigma) is composed as a
/// dominating history on a fine grid instead of being refused: its guarantee lies between those
/// of the same steps all at the smallest and all at the largest sigma, and says how coarse.
#[test]
fn a_ledger_of_hundreds_of_distinct_jobs_is_bounded_not_refused() {
    let acc = PldAccountant::default();
    let jobs: Vec<StepGroup> = (0..300).map(|i| StepGroup { noise_multiplier: 1.0 + 1e-4 * i as f64, sample_rate: 0.01, steps: 300 }).collect();
    let ledger = History::from_groups(jobs.iter().copied()).unwrap();
    let c = acc.epsilon(&ledger, 1e-8).unwrap();
    assert!(c.coarsening > 0.0 && c.coarsening < 0.01, "{c:?}");
    assert_eq!(c.bounds.lower, 0.0, "no lower bound is claimed for a coarsened history");
    let most_noise = acc.epsilon(&History::homogeneous(1.0299, 0.01, 90_000).unwrap(), 1e-8).unwrap().bounds;
    let least_noise = acc.epsilon(&History::homogeneous(1.0, 0.01, 90_000).unwrap(), 1e-8).unwrap().bounds;
    assert!(c.bounds.upper >= most_noise.estimate && c.bounds.upper <= least_noise.upper, "{c:?} vs [{most_noise:?}, {least_noise:?}]");
    // The grid is as fine as the budget allows: within 0.5 % of the middle of the bracket.
    let middle = acc.epsilon(&History::homogeneous(1.01495, 0.01, 90_000).unwrap(), 1e-8).unwrap().bounds;
    assert!(c.bounds.upper <= middle.upper * 1.005, "{c:?} vs {middle:?}");
}

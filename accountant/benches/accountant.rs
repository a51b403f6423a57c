//! Accountant speed: wall time of one certified (PLD) epsilon (composed afresh, not memoised),
//! one Edgeworth epsilon after the cumulants are cached, and one RDP epsilon, for 10^2 to 10^6
//! steps and at delta down to 1e-10, plus the anchor settings of the EW-Tune comparison. Prints
//! one JSON object per line (medians over repeats), then the worst cases the work caps allow
//! (lines with `"worst"`): the longest accepted calls and the time to refuse one just beyond.
//! Run: `cargo bench -p ewtune-accountant --bench accountant` (benches/accountant_compare.sh
//! adds the Python libraries side by side).

use ewtune_accountant::edgeworth::{self, Order};
use ewtune_accountant::pld::PldAccountant;
use ewtune_accountant::{rdp, History};
use std::time::Instant;

fn median_secs(repeats: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..repeats)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[repeats / 2]
}

fn bench(q: f64, sigma: f64, steps: u64, delta: f64) {
    let history = History::homogeneous(sigma, q, steps).unwrap();
    let acc = PldAccountant::default();
    let t = Instant::now();
    let first = acc.epsilon_uncached(&history, delta).unwrap(); // includes the cumulant quadrature
    let certified_cold_s = t.elapsed().as_secs_f64();
    let repeats = if steps >= 1_000_000 { 3 } else { 11 };
    let certified_s = median_secs(repeats, || {
        acc.epsilon_uncached(&history, delta).unwrap();
    });
    let edgeworth_s = median_secs(2001, || {
        edgeworth::epsilon(&history, delta, Order::DEFAULT).unwrap();
    });
    let ew = edgeworth::epsilon(&history, delta, Order::DEFAULT).unwrap();
    let rdp_s = median_secs(5, || {
        rdp::epsilon(&history, delta).unwrap();
    });
    println!(
        "{{\"q\": {q}, \"sigma\": {sigma}, \"steps\": {steps}, \"delta\": {delta:e}, \"certified_upper\": {:.6}, \"edgeworth\": {:.6}, \
         \"certified_s\": {certified_s:.6}, \"certified_cold_s\": {certified_cold_s:.6}, \"edgeworth_us\": {:.2}, \"rdp_s\": {rdp_s:.6}, \
         \"fft_len\": {}, \"value_discretization\": {:e}}}",
        first.bounds.upper,
        ew.estimate,
        edgeworth_s * 1e6,
        first.fft_len,
        first.value_discretization
    );
}

fn main() {
    // A scaling series at one realistic setting.
    for steps in [100, 1_000, 10_000, 100_000, 1_000_000] {
        bench(0.001, 1.0, steps, 1e-5);
    }
    // Three settings of the reference grid on which the Python libraries were timed too
    // (docs/accounting.md, "How it was checked").
    bench(0.01, 1.0, 1_000, 1e-5);
    bench(0.004, 0.8, 10_000, 1e-5);
    bench(0.1, 2.0, 100, 1e-6);
    bench(0.01, 1.0, 10_000, 1e-5);
    // Tiny delta on long histories.
    bench(0.0405, 3.6955, 112_343, 1e-8);
    bench(0.004, 1.0, 1_000_000, 1e-10);
    worst_cases();
}

/// The slowest calls the work caps accept, and refusals just beyond them (one run each).
fn worst_cases() {
    let acc = PldAccountant::default();
    let once = |what: &str, f: &dyn Fn() -> String| {
        let t = Instant::now();
        let out = f();
        println!("{{\"worst\": \"{what}\", \"s\": {:.3}, \"result\": \"{out}\"}}", t.elapsed().as_secs_f64());
    };
    let show = |r: ewtune_accountant::Result<f64>| match r {
        Ok(x) => format!("{x:.6}"),
        Err(e) => e.to_string().replace('"', "'"),
    };
    // One group, FFT near its cap (2^21).
    once("one job, 10^6 steps, q 0.01, sigma 0.8, delta 1e-10", &|| {
        show(acc.epsilon_uncached(&History::homogeneous(0.8, 0.01, 1_000_000).unwrap(), 1e-10).map(|c| c.bounds.upper))
    });
    // A 20-job ledger of ~10^6 steps near the composition cap (2^24 FFT points).
    let ledger = History::from_groups((0..20u64).map(|i| ewtune_accountant::StepGroup {
        noise_multiplier: 0.7 + 0.17 * i as f64,
        sample_rate: 0.001 + 0.0025 * i as f64,
        steps: 20_000 + 5_000 * i,
    }))
    .unwrap();
    once("20-job ledger, 1.35e6 steps, delta 1e-10", &|| show(acc.epsilon_uncached(&ledger, 1e-10).map(|c| c.bounds.upper)));
    once("delta of the same ledger at epsilon 60", &|| show(acc.delta(&ledger, 60.0).map(|d| d.upper)));
    once("refused: 10^9 steps at epsilon ~1", &|| {
        show(acc.epsilon_uncached(&History::homogeneous(1180.0, 0.01, 1_000_000_000).unwrap(), 1e-5).map(|c| c.bounds.upper))
    });
    once("calibration, 10^6 steps, epsilon 1, delta 1e-10", &|| {
        show(ewtune_accountant::calibrate::noise_multiplier(1.0, 1e-10, 0.01, 1_000_000).map(|c| c.sigma))
    });
    once("refused calibration: 10^9 steps", &|| show(ewtune_accountant::calibrate::noise_multiplier(1.0, 1e-5, 0.01, 1_000_000_000).map(|c| c.sigma)));
}

//! Accountant speed: wall time of one certified (PLD) epsilon, one Edgeworth epsilon after the
//! cumulants are cached, and one RDP epsilon, for 10^2 to 10^6 steps, plus the anchor settings
//! of `research/edgeworth.md` §8.3. Prints one JSON object per line (medians over repeats).
//! Run: `cargo bench -p ewtune-accountant --bench accountant` (benches/accountant.sh adds the
//! Python libraries side by side).

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
    let first = acc.epsilon(&history, delta).unwrap(); // includes the cumulant quadrature
    let certified_cold_s = t.elapsed().as_secs_f64();
    let repeats = if steps >= 1_000_000 { 3 } else { 11 };
    let certified_s = median_secs(repeats, || {
        acc.epsilon(&history, delta).unwrap();
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
    // The anchors of research/edgeworth.md §8.3 (the Python libraries are timed on these too).
    bench(0.01, 1.0, 1_000, 1e-5);
    bench(0.004, 0.8, 10_000, 1e-5);
    bench(0.1, 2.0, 100, 1e-6);
    bench(0.01, 1.0, 10_000, 1e-5);
}

//! Every row of the reference grid in tests/data/accountant_reference.csv (made by
//! scripts/reference/accountant_reference.py at the repository root; dp_accounting 0.6.0 PLD
//! at value_discretization_interval 1e-4, prv_accountant 0.2.0, and an independent Python
//! Edgeworth implementation; docs/accounting.md, "How it was checked"), checked against this crate's three accountants with the issue's
//! tolerances.

use ewtune_accountant::edgeworth::{self, Order};
use ewtune_accountant::pld::PldAccountant;
use ewtune_accountant::{rdp, History};

struct Row {
    q: f64,
    sigma: f64,
    steps: u64,
    delta: f64,
    eps_pld: f64,
    eps_rdp: f64,
    eps_ew1: f64,
    eps_ew2: f64,
}

fn parse(v: &str) -> f64 {
    if v == "inf" { f64::INFINITY } else { v.parse().unwrap() }
}

fn rows() -> Vec<Row> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/accountant_reference.csv");
    let mut reader = csv::Reader::from_path(path).unwrap();
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (iq, is, it, id) = (col("q"), col("sigma"), col("steps"), col("delta"));
    let (ip, ir, i1, i2) = (col("eps_pld"), col("eps_rdp"), col("eps_ew1"), col("eps_ew2"));
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            Row {
                q: parse(&r[iq]),
                sigma: parse(&r[is]),
                steps: r[it].parse().unwrap(),
                delta: parse(&r[id]),
                eps_pld: parse(&r[ip]),
                eps_rdp: parse(&r[ir]),
                eps_ew1: parse(&r[i1]),
                eps_ew2: parse(&r[i2]),
            }
        })
        .collect()
}

fn close(got: f64, want: f64, rel: f64) -> bool {
    if want.is_infinite() {
        return got.is_infinite();
    }
    // The CSV prints 6 significant digits; zeros are compared absolutely.
    (got - want).abs() <= rel * want.abs() + 5e-7 * want.abs().max(1e-6)
}

#[test]
fn certified_upper_against_dp_accounting_pld() {
    let acc = PldAccountant::default();
    let mut worst = (0.0f64, String::new());
    for r in rows() {
        let h = History::homogeneous(r.sigma, r.q, r.steps).unwrap();
        let c = acc.epsilon(&h, r.delta).unwrap();
        let b = c.bounds;
        let stated_error = b.upper - b.lower;
        let where_ = format!("q={} sigma={} steps={} delta={}: {b:?} vs eps_pld {}", r.q, r.sigma, r.steps, r.delta, r.eps_pld);
        assert!(b.lower <= b.estimate && b.estimate <= b.upper, "{where_}");
        assert!(b.upper >= r.eps_pld - stated_error, "{where_}");
        assert!(b.upper <= r.eps_pld * 1.005 + 1e-6, "{where_}");
        // Independent routes: RDP is a valid (looser) bound, so the certified estimate sits below it.
        assert!(b.estimate <= r.eps_rdp * (1.0 + 1e-3), "{where_}: rdp {}", r.eps_rdp);
        let over = b.upper / r.eps_pld - 1.0;
        if over > worst.0 {
            worst = (over, where_);
        }
    }
    eprintln!("largest certified upper over eps_pld: {:+.4}% at {}", 100.0 * worst.0, worst.1);
}

#[test]
fn edgeworth_orders_1_and_2_match_reference() {
    for r in rows() {
        let h = History::homogeneous(r.sigma, r.q, r.steps).unwrap();
        for (order, want) in [(1, r.eps_ew1), (2, r.eps_ew2)] {
            let got = edgeworth::epsilon(&h, r.delta, Order::new(order).unwrap()).unwrap().estimate;
            assert!(close(got, want, 1e-3), "order {order} q={} sigma={} steps={}: {got} vs {want}", r.q, r.sigma, r.steps);
        }
    }
}

/// The same method at dp_accounting's grid (value_discretization_interval 1e-4) lands on its
/// number: an independent implementation of connect-the-dots agreeing to 0.05 %.
#[test]
fn fixed_grid_reproduces_dp_accounting_pld() {
    let acc = PldAccountant::with_interval(1e-4).unwrap();
    for r in rows().into_iter().filter(|r| r.steps <= 1000 && r.eps_pld < 20.0) {
        let h = History::homogeneous(r.sigma, r.q, r.steps).unwrap();
        let e = acc.epsilon(&h, r.delta).unwrap().bounds.estimate;
        assert!((e / r.eps_pld - 1.0).abs() < 5e-4 + 2e-6 / r.eps_pld, "q={} sigma={} steps={}: {e} vs {}", r.q, r.sigma, r.steps, r.eps_pld);
    }
}

/// Where the Edgeworth small parameters are small (|lambda3| <= 0.1, |lambda4| <= 0.05), the
/// estimate and the certified value agree to a few percent (docs/accounting.md, "Why it is only an estimate").
#[test]
fn edgeworth_agrees_with_certified_where_the_expansion_is_valid() {
    let acc = PldAccountant::default();
    let mut checked = 0;
    for r in rows() {
        let h = History::homogeneous(r.sigma, r.q, r.steps).unwrap();
        let ew = edgeworth::epsilon(&h, r.delta, Order::DEFAULT).unwrap();
        if ew.lambda3_sum.abs() > 0.1 || ew.lambda4_sum.abs() > 0.05 || !ew.estimate.is_finite() {
            continue;
        }
        let c = acc.epsilon(&h, r.delta).unwrap().bounds.estimate;
        assert!((ew.estimate / c - 1.0).abs() < 0.05, "q={} sigma={} steps={}: EW {} vs certified {c}", r.q, r.sigma, r.steps, ew.estimate);
        checked += 1;
    }
    assert!(checked > 30, "{checked}");
}

#[test]
fn rdp_matches_dp_accounting() {
    for r in rows() {
        let h = History::homogeneous(r.sigma, r.q, r.steps).unwrap();
        let got = rdp::epsilon(&h, r.delta).unwrap().epsilon;
        assert!(close(got, r.eps_rdp, 1e-3), "q={} sigma={} steps={}: {got} vs {}", r.q, r.sigma, r.steps, r.eps_rdp);
    }
}

/// Points beyond the shared file, computed here with dp_accounting 0.6.0 by
/// scripts/reference/dp_accounting_extra.py at the repository root: the delta = 1e-6 half of the
/// grid (less the rows that take dp_accounting minutes) and two heterogeneous histories.
fn extra_rows() -> Vec<(History, f64, f64, f64)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/dp_accounting_extra.csv");
    let mut reader = csv::Reader::from_path(path).unwrap();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            let groups = r[0].split(';').map(|g| {
                let v: Vec<&str> = g.split(':').collect();
                ewtune_accountant::StepGroup { sample_rate: parse(v[0]), noise_multiplier: parse(v[1]), steps: v[2].parse().unwrap() }
            });
            (History::from_groups(groups).unwrap(), parse(&r[1]), parse(&r[2]), parse(&r[3]))
        })
        .collect()
}

#[test]
fn certified_and_rdp_on_points_beyond_the_shared_file() {
    let acc = PldAccountant::default();
    let rows = extra_rows();
    assert!(rows.len() > 80);
    for (history, delta, eps_pld, eps_rdp) in rows {
        let b = acc.epsilon(&history, delta).unwrap().bounds;
        let where_ = format!("{:?} delta={delta}: {b:?} vs eps_pld {eps_pld}", history.groups());
        assert!(b.upper >= eps_pld - (b.upper - b.lower), "{where_}");
        assert!(b.upper <= eps_pld * 1.005 + 1e-6, "{where_}");
        let r = rdp::epsilon(&history, delta).unwrap().epsilon;
        assert!(close(r, eps_rdp, 1e-3), "{where_}: rdp {r} vs {eps_rdp}");
    }
}

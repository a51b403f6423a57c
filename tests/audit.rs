//! The membership audit on the shared fixture (transformers reference scores) and end to end on
//! small models the tests train.

use crate::util::fixture;
use ewtune::audit::logprobs::token_stats;
use ewtune::train::model::Model;
use tch::Device;

#[derive(serde::Deserialize)]
struct Reference {
    ids: Vec<i64>,
    token_logprobs: Vec<f64>,
}

fn references() -> Vec<Reference> {
    std::fs::read_to_string(fixture("audit").join("reference_scores.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// §7.3 layers 2 and 3: batched scoring equals transformers' per-token log-probs to 1e-4 and
/// the unbatched scoring to 1e-5.
#[test]
fn batched_logprobs_match_reference_and_unbatched() {
    let model = Model::load_output(&fixture("audit"), Device::Cpu).unwrap();
    let refs = references();
    let seqs: Vec<Vec<i64>> = refs.iter().map(|r| r.ids.clone()).collect();
    let batched = token_stats(&model, &seqs, 64, 16, Device::Cpu);
    let single = token_stats(&model, &seqs, 64, 1, Device::Cpu);
    for ((b, s), r) in batched.iter().zip(&single).zip(&refs) {
        assert_eq!(b.logprobs.len(), r.token_logprobs.len());
        for ((x, y), z) in b.logprobs.iter().zip(&s.logprobs).zip(&r.token_logprobs) {
            assert!((x - z).abs() < 1e-4, "{x} vs transformers {z}");
            assert!((x - y).abs() < 1e-5, "batched {x} vs unbatched {y}");
        }
        for (m, v) in b.mu.iter().zip(&b.sigma2) {
            assert!(*m <= 0.0 && *v >= 0.0);
        }
    }
}

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

/// Batched scoring equals transformers' per-token log-probs to 1e-4 and the unbatched scoring
/// to 1e-5 (docs/audit.md, Token log-probabilities).
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

use ewtune::audit::canary::audit_canaries;
use ewtune::train::canaries::{draw, CanarySpec};
use ewtune::audit::texts::{audit_texts, LabeledText};
use ewtune::train::data::Dataset;
use ewtune::train::dpsgd::nonprivate_backward;
use ewtune::train::finetune::FineTune;
use ewtune::train::optim::{Optimizer, OptimizerKind, Schedule};

/// Every score of every fixture text equals the transformers reference to 1e-4, and the AUCs
/// equal the reference AUCs exactly (docs/audit.md, Scores and Metrics).
#[test]
fn fixture_scores_and_aucs_match_reference() {
    let dir = fixture("audit");
    let target = Model::load_output(&dir, Device::Cpu).unwrap();
    let base = Model::load_output(&dir.join("base"), Device::Cpu).unwrap();
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let texts: Vec<LabeledText> = std::fs::read_to_string(dir.join("texts.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let audit = audit_texts(&target, Some(&base), &tok, &texts, 64, Device::Cpu, &ewtune::audit::logprobs::Scoring::silent()).unwrap();
    let refs: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("reference_scores.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (got, want) in audit.texts.iter().zip(&refs) {
        for (ours, theirs) in [("loss", "score_loss"), ("zlib", "score_zlib"), ("lowercase", "score_lowercase"), ("ref", "score_ref"),
                               ("min_k_20", "min_k_0.2"), ("min_k_pp_20", "min_k_pp_0.2"), ("min_k_10", "min_k_0.1"), ("min_k_50", "min_k_0.5")] {
            let (g, w) = (got.scores[ours], want[theirs].as_f64().unwrap_or(f64::NAN));
            assert!((g - w).abs() < 1e-4 || (g.is_nan() && w.is_nan()), "{}: {ours} {g} vs {w}", got.input);
        }
    }
    for (score, auc) in [("loss", 0.96875), ("zlib", 0.890625), ("lowercase", 0.90625), ("ref", 1.0), ("min_k_20", 0.828125), ("min_k_pp_20", 0.828125)] {
        assert_eq!(audit.metrics[score].auc, auc, "{score}");
    }
}

/// End to end without DP: a model fine-tuned on the inserted canaries leaks them, the AUC is
/// far above 1/2 and the one-run lower bound far above 0.
#[test]
fn nonprivate_training_leaks_canaries() {
    let base_dir = fixture("audit").join("base");
    // Seeded (reproducible test, not private): canaries and inclusion bits from a fixed stream.
    let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::seed_from_u64(1);
    let manifest = draw(&CanarySpec { count: 200, length: 20 }, 400, 1e-5, &mut rng).unwrap();
    let model = Model::load(&base_dir, &FineTune::Full, None, Device::Cpu).unwrap();
    let data = Dataset { units: manifest.training_units(), dropped_examples: 0, truncated_examples: 0 };
    let params: Vec<tch::Tensor> = model.trainable().into_iter().map(|(_, p)| p).collect();
    let mut opt = Optimizer::new(OptimizerKind::default(), 3e-3, Schedule::Constant, 1000, &params);
    let all: Vec<usize> = (0..data.len()).collect();
    for _epoch in 0..5 {
        for chunk in all.chunks(16) {
            nonprivate_backward(&model, &data.micro_batch(chunk, Device::Cpu)).unwrap();
            let grads: Vec<tch::Tensor> = params.iter().map(|p| p.grad()).collect();
            opt.apply(&params, &grads);
            for p in &params {
                let _ = p.grad().zero_();
            }
        }
    }
    let base = Model::load(&base_dir, &FineTune::Full, None, Device::Cpu).unwrap();
    let audit = audit_canaries(&manifest, "(seeded test draw)", &model, &base, None, Device::Cpu, &ewtune::audit::logprobs::Scoring::silent()).unwrap();
    let auc = audit.metrics["ref"].auc;
    eprintln!("non-private: canary AUC {auc:.4}, eps_lb {:.4} (k+ {}, {}/{}), ceiling {:.3}, classic (heuristic) {:.3}", audit.best.eps_lb, audit.best.k_plus, audit.best.v, audit.best.r, audit.eps_ceiling_for_m, audit.eps_classic_heuristic);
    assert!(auc > 0.9, "{audit:?}");
    assert!(audit.best.eps_lb > 1.0, "{audit:?}");
    assert!(audit.best.eps_lb <= audit.eps_ceiling_for_m);
    assert!(audit.eps_classic_heuristic > 0.0 && audit.eps_classic_heuristic.is_finite(), "{audit:?}");
    assert_eq!(audit.grid_size, audit.grid.len());
    assert!(!audit.violation);
}

/// End to end with DP at epsilon 1: the job inserts canaries (counted in N), and the audited
/// lower bound stays at or below the certified epsilon.
#[test]
fn dp_training_at_epsilon_one_stays_below_its_claim() {
    use ewtune::train::job::{self, DeviceChoice, JobSpec, PrivacySpec, TrainingSpec};
    use ewtune::train::synthetic::write_notes;
    let root = tempfile::tempdir().unwrap();
    let base_dir = fixture("audit").join("base");
    write_notes(&root.path().join("train.jsonl"), 400, 0, 5).unwrap();
    let spec = JobSpec {
        model: base_dir.clone(),
        data: root.path().join("train.jsonl"),
        output: root.path().join("out"),
        eval_data: None,
        finetune: FineTune::Full,
        privacy: PrivacySpec { epsilon: Some(1.0), noise_multiplier: None, delta: 1e-5, clip_norm: 1.0 },
        training: TrainingSpec { batch_size: 50, epochs: 3.0, micro_batch: 50, learning_rate: 3e-3, checkpoint_every: 100, ..TrainingSpec::default() },
        data_config: ewtune::train::data::DataConfig { max_length: 40, ..Default::default() },
        device: DeviceChoice::Cpu,
        expected_units: None,
        canaries: Some(CanarySpec { count: 200, length: 20 }),
        precision: None,
        self_audit: None,
    };
    let out = job::run(&spec, &std::sync::atomic::AtomicBool::new(false), |_| {}).unwrap();
    let bytes = std::fs::read(spec.output.join("audit_manifest.json")).unwrap();
    let manifest: ewtune::train::canaries::Manifest = serde_json::from_slice(&bytes).unwrap();
    let inserted = manifest.included.iter().filter(|&&s| s).count();
    assert_eq!(out.plan.units, 400 + inserted, "canaries count in N");
    let target = Model::load_output(&out.output_model, Device::Cpu).unwrap();
    let base = Model::load_output(&base_dir, Device::Cpu).unwrap();
    let audit = audit_canaries(&manifest, &ewtune::digest::sha256_hex(&bytes), &target, &base, Some(out.epsilon_spent), Device::Cpu, &ewtune::audit::logprobs::Scoring::silent()).unwrap();
    eprintln!("DP eps {:.4}: canary AUC {:.4}, eps_lb {:.4}", out.epsilon_spent, audit.metrics["ref"].auc, audit.best.eps_lb);
    assert!(out.epsilon_spent <= 1.0);
    assert!(audit.best.eps_lb <= out.epsilon_spent && !audit.violation, "{audit:?}");
}

/// `ewtune score` as an operator runs it: the JSON shape, the report signed with
/// `--sign-key` verifies with `ewtune verify` and a tampered copy does not, and a missing model
/// is a named error with exit code 2.
#[test]
fn audit_cli_prints_the_json_shape_and_signs_it() {
    use std::process::Command;
    let dir = fixture("audit");
    let tmp = tempfile::tempdir().unwrap();
    let ewtune = env!("CARGO_BIN_EXE_ewtune");
    let (base, texts) = (dir.join("base"), dir.join("texts.jsonl"));
    let args = ["score", "--model", dir.to_str().unwrap(), "--base", base.to_str().unwrap(), "--texts", texts.to_str().unwrap(), "--device", "cpu"];
    let key = tmp.path().join("operator.pk8");
    let out = Command::new(ewtune).args(args).args(["--sign-key", key.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let signed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let report: serde_json::Value = serde_json::from_str(signed["report_json"].as_str().unwrap()).unwrap();
    let first = &report["texts"][0];
    assert!(first["input"].is_string() && first["label"].is_i64() && first["token_logprobs"].as_array().is_some_and(|a| !a.is_empty()));
    for score in ["min_k_20", "min_k_pp_20", "loss", "zlib", "ref"] {
        assert!(first["scores"][score].is_f64(), "{score}");
        assert!(report["metrics"][score]["auc"].is_f64() && report["metrics"][score]["tpr_at_1pct_fpr"].is_f64(), "{score}");
    }
    assert_eq!(report["metrics"]["ref"]["auc"], 1.0);
    let file = tmp.path().join("audit.json");
    std::fs::write(&file, &out.stdout).unwrap();
    // Intact but unpinned is exit 3; pinned to the operator's key (the one in the output), 0.
    let unpinned = Command::new(ewtune).args(["verify", file.to_str().unwrap()]).output().unwrap();
    assert_eq!(unpinned.status.code(), Some(3), "{}", String::from_utf8_lossy(&unpinned.stderr));
    let operator_key = signed["public_key"].as_str().unwrap();
    let ok = Command::new(ewtune).args(["verify", file.to_str().unwrap(), "--public-key", operator_key]).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let tampered = String::from_utf8(out.stdout.clone()).unwrap().replacen("\\\"label\\\":0", "\\\"label\\\":1", 1);
    assert_ne!(tampered.as_bytes(), &out.stdout[..]);
    std::fs::write(&file, tampered).unwrap();
    let bad = Command::new(ewtune).args(["verify", file.to_str().unwrap()]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));

    // The multi-run form: one line per run.
    let runs = tmp.path().join("runs.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(&texts).unwrap().repeat(4).lines().map(|l| {
        let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
        v["model"] = serde_json::json!(dir);
        v.to_string()
    }).collect();
    std::fs::write(&runs, lines.join("\n")).unwrap();
    let out = Command::new(ewtune).args(["score", "--runs", runs.to_str().unwrap(), "--base", base.to_str().unwrap(), "--device", "cpu", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let multi: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(multi["n_runs"].as_u64(), Some(lines.len() as u64));
    assert!(multi["eps_lb"].as_f64().unwrap() > 0.0);

    let nope = tmp.path().join("nope");
    let missing = Command::new(ewtune).args(["audit", "--model", nope.to_str().unwrap(), "--texts", texts.to_str().unwrap()]).output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope"), "{}", String::from_utf8_lossy(&missing.stderr));
    // The old name still runs, saying the new one (`audit` was one letter from `audits`).
    assert!(String::from_utf8_lossy(&missing.stderr).contains("`ewtune audit` is now `ewtune score`"), "{}", String::from_utf8_lossy(&missing.stderr));
}

/// The multi-run audit (docs/audit.md, The one-run lower bound): each "run" scores its own target once; the scores equal the batched
/// text audit's `ref` scores, and with the fixture's perfect separation the bound is the classic
/// bound at the all-correct threshold. One-class input and bad labels are named errors.
#[test]
fn multi_run_classic_bound_matches_its_parts() {
    use ewtune::stats::bounds::{eps_classic, Confusion};
    use ewtune::audit::runs::{audit_runs, RunTarget};
    let dir = fixture("audit");
    let texts: Vec<LabeledText> = std::fs::read_to_string(dir.join("texts.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // Each text four times: enough decisions for a bound above 0 (the mechanics; these "runs"
    // share one model, so this is not itself a valid audit).
    let runs: Vec<RunTarget> = texts.iter().cycle().take(4 * texts.len()).map(|t| RunTarget { model: dir.clone(), input: t.input.clone(), label: t.label }).collect();
    let audit = audit_runs(&runs, Some(&dir.join("base")), 1e-5, 0.05, Some(0.5), Device::Cpu).unwrap();
    let target = Model::load_output(&dir, Device::Cpu).unwrap();
    let base = Model::load_output(&dir.join("base"), Device::Cpu).unwrap();
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let batched = audit_texts(&target, Some(&base), &tok, &texts, 64, Device::Cpu, &ewtune::audit::logprobs::Scoring::silent()).unwrap();
    for (s, t) in audit.scores.iter().zip(batched.texts.iter().cycle()) {
        assert!((s - t.scores["ref"]).abs() < 1e-5, "{s} vs {}", t.scores["ref"]);
    }
    assert_eq!((audit.score, audit.auc), ("ref", 1.0));
    let (p, n) = (audit.n_members as u64, (audit.n_runs - audit.n_members) as u64);
    let perfect = eps_classic(Confusion { tp: p, fp: 0, fn_: 0, tn: n }, 1e-5, 0.05 / audit.thresholds as f64).unwrap().eps_lb;
    assert!(audit.eps_lb >= perfect - 1e-12 && audit.eps_lb > 0.0, "{} vs {perfect}", audit.eps_lb);
    assert_eq!(audit.violation, audit.eps_lb > 0.5);
    let members_only: Vec<RunTarget> = runs.iter().filter(|r| r.label == 1).cloned().collect();
    assert!(audit_runs(&members_only, None, 1e-5, 0.05, None, Device::Cpu).unwrap_err().to_string().contains("did not"));
    let mut bad = runs.clone();
    bad[2].label = 3;
    assert!(audit_runs(&bad, None, 1e-5, 0.05, None, Device::Cpu).unwrap_err().to_string().contains("run 3"));
}

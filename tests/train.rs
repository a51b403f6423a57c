//! The training engine end to end on tiny models the tests make: DP fine-tuning lowers held-out
//! loss, every trainable tensor moves and no frozen one does, checkpoints round-trip bit-exactly
//! and resume without double-counting privacy, and bad inputs fail with the culprit named.

use crate::util::fixture;
use ewtune::train::data::{DataConfig, Dataset};
use ewtune::train::finetune::FineTune;
use ewtune::train::job::{self, private_step, JobSpec, PrivacySpec, TrainingSpec};
use ewtune::train::model::Model;
use ewtune::train::optim::{Optimizer, OptimizerKind, Schedule};
use ewtune::train::synthetic::{write_model, write_notes, Family, Shape};
use ewtune::train::TrainError;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use tch::{Device, Tensor};

fn tiny(dir: &Path, family: Family) {
    let shape = Shape { vocab: 400, d_model: 32, layers: 2, heads: 2, kv_heads: 1, positions: 64 };
    write_model(dir, family, shape, 1, Some(&fixture("audit").join("tokenizer.json"))).unwrap();
}

fn spec(root: &Path, finetune: FineTune, epsilon: f64, steps: Option<u64>) -> JobSpec {
    JobSpec {
        model: root.join("base"),
        data: root.join("train.jsonl"),
        output: root.join("out"),
        eval_data: Some(root.join("eval.jsonl")),
        finetune,
        privacy: PrivacySpec { epsilon: Some(epsilon), noise_multiplier: None, delta: 1e-5, clip_norm: 1.0 },
        training: TrainingSpec {
            batch_size: 64,
            epochs: 4.0,
            steps,
            micro_batch: 32,
            learning_rate: 3e-3,
            optimizer: OptimizerKind::default(),
            schedule: Schedule::Constant,
            checkpoint_every: 5,
            init_seed: 0,
        },
        data_config: DataConfig { max_length: 40, ..DataConfig::default() },
        device: job::DeviceChoice::Cpu,
        expected_units: None,
        canaries: None,
        precision: None,
        self_audit: None,
    }
}

pub fn setup(family: Family) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    tiny(&root.path().join("base"), family);
    write_notes(&root.path().join("train.jsonl"), 600, 0, 1).unwrap();
    write_notes(&root.path().join("eval.jsonl"), 100, 0, 2).unwrap();
    root
}

#[test]
fn dp_finetuning_lowers_heldout_loss() {
    let root = setup(Family::Gpt2);
    let s = spec(root.path(), FineTune::Full, 8.0, None);
    let out = job::run(&s, &AtomicBool::new(false), |_| {}).unwrap();
    let (before, after) = out.eval_loss.unwrap();
    assert!(out.epsilon_spent <= 8.0 && out.epsilon_spent > 4.0, "{out:?}");
    assert!(after < before - 0.5, "held-out loss {before} -> {after}");
    assert!(out.output_model.join("model.safetensors").exists());
    // The written model loads back and scores the same held-out loss.
    let m = Model::load(&out.output_model, &FineTune::Full, None, Device::Cpu).unwrap();
    let tok = tokenizers::Tokenizer::from_file(out.output_model.join("tokenizer.json")).unwrap();
    let eval = Dataset::load(&s.eval_data.clone().unwrap(), &tok, &s.data_config, 400).unwrap();
    let reloaded = job::evaluate(&m, &eval, 32, Device::Cpu);
    assert!((reloaded - after).abs() < 1e-5, "{reloaded} vs {after}");
}

#[test]
fn lora_finetuning_writes_a_peft_adapter_and_lowers_loss() {
    let root = setup(Family::Llama);
    let ft = FineTune::lora(8, 16.0, vec!["q_proj".into(), "v_proj".into(), "up_proj".into(), "down_proj".into()]);
    let mut s = spec(root.path(), ft, 8.0, None);
    s.training.learning_rate = 1e-2;
    let out = job::run(&s, &AtomicBool::new(false), |_| {}).unwrap();
    let (before, after) = out.eval_loss.unwrap();
    assert!(after < before - 0.1, "held-out loss {before} -> {after}");
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.output_model.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 8);
    let names: Vec<String> = Tensor::read_safetensors(out.output_model.join("adapter_model.safetensors")).unwrap().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".to_string()), "{names:?}");
    assert_eq!(names.len(), 2 * 4 * 2, "A and B for 4 modules x 2 layers");
}

fn snapshot(pairs: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    pairs.into_iter().map(|(n, t)| (n, t.detach().copy())).collect()
}

#[test]
fn one_step_moves_every_trainable_tensor_and_no_frozen_one() {
    for (family, ft) in [
        (Family::Gpt2, FineTune::Full),
        (Family::Gpt2, FineTune::lora(4, 8.0, vec![])),
        (Family::Llama, FineTune::Full),
        (Family::Llama, FineTune::lora(4, 8.0, vec![])),
    ] {
        let root = setup(family);
        let model = Model::load(&root.path().join("base"), &ft, None, Device::Cpu).unwrap();
        let tok = tokenizers::Tokenizer::from_file(root.path().join("base/tokenizer.json")).unwrap();
        let data = Dataset::load(&root.path().join("train.jsonl"), &tok, &DataConfig::default(), 400).unwrap();
        let (trainable, frozen) = (snapshot(model.trainable()), snapshot(model.frozen()));
        assert!(!trainable.is_empty() && !frozen.is_empty());
        let params: Vec<Tensor> = model.trainable().into_iter().map(|(_, p)| p).collect();
        let mut opt = Optimizer::new(OptimizerKind::Sgd { momentum: 0.0 }, 0.1, Schedule::Constant, 1, &params);
        let numel: usize = params.iter().map(|p| p.numel()).sum();
        let mut noise = vec![0f32; numel];
        ewtune::train::noise::NoiseSource::seeded_for_tests(5).fill_gaussian(1.0, &mut noise);
        let privacy = PrivacySpec { epsilon: None, noise_multiplier: Some(1.0), delta: 1e-5, clip_norm: 1.0 };
        private_step(&model, &data, &[0, 3, 9, 20], &privacy, 2, &noise, 4.0, &mut opt, &params, Device::Cpu, None).unwrap();
        for ((name, before), (_, after)) in trainable.iter().zip(model.trainable()) {
            assert!(before.ne_tensor(&after).any().int64_value(&[]) == 1, "{family:?} {ft:?}: trainable {name} did not move");
        }
        for ((name, before), (_, after)) in frozen.iter().zip(model.frozen()) {
            assert!(before.equal(&after), "{family:?} {ft:?}: frozen {name} moved");
            assert!(!after.grad().defined(), "{family:?} {ft:?}: frozen {name} got a gradient");
        }
    }
}

#[test]
fn checkpoints_round_trip_and_resume_without_double_counting() {
    let root = setup(Family::Gpt2);
    let s = spec(root.path(), FineTune::lora(4, 8.0, vec![]), 8.0, Some(12));
    let cancel = AtomicBool::new(false);
    // Stop after step 7: the loop checkpoints the steps it ran (7), not the last periodic one (5).
    let first = job::run(&s, &cancel, |p| {
        if p.step == 7 {
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    })
    .unwrap();
    assert!(first.cancelled && first.steps_done == 7, "{first:?}");
    let ckpt = ewtune::train::checkpoint::load_latest(&s.output.join("checkpoints"), Device::Cpu).unwrap().unwrap();
    assert_eq!(ckpt.state.step, 7);
    assert_eq!(ckpt.state.history.total_steps(), 7);
    // Bit-exact: the saved tensors read back equal the model rebuilt from them.
    let saved: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&ckpt.trainable_path).unwrap().into_iter().collect();
    let model = Model::load(&s.model, &s.finetune, Some(&ckpt.trainable_path), Device::Cpu).unwrap();
    assert_eq!(saved.len(), model.trainable().len());
    for (name, t) in model.trainable() {
        assert!(saved[&name].equal(&t), "{name} differs after reload");
    }
    let mut steps_seen = Vec::new();
    let second = job::run(&s, &AtomicBool::new(false), |p| steps_seen.push(p.step)).unwrap();
    assert_eq!(steps_seen, (8..=12).collect::<Vec<u64>>());
    assert!(!second.cancelled && second.steps_done == 12);
    let whole = ewtune::accountant::History::homogeneous(second.plan.noise_multiplier, second.plan.sample_rate, 12).unwrap();
    let eps = ewtune::accountant::pld::PldAccountant::default().epsilon(&whole, 1e-5).unwrap().bounds.upper;
    assert!((second.epsilon_spent - eps).abs() < 1e-9, "resume composed {} vs 12 steps {eps}", second.epsilon_spent);
}

#[test]
fn corrupt_inputs_are_named_and_change_nothing() {
    let root = setup(Family::Gpt2);
    let s = spec(root.path(), FineTune::Full, 8.0, Some(3));
    job::run(&s, &AtomicBool::new(false), |_| {}).unwrap();
    // A truncated checkpoint named by LATEST is an error naming the file, not a silent restart.
    let ckpt_root = s.output.join("checkpoints");
    let latest = std::fs::read_to_string(ckpt_root.join("LATEST")).unwrap();
    let f = ckpt_root.join(latest.trim()).join("trainable.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let mut resumed = s.clone();
    resumed.training.steps = Some(6);
    match job::run(&resumed, &AtomicBool::new(false), |_| {}) {
        Err(TrainError::CorruptCheckpoint { path, .. }) => assert_eq!(path, f),
        other => panic!("expected a corrupt-checkpoint error, got {other:?}"),
    }
    // A malformed dataset line is named by number.
    let bad = root.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine line\"}\n{\"text\": 3}\n").unwrap();
    let tok = tokenizers::Tokenizer::from_file(root.path().join("base/tokenizer.json")).unwrap();
    match Dataset::load(&bad, &tok, &DataConfig::default(), 400) {
        Err(TrainError::BadDataset { line: 2, reason, .. }) => assert!(reason.contains("text"), "{reason}"),
        other => panic!("expected a bad-dataset error, got {other:?}"),
    }
    // A missing model is named.
    let mut nomodel = s.clone();
    nomodel.model = root.path().join("nowhere");
    assert!(matches!(job::run(&nomodel, &AtomicBool::new(false), |_| {}), Err(TrainError::CorruptCheckpoint { .. } | TrainError::MissingFile { .. })));
    // An impossible privacy target is refused before anything runs.
    let mut impossible = s.clone();
    impossible.output = root.path().join("out2");
    impossible.privacy.delta = 2.0;
    assert!(matches!(job::run(&impossible, &AtomicBool::new(false), |_| {}), Err(TrainError::Accountant(_))));
    assert!(!impossible.output.join("model").exists());
}

#[test]
fn prompt_completion_masks_and_user_units() {
    let root = tempfile::tempdir().unwrap();
    let tok = tokenizers::Tokenizer::from_file(fixture("audit").join("tokenizer.json")).unwrap();
    let path = root.path().join("pc.jsonl");
    std::fs::write(
        &path,
        concat!(
            "{\"prompt\": \"Q: fever?\", \"completion\": \" A: fluids.\", \"user\": \"ann\"}\n",
            "{\"prompt\": \"Q: rash?\", \"completion\": \" A: a cream.\", \"user\": \"bob\"}\n",
            "\n",
            "{\"prompt\": \"Q: cough?\", \"completion\": \" A: rest.\", \"user\": \"ann\"}\n",
        ),
    )
    .unwrap();
    let cfg = DataConfig { user_field: Some("user".into()), ..DataConfig::default() };
    let data = Dataset::load(&path, &tok, &cfg, 400).unwrap();
    assert_eq!(data.len(), 2, "two users");
    assert_eq!(data.units[0].len(), 2, "ann's two examples form one unit");
    let prompt_len = tok.encode("Q: fever?", false).unwrap().get_ids().len();
    let ex = &data.units[0][0];
    assert!(ex.loss_mask[..prompt_len].iter().all(|&m| m == 0), "no loss on the prompt");
    assert!(ex.loss_mask[prompt_len..].iter().all(|&m| m == 1), "loss on the completion and end-of-text");
    assert_eq!(*ex.ids.last().unwrap(), 0, "<|endoftext|> appended");
    // A micro-batch of both users pads to the longest row and groups ann's rows.
    let mb = data.micro_batch(&[0, 1], Device::Cpu);
    assert_eq!(mb.units.count, 2);
    assert_eq!(mb.ids.size()[0], 3);
    // Without the user field each line is its own unit; a missing field is named.
    let per_example = Dataset::load(&path, &tok, &DataConfig::default(), 400).unwrap();
    assert_eq!(per_example.len(), 3);
    std::fs::write(&path, "{\"prompt\": \"only a prompt\"}\n").unwrap();
    match Dataset::load(&path, &tok, &DataConfig::default(), 400) {
        Err(TrainError::BadDataset { line: 1, reason, .. }) => assert!(reason.contains("completion"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_family_trains_two_dp_steps_lora_and_full_and_reloads_what_it_wrote() {
    // Checkpoints transformers saved, one per family (sharded and bf16 included).
    let families = ["llama3-rope", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "gpt-neox", "gpt2-hub-layout", "llama-sharded", "llama-bf16"];
    for name in families {
        for ft in [FineTune::lora(4, 8.0, vec![]), FineTune::Full] {
            let root = tempfile::tempdir().unwrap();
            write_notes(&root.path().join("train.jsonl"), 200, 0, 1).unwrap();
            write_notes(&root.path().join("eval.jsonl"), 20, 0, 2).unwrap();
            let mut s = spec(root.path(), ft.clone(), 8.0, Some(2));
            s.model = fixture("models").join(name);
            s.training.batch_size = 16;
            s.training.micro_batch = 8;
            let out = job::run(&s, &AtomicBool::new(false), |_| {}).unwrap_or_else(|e| panic!("{name} {ft:?}: {e}"));
            assert_eq!(out.steps_done, 2, "{name}");
            let (before, after) = out.eval_loss.unwrap();
            assert!(before.is_finite() && after.is_finite() && before != after, "{name} {ft:?}: {before} -> {after}");
            let m = Model::load_output(&out.output_model, Device::Cpu).unwrap_or_else(|e| panic!("{name} {ft:?} reload: {e}"));
            let tok = tokenizers::Tokenizer::from_file(s.model.join("tokenizer.json")).unwrap();
            let eval = Dataset::load(&s.eval_data.clone().unwrap(), &tok, &s.data_config, m.vocab_size()).unwrap();
            let reloaded = job::evaluate(&m, &eval, 8, Device::Cpu);
            // A full fine-tune of a bf16 base is saved in bf16, as transformers would: the
            // trained f32 weights are rounded (2^-9 relative), which moves the loss slightly.
            let tolerance = if name.ends_with("bf16") && ft == FineTune::Full { 1e-2 } else { 1e-5 };
            assert!((reloaded - after).abs() < tolerance, "{name} {ft:?}: reloaded {reloaded} vs {after}");
        }
    }
}

/// Lines of 31 users in file order: `big` writes every other line (40 examples), `u0`..`u29`
/// one or two each; some texts are long enough to be cut at `max_length` 12.
fn user_lines(path: &Path) -> Vec<(String, String)> {
    let mut lines = Vec::new();
    for i in 0..80 {
        let user = if i % 2 == 0 { "big".to_string() } else { format!("u{}", (i / 2) % 30) };
        let text = if i % 5 == 0 { format!("note {i}: fever, cough and a rash; we advised fluids, rest and a cream on Monday") } else { format!("note {i}: fever") };
        lines.push((user, text));
    }
    let body: String = lines.iter().map(|(u, t)| format!("{}\n", serde_json::json!({ "user": u, "text": t }))).collect();
    std::fs::write(path, body).unwrap();
    lines
}

#[test]
fn every_example_of_a_user_is_in_their_unit_unless_a_cap_is_set() {
    let root = tempfile::tempdir().unwrap();
    let tok = tokenizers::Tokenizer::from_file(fixture("audit").join("tokenizer.json")).unwrap();
    let path = root.path().join("users.jsonl");
    let lines = user_lines(&path);
    let encode = |t: &str| tok.encode(t, false).unwrap().get_ids().iter().map(|&i| i64::from(i)).collect::<Vec<i64>>();
    let cfg = DataConfig { user_field: Some("user".into()), max_length: 12, ..DataConfig::default() };
    assert_eq!(cfg.max_examples_per_user, None, "no cap by default");
    let data = Dataset::load(&path, &tok, &cfg, 400).unwrap();
    let big: Vec<&(String, String)> = lines.iter().filter(|(u, _)| u == "big").collect();
    assert_eq!(data.units[0].len(), 40, "all 40 of big's examples are in big's unit");
    // +1 for the end-of-text token each example gets.
    let cut = lines.iter().filter(|(_, t)| encode(t).len() + 1 > 12).count();
    assert!(cut > 0 && cut < lines.len());
    let want = ewtune::train::data::DataCounts { examples: 80, units: 31, truncated_examples: cut, dropped_examples: 0 };
    assert_eq!(data.counts(), want);
    assert_eq!(ewtune::train::data::count(&path, &tok, &cfg, 400).unwrap(), want, "Plan's counting agrees with loading");

    // A cap keeps each user's first k examples in file order and counts the rest as dropped.
    let capped = DataConfig { max_examples_per_user: Some(3), ..cfg.clone() };
    let data = Dataset::load(&path, &tok, &capped, 400).unwrap();
    assert_eq!(data.units[0].len(), 3);
    for (ex, (_, text)) in data.units[0].iter().zip(&big) {
        let mut ids = encode(text);
        ids.push(0);
        ids.truncate(12);
        assert_eq!(ex.ids, ids, "big's first examples, in file order");
    }
    assert_eq!(data.len(), 31, "a cap changes no unit count");
    let mut seen = std::collections::HashMap::new();
    let kept_cut = lines
        .iter()
        .filter(|(u, _)| {
            let n = seen.entry(u.clone()).or_insert(0);
            *n += 1;
            *n <= 3
        })
        .filter(|(_, t)| encode(t).len() + 1 > 12)
        .count();
    let counts = data.counts();
    assert_eq!((counts.examples, counts.units, counts.dropped_examples, counts.truncated_examples), (80, 31, 37, kept_cut));
    assert_eq!(ewtune::train::data::count(&path, &tok, &capped, 400).unwrap(), counts);

    // A cap of 0 is refused naming the setting.
    let zero = DataConfig { max_examples_per_user: Some(0), ..cfg.clone() };
    match Dataset::load(&path, &tok, &zero, 400) {
        Err(TrainError::BadSpec { field, .. }) => assert_eq!(field, "data_format.max_examples_per_user"),
        other => panic!("{other:?}"),
    }
    // Without users every unit is one example: a cap (as older daemons stored in every spec)
    // drops nothing.
    let per_example = Dataset::load(&path, &tok, &DataConfig { user_field: None, max_examples_per_user: Some(1), ..cfg.clone() }, 400).unwrap();
    assert_eq!((per_example.len(), per_example.dropped_examples), (80, 0));
}

/// A whole user-level job with a user larger than the micro-batch: it trains, the counts are
/// reported before the first step, and the outcome carries them.
#[test]
fn a_user_level_job_with_a_large_user_trains_and_reports_its_counts_first() {
    let root = setup(Family::Gpt2);
    user_lines(&root.path().join("train.jsonl"));
    let mut s = spec(root.path(), FineTune::Full, 8.0, Some(3));
    s.eval_data = None;
    s.data_config = DataConfig { user_field: Some("user".into()), max_length: 12, ..DataConfig::default() };
    s.training.batch_size = 20;
    s.training.micro_batch = 4;
    let events = std::cell::RefCell::new(Vec::new());
    let out = job::run_observed(
        &s,
        &job::BaseName::CanonicalPath,
        &AtomicBool::new(false),
        |_| Ok(()),
        |p, c| events.borrow_mut().push(format!("start {} {} {}", p.units, c.examples, c.units)),
        |phase| events.borrow_mut().push(format!("{phase:?}")),
        |p| events.borrow_mut().push(format!("step {}", p.step)),
        job::Diagnostics::Public,
    )
    .unwrap();
    assert_eq!(events.into_inner(), vec!["Tokenising", "Calibrating", "start 31 80 31", "LoadingModel", "Training", "step 1", "step 2", "step 3", "Saving"]);
    assert_eq!((out.data.examples, out.data.units, out.data.dropped_examples), (80, 31, 0));
    assert!(out.output_model.join("model.safetensors").exists());
}

/// Every key of a JSON value, at any depth.
fn keys(v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                out.insert(k.clone());
                keys(x, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| keys(x, out)),
        _ => {}
    }
}

/// Issue 11 (5): `ewtune train` prints only data-independent or privatised quantities unless
/// `--print-private-diagnostics` is given; then the data counts and each step's realised batch
/// size, clipped fraction and excluded units appear, and stderr says that they leak.
#[test]
fn train_prints_private_statistics_only_with_the_flag() {
    let root = setup(Family::Gpt2);
    let run = |out: &str, extra: &[&str]| {
        let toml = format!(
            "model = \"base\"\ndata = \"train.jsonl\"\neval_data = \"eval.jsonl\"\noutput = \"{out}\"\ndevice = \"cpu\"\n\
             [finetune]\nmode = \"lora\"\nrank = 4\nalpha = 8\n[privacy]\nnoise_multiplier = 1.0\ndelta = 1e-5\n\
             [training]\nbatch_size = 64\nsteps = 2\nmicro_batch = 32\ncheckpoint_every = 1\n[data_format]\nmax_length = 40\n"
        );
        let config = root.path().join(format!("{out}.toml"));
        std::fs::write(&config, toml).unwrap();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_ewtune")).args(["train", "--config", config.to_str().unwrap()]).args(extra).output().unwrap();
        let (stdout, stderr) = (String::from_utf8(o.stdout).unwrap(), String::from_utf8(o.stderr).unwrap());
        assert!(o.status.success(), "{stdout}\n{stderr}");
        (stdout, stderr)
    };
    let private = ["data", "examples", "truncated_examples", "dropped_examples", "private_diagnostics", "batch_units", "clipped_fraction", "excluded_units"];
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<std::collections::BTreeSet<_>>();

    let (stdout, stderr) = run("out-public", &["--json"]);
    let (phases, lines): (Vec<serde_json::Value>, Vec<serde_json::Value>) = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).partition(|l: &serde_json::Value| l.get("phase").is_some());
    let phases: Vec<&str> = phases.iter().map(|p| p["phase"].as_str().unwrap()).collect();
    assert_eq!(phases, ["tokenising", "calibrating", "loading_model", "evaluating", "training", "evaluating", "saving"], "{stdout}");
    assert_eq!(lines.len(), 4, "start, two steps, outcome: {stdout}");
    let top = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<std::collections::BTreeSet<_>>();
    assert_eq!(top(&lines[0]), set(&["plan"]));
    for step in &lines[1..3] {
        assert_eq!(top(step), set(&["step", "total_steps", "expected_batch_size", "epsilon_spent"]), "{step}");
    }
    assert_eq!(top(&lines[3]), set(&["plan", "steps_done", "epsilon_spent", "eval_loss", "cancelled", "output_model", "self_audit"]));
    assert_eq!(lines[3]["self_audit"]["passed"], true, "job.toml runs the self-audit by default: {}", lines[3]);
    let mut all = std::collections::BTreeSet::new();
    lines.iter().for_each(|l| keys(l, &mut all));
    assert!(private.iter().all(|k| !all.contains(*k)), "private keys in the default output: {all:?}");
    assert!(!stderr.contains("print-private-diagnostics"), "{stderr}");

    let (stdout, stderr) = run("out-private", &["--json", "--print-private-diagnostics"]);
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).filter(|l| l.get("phase").is_none()).collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(top(&lines[0]), set(&["plan", "data"]));
    assert_eq!(lines[0]["data"]["examples"], 600);
    for step in &lines[1..3] {
        assert_eq!(top(step), set(&["step", "total_steps", "expected_batch_size", "epsilon_spent", "private_diagnostics"]), "{step}");
        let d = &step["private_diagnostics"];
        assert_eq!(top(d), set(&["batch_units", "clipped_fraction", "excluded_units"]), "{step}");
        assert!(d["batch_units"].as_u64().unwrap() > 0 && d["excluded_units"] == 0, "{step}");
    }
    assert!(top(&lines[3]).contains("data"));
    assert!(stderr.starts_with("warning: --print-private-diagnostics:") && stderr.contains("realised batch sizes"), "{stderr}");

    // The summary for people: the counts and per-step lines only with the flag.
    let (stdout, stderr) = run("out-text", &[]);
    assert!(stdout.contains("plan: privacy units N = 600") && !stdout.contains("examples"), "{stdout}");
    assert!(stdout.contains("self-audit (10000 gradient canaries): certified <= ") && stdout.contains("implementation checks passed"), "{stdout}");
    assert!(!stderr.contains("(private)"), "{stderr}");
    // Without a terminal: each phase on a line of its own, in order, and no escape codes.
    let phases = ["reading and tokenising the data...", "calibrating the noise", "loading the model...", "training...", "saving..."];
    let at: Vec<usize> = phases.iter().map(|p| stderr.find(p).unwrap_or_else(|| panic!("{p:?} in {stderr}"))).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{stderr}");
    assert!(!stderr.contains('\x1b') && !stdout.contains('\x1b'), "escape codes in a pipe: {stderr}");
    let (stdout, stderr) = run("out-text-private", &["--print-private-diagnostics"]);
    assert!(stdout.contains("data (private): 600 examples"), "{stdout}");
    assert!(stderr.contains("step 1/2 (private): ") && stderr.contains("step 2/2 (private): "), "{stderr}");
}

//! Round trip with the real libraries: ewtune trains (LoRA and full) on checkpoints transformers
//! saved, and transformers and peft themselves load what ewtune wrote — `PeftModel.from_pretrained`,
//! `AutoPeftModelForCausalLM` from another working directory, `merge_and_unload`, and
//! `AutoModelForCausalLM` for full fine-tunes (in the base's dtype) — giving ewtune's per-token
//! log-probs within 1e-4. The Python side is tests/python/hf_roundtrip.py on the CI venv.

use crate::util::fixture;
use ewtune::train::finetune::FineTune;
use ewtune::train::job::{self, JobSpec};
use ewtune::train::model::{token_logprobs, Model};
use ewtune::train::synthetic::write_notes;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use tch::{Device, Tensor};

fn python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(p.exists(), "scripts/setup.sh makes the venv with transformers and peft (requirements-ci.txt)");
    p
}

/// Token-id sequences scored on both sides (ids < 300, the fixtures' vocabulary).
fn sequences() -> Vec<Vec<i64>> {
    vec![(1..20).map(|i| (i * 37) % 300).collect(), (0..33).map(|i| (i * i + 5) % 300).collect(), vec![3, 9, 27, 81, 243, 29]]
}

fn train(base: &str, finetune: FineTune, root: &Path) -> PathBuf {
    write_notes(&root.join("train.jsonl"), 120, 0, 1).unwrap();
    let text = format!(
        "model = {:?}\ndata = \"train.jsonl\"\noutput = \"out\"\ndevice = \"cpu\"\n[privacy]\nnoise_multiplier = 0.5\ndelta = 1e-5\n[training]\nbatch_size = 16\nsteps = 3\nmicro_batch = 8\nlearning_rate = 0.05\n",
        fixture("models").join(base).display().to_string()
    );
    std::fs::write(root.join("job.toml"), text).unwrap();
    let mut spec = JobSpec::from_toml_file(&root.join("job.toml")).unwrap();
    spec.finetune = finetune;
    job::run(&spec, &AtomicBool::new(false), |_| {}).unwrap_or_else(|e| panic!("{base}: {e}")).output_model
}

fn ewtune_logprobs(out: &Path) -> Vec<Vec<f64>> {
    let model = Model::load_output(out, Device::Cpu).unwrap();
    let _g = tch::no_grad_guard();
    sequences()
        .iter()
        .map(|ids| {
            let t = Tensor::from_slice(ids).unsqueeze(0);
            Vec::<f64>::try_from(&token_logprobs(&model.forward(&t, None), &t).squeeze_dim(0)).unwrap()
        })
        .collect()
}

fn transformers_side(kind: &str, out: &Path, base: Option<&str>) -> serde_json::Value {
    let mut cmd = std::process::Command::new(python());
    cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/hf_roundtrip.py"))
        .arg(kind)
        .arg(out)
        .arg(serde_json::to_string(&sequences()).unwrap());
    if let Some(b) = base {
        cmd.arg(fixture("models").join(b));
    }
    let o = cmd.env("OMP_NUM_THREADS", "1").output().unwrap();
    assert!(o.status.success(), "{kind} {}: {}", out.display(), String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn assert_close(ours: &[Vec<f64>], theirs: &serde_json::Value, what: &str) {
    let theirs: Vec<Vec<f64>> = serde_json::from_value(theirs["logprobs"].clone()).unwrap();
    let mut worst = 0.0f64;
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (x, y) in a.iter().zip(b) {
            worst = worst.max((x - y).abs());
        }
    }
    eprintln!("{what}: max |log-prob difference| ewtune vs transformers/peft = {worst:.2e}");
    assert!(worst < 1e-4, "{what}: {worst:e}");
}

#[test]
fn peft_and_transformers_load_ewtune_outputs_and_agree() {
    for base in ["llama-tied", "gpt2-untied"] {
        let root = tempfile::tempdir().unwrap();
        let out = train(base, FineTune::lora(4, 8.0, vec!["all-linear".into()]), root.path());
        let ours = ewtune_logprobs(&out);
        let peft = transformers_side("peft", &out, Some(base));
        let files: Vec<String> = serde_json::from_value(peft["files"].clone()).unwrap();
        assert!(!files.contains(&"config.json".to_string()), "{base}: an adapter dir holds no config.json: {files:?}");
        assert_close(&ours, &peft, &format!("{base} PeftModel.from_pretrained"));
        assert_close(&ours, &transformers_side("autopeft", &out, None), &format!("{base} AutoPeftModelForCausalLM"));
        assert_close(&ours, &transformers_side("merged", &out, None), &format!("{base} merge_and_unload"));
    }
    for (base, dtype) in [("qwen3", "torch.float32"), ("llama-bf16", "torch.bfloat16")] {
        let root = tempfile::tempdir().unwrap();
        let out = train(base, FineTune::Full, root.path());
        let full = transformers_side("full", &out, None);
        assert_eq!(full["dtype"], dtype, "{base}: saved in the base's dtype");
        assert_close(&ewtune_logprobs(&out), &full, &format!("{base} AutoModelForCausalLM (full)"));
    }
}

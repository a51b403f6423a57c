//! HF parity: every family's forward reproduces transformers' per-token log-probs on checkpoints
//! transformers itself saved (tests/fixtures/models, made by scripts/reference/make_model_fixtures.py), and
//! the tokenizer reproduces its ids; checkpoints and configs ewtune cannot compute exactly are
//! refused by name.

use crate::util::fixture;
use ewtune::train::finetune::FineTune;
use ewtune::train::model::{token_logprobs, Model};
use tch::{Device, Tensor};

#[derive(serde::Deserialize)]
struct Reference {
    input: String,
    ids: Vec<i64>,
    token_logprobs: Vec<f64>,
}

fn references(path: &std::path::Path) -> Vec<Reference> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn check_parity(dir: &std::path::Path, refs_file: &str) -> f64 {
    let model = Model::load(dir, &FineTune::Full, None, Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    check_model_parity(&model, &dir.join("tokenizer.json"), &dir.join(refs_file), &dir.display().to_string())
}

fn check_model_parity(model: &Model, tokenizer: &std::path::Path, refs: &std::path::Path, what: &str) -> f64 {
    let tokenizer = tokenizers::Tokenizer::from_file(tokenizer).unwrap();
    let _no_grad = tch::no_grad_guard();
    let mut worst = 0.0f64;
    for r in references(refs) {
        let enc = tokenizer.encode(r.input.as_str(), false).unwrap();
        let ids: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
        assert_eq!(ids, r.ids, "tokenizer ids differ for {:?}", r.input);
        let t = Tensor::from_slice(&ids).unsqueeze(0);
        let lp = token_logprobs(&model.forward(&t, None), &t).squeeze_dim(0);
        let got: Vec<f64> = Vec::<f64>::try_from(&lp).unwrap();
        assert_eq!(got.len(), r.token_logprobs.len());
        for (g, w) in got.iter().zip(&r.token_logprobs) {
            worst = worst.max((g - w).abs());
        }
    }
    assert!(worst < 1e-4, "{what}: max |log-prob difference| = {worst:e}");
    eprintln!("{what}: max |log-prob difference| vs transformers = {worst:.2e}");
    worst
}

/// The fixtures with reference log-probs, from the generator's index.
fn indexed_fixtures() -> Vec<String> {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("models/index.json")).unwrap()).unwrap();
    let list = index["fixtures"].as_array().expect("index.json lists fixtures");
    list.iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .filter(|n| fixture("models").join(n).join("reference_logprobs.jsonl").is_file())
        .collect()
}

#[test]
fn every_family_matches_transformers_on_checkpoints_transformers_saved() {
    let names = indexed_fixtures();
    assert!(names.len() >= 20, "the index lists {} fixtures with references", names.len());
    for name in &names {
        check_parity(&fixture("models").join(name), "reference_logprobs.jsonl");
    }
}

#[test]
fn peft_adapters_score_like_peft() {
    // Plain LoRA, rsLoRA, rank/alpha patterns and a regex target_modules, saved by PEFT itself;
    // the adapter dirs hold no tokenizer, so the base's is the one found.
    for name in ["lora-plain", "lora-rslora", "lora-patterns", "lora-regex"] {
        let dir = fixture("adapters").join(name);
        let model = Model::load_output(&dir, Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
        let tokenizer = ewtune::train::peft_adapter::tokenizer_path(&dir, ewtune::train::peft_adapter::AdapterBase::Recorded).unwrap();
        assert!(tokenizer.ends_with("models/llama-tied/tokenizer.json"), "{}", tokenizer.display());
        check_model_parity(&model, &tokenizer, &dir.join("reference_logprobs.jsonl"), name);
    }
}

#[test]
fn peft_options_ewtune_does_not_compute_are_refused() {
    let e = Model::load_output(&fixture("adapters/lora-dora"), Device::Cpu).err().expect("DoRA refused").to_string();
    assert!(e.contains("use_dora") && e.contains("DoRA"), "{e}");
    for (key, value) in [("modules_to_save", serde_json::json!(["lm_head"])), ("layers_to_transform", serde_json::json!([0])), ("bias", serde_json::json!("all"))] {
        let tmp = tempfile::tempdir().unwrap();
        let src = fixture("adapters/lora-plain");
        let mut cfg: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&std::fs::read(src.join("adapter_config.json")).unwrap()).unwrap();
        cfg.insert(key.into(), value);
        cfg.insert("base_model_name_or_path".into(), fixture("models/llama-tied").display().to_string().into());
        std::fs::write(tmp.path().join("adapter_config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
        std::fs::copy(src.join("adapter_model.safetensors"), tmp.path().join("adapter_model.safetensors")).unwrap();
        let e = Model::load_output(tmp.path(), Device::Cpu).err().unwrap_or_else(|| panic!("{key} accepted")).to_string();
        assert!(e.contains(key), "{key}: {e}");
    }
}

#[test]
fn pickle_checkpoints_are_refused_with_how_to_convert() {
    let e = Model::load(&fixture("models/llama-pytorch-bin"), &FineTune::Full, None, Device::Cpu).err().expect("refused").to_string();
    assert!(e.contains("pytorch_model.bin") && e.contains("save_pretrained") && e.contains("arbitrary code"), "{e}");
}

/// Copies a fixture into a temp dir and edits its config.json.
fn edited_copy(name: &str, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("models").join(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    let path = tmp.path().join("config.json");
    let mut cfg: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    tmp
}

#[test]
fn config_fields_ewtune_does_not_implement_are_refused_by_name() {
    let cases: Vec<(&str, Box<dyn FnOnce(&mut serde_json::Map<String, serde_json::Value>)>, &str)> = vec![
        ("llama-tied", Box::new(|c| { c.insert("quantization_config".into(), serde_json::json!({"bits": 4})); }), "quantization_config"),
        ("llama-tied", Box::new(|c| { c["rope_parameters"]["rope_type"] = "longrope".into(); }), "longrope"),
        ("mistral", Box::new(|c| { c.insert("model_type".into(), "mixtral".into()); }), "mixtral"),
        ("gpt2-untied", Box::new(|c| { c.insert("scale_attn_by_inverse_layer_idx".into(), true.into()); }), "scale_attn_by_inverse_layer_idx"),
        ("gemma2", Box::new(|c| { c.insert("use_bidirectional_attention".into(), true.into()); }), "use_bidirectional_attention"),
        ("qwen2", Box::new(|c| { c.insert("layer_types".into(), serde_json::json!(["chunked_attention", "full_attention"])); }), "chunked_attention"),
    ];
    for (name, edit, needle) in cases {
        let dir = edited_copy(name, edit);
        let e = Model::load(dir.path(), &FineTune::Full, None, Device::Cpu).err().unwrap_or_else(|| panic!("{name}: `{needle}` accepted")).to_string();
        assert!(e.contains(needle), "{name}: {e}");
    }
}

#[test]
fn a_tensor_the_config_does_not_explain_is_refused_by_name() {
    // qwen2's config without q/k/v biases would leave the bias tensors unused: the loader must
    // say so rather than silently drop them. (Llama with attention_bias false reads no bias.)
    let dir = edited_copy("qwen2", |c| {
        c.insert("model_type".into(), "llama".into());
        for qwen_only in ["layer_types", "use_sliding_window", "sliding_window", "max_window_layers"] {
            c.remove(qwen_only);
        }
    });
    let e = Model::load(dir.path(), &FineTune::Full, None, Device::Cpu).err().expect("refused").to_string();
    assert!(e.contains(".bias") && e.contains("not part of the model"), "{e}");
}

#[test]
fn gpt2_logprobs_match_transformers() {
    check_parity(&fixture("audit"), "reference_scores.jsonl");
}

#[test]
fn llama_logprobs_match_transformers() {
    check_parity(&fixture("tiny-llama"), "reference_logprobs.jsonl");
}

//! Small random HF checkpoints (GPT-2 or Llama layout, `config.json` + `model.safetensors`, and a
//! copied `tokenizer.json`), for tests, benchmarks and the demo: no weights can be downloaded
//! here. Seeded through torch's generator; the seed is an argument and says so.

use super::weights::write_safetensors_atomic;
use super::TrainError;
use rand::{Rng, SeedableRng};
use std::path::Path;
use tch::{Kind, Tensor};

/// Shape of a synthetic model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Vocabulary size (must cover the tokenizer's ids).
    pub vocab: i64,
    /// Width.
    pub d_model: i64,
    /// Layers.
    pub layers: i64,
    /// Attention heads.
    pub heads: i64,
    /// Key/value heads (Llama only).
    pub kv_heads: i64,
    /// Maximum positions.
    pub positions: i64,
}

/// Family of a synthetic model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// GPT-2 (Conv1D layout, tied head).
    Gpt2,
    /// Llama (GQA, untied head).
    Llama,
}

fn randn(shape: &[i64], std: f64) -> Tensor {
    Tensor::randn(shape, (Kind::Float, tch::Device::Cpu)) * std
}

fn norm_weight(d: i64) -> Tensor {
    randn(&[d], 0.1) + 1.0
}

/// Writes a random model of `family` and `shape` into `dir` (seeded with `seed`, reproducible);
/// `tokenizer` is copied as `tokenizer.json` when given. The MLP has the family's default width
/// (GPT-2: 4 d; Llama: 2.5 d); [`write_model_with_intermediate`] chooses it.
pub fn write_model(dir: &Path, family: Family, shape: Shape, seed: i64, tokenizer: Option<&Path>) -> Result<(), TrainError> {
    write_model_with_intermediate(dir, family, shape, None, seed, tokenizer)
}

/// [`write_model`] with the MLP's hidden width `intermediate` (GPT-2's `n_inner`, Llama's
/// `intermediate_size`); `None` = the family's default.
pub fn write_model_with_intermediate(dir: &Path, family: Family, shape: Shape, intermediate: Option<i64>, seed: i64, tokenizer: Option<&Path>) -> Result<(), TrainError> {
    if let Some(i) = intermediate.filter(|&i| i <= 0) {
        return Err(TrainError::BadSpec { field: "intermediate", reason: format!("MLP width {i} must be >= 1") });
    }
    std::fs::create_dir_all(dir).map_err(|e| TrainError::Io { path: dir.to_path_buf(), reason: e.to_string() })?;
    tch::manual_seed(seed);
    let Shape { vocab, d_model: d, layers, heads, kv_heads, positions } = shape;
    let std = 0.08;
    let mut t: Vec<(String, Tensor)> = Vec::new();
    let config = match family {
        Family::Gpt2 => {
            t.push(("transformer.wte.weight".into(), randn(&[vocab, d], std)));
            t.push(("transformer.wpe.weight".into(), randn(&[positions, d], std)));
            let inner = intermediate.unwrap_or(4 * d);
            for i in 0..layers {
                let p = format!("transformer.h.{i}");
                for (name, din, dout) in [("attn.c_attn", d, 3 * d), ("attn.c_proj", d, d), ("mlp.c_fc", d, inner), ("mlp.c_proj", inner, d)] {
                    t.push((format!("{p}.{name}.weight"), randn(&[din, dout], std)));
                    t.push((format!("{p}.{name}.bias"), randn(&[dout], 0.02)));
                }
                for ln in ["ln_1", "ln_2"] {
                    t.push((format!("{p}.{ln}.weight"), norm_weight(d)));
                    t.push((format!("{p}.{ln}.bias"), randn(&[d], 0.02)));
                }
            }
            t.push(("transformer.ln_f.weight".into(), norm_weight(d)));
            t.push(("transformer.ln_f.bias".into(), randn(&[d], 0.02)));
            let mut c = serde_json::json!({
                "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": vocab, "n_positions": positions,
                "n_embd": d, "n_layer": layers, "n_head": heads, "activation_function": "gelu_new",
                "layer_norm_epsilon": 1e-5, "tie_word_embeddings": true, "bos_token_id": 0, "eos_token_id": 0
            });
            if intermediate.is_some() {
                c["n_inner"] = serde_json::json!(inner);
            }
            c
        }
        Family::Llama => {
            let hd = d / heads;
            let inter = intermediate.unwrap_or(2 * d + d / 2);
            t.push(("model.embed_tokens.weight".into(), randn(&[vocab, d], std)));
            for i in 0..layers {
                let p = format!("model.layers.{i}");
                for (name, din, dout) in [
                    ("self_attn.q_proj", d, heads * hd),
                    ("self_attn.k_proj", d, kv_heads * hd),
                    ("self_attn.v_proj", d, kv_heads * hd),
                    ("self_attn.o_proj", heads * hd, d),
                    ("mlp.gate_proj", d, inter),
                    ("mlp.up_proj", d, inter),
                    ("mlp.down_proj", inter, d),
                ] {
                    t.push((format!("{p}.{name}.weight"), randn(&[dout, din], std)));
                }
                t.push((format!("{p}.input_layernorm.weight"), norm_weight(d)));
                t.push((format!("{p}.post_attention_layernorm.weight"), norm_weight(d)));
            }
            t.push(("model.norm.weight".into(), norm_weight(d)));
            t.push(("lm_head.weight".into(), randn(&[vocab, d], std)));
            serde_json::json!({
                "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": vocab, "hidden_size": d,
                "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
                "num_key_value_heads": kv_heads, "max_position_embeddings": positions, "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0, "tie_word_embeddings": false, "hidden_act": "silu", "bos_token_id": 0, "eos_token_id": 0
            })
        }
    };
    write_safetensors_atomic(&dir.join("model.safetensors"), &t)?;
    let cfg = serde_json::to_vec_pretty(&config).expect("json values serialize");
    super::weights::write_bytes_atomic(&dir.join("config.json"), &cfg)?;
    if let Some(tok) = tokenizer {
        std::fs::copy(tok, dir.join("tokenizer.json")).map_err(|e| TrainError::Io { path: tok.to_path_buf(), reason: e.to_string() })?;
    }
    Ok(())
}

const NAMES: &[&str] = &["Ada", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal", "Ivy", "Jo", "Kit", "Lu"];
const SYMPTOMS: &[&str] = &["a cough", "a fever", "back pain", "a rash", "headaches", "fatigue"];
const DRUGS: &[&str] = &["rest", "fluids", "ibuprofen", "a cream", "an inhaler", "sleep"];
const DAYS: &[&str] = &["Monday", "Tuesday", "Friday", "Sunday"];

/// Writes `n` synthetic clinical-note lines as JSONL (`{"text": ...}`, or with a `user` field
/// when `users > 0`), with enough structure for a tiny model to learn. Seeded with `seed`
/// (reproducible; not private, it is test data).
pub fn write_notes(path: &Path, n: usize, users: usize, seed: u64) -> Result<(), TrainError> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = String::new();
    for i in 0..n {
        let pick = |rng: &mut rand_chacha::ChaCha8Rng, xs: &[&'static str]| xs[rng.random_range(0..xs.len())];
        let s = rng.random_range(0..SYMPTOMS.len());
        let text = format!(
            "Patient {} saw us on {} with {}; we advised {}.",
            pick(&mut rng, NAMES),
            pick(&mut rng, DAYS),
            SYMPTOMS[s],
            DRUGS[s]
        );
        let line = if users > 0 {
            serde_json::json!({ "text": text, "user": format!("u{}", i % users) })
        } else {
            serde_json::json!({ "text": text })
        };
        out.push_str(&line.to_string());
        out.push('\n');
    }
    super::weights::write_bytes_atomic(path, out.as_bytes())
}

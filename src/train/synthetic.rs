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
    crate::fs::write_atomic(&dir.join("config.json"), &cfg)?;
    if let Some(tok) = tokenizer {
        std::fs::copy(tok, dir.join("tokenizer.json")).map_err(|e| TrainError::Io { path: tok.to_path_buf(), reason: e.to_string() })?;
    }
    Ok(())
}

const NAMES: &[&str] = &["Ada", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal", "Ivy", "Jo", "Kit", "Lu"];
const SYMPTOMS: &[&str] = &["a cough", "a fever", "back pain", "a rash", "headaches", "fatigue"];
const DRUGS: &[&str] = &["rest", "fluids", "ibuprofen", "a cream", "an inhaler", "sleep"];
const DAYS: &[&str] = &["Monday", "Tuesday", "Friday", "Sunday"];

/// Most distinct notes [`write_notes`] can write: every (name, initial, day, symptom).
pub const MAX_NOTES: usize = NAMES.len() * 26 * DAYS.len() * SYMPTOMS.len();

/// Writes `n` (at most [`MAX_NOTES`]) distinct synthetic clinical-note lines as JSONL
/// (`{"text": ...}`, or with a `user` field when `users > 0`), with enough structure for a tiny
/// model to learn. Distinct, because an example-level dataset may not repeat a record. Seeded
/// with `seed` (reproducible; not private, it is test data).
pub fn write_notes(path: &Path, n: usize, users: usize, seed: u64) -> Result<(), TrainError> {
    if n > MAX_NOTES {
        return Err(TrainError::BadSpec { field: "examples", reason: format!("at most {MAX_NOTES} distinct synthetic notes, got {n}") });
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = String::new();
    let mut seen = std::collections::HashSet::with_capacity(n);
    for i in 0..n {
        let pick = |rng: &mut rand_chacha::ChaCha8Rng, xs: &[&'static str]| xs[rng.random_range(0..xs.len())];
        let text = loop {
            let s = rng.random_range(0..SYMPTOMS.len());
            let initial = char::from(b'A' + rng.random_range(0..26u8));
            let text = format!(
                "Patient {} {initial}. saw us on {} with {}; we advised {}.",
                pick(&mut rng, NAMES),
                pick(&mut rng, DAYS),
                SYMPTOMS[s],
                DRUGS[s]
            );
            if seen.insert(text.clone()) {
                break text;
            }
        };
        let line = if users > 0 {
            serde_json::json!({ "text": text, "user": format!("u{}", i % users) })
        } else {
            serde_json::json!({ "text": text })
        };
        out.push_str(&line.to_string());
        out.push('\n');
    }
    Ok(crate::fs::write_atomic(path, out.as_bytes())?)
}

/// Shape of a Qwen2-family checkpoint (`Qwen2ForCausalLM`: grouped-query attention with biases
/// on q, k and v, SwiGLU MLP, RMSNorm, rotary positions, tied embeddings).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Qwen2Shape {
    /// `vocab_size`.
    pub vocab: i64,
    /// `hidden_size`.
    pub hidden: i64,
    /// `num_hidden_layers`.
    pub layers: i64,
    /// `num_attention_heads` (head_dim = hidden / heads).
    pub heads: i64,
    /// `num_key_value_heads`.
    pub kv_heads: i64,
    /// `intermediate_size`.
    pub intermediate: i64,
    /// `max_position_embeddings`.
    pub max_positions: i64,
    /// `rope_theta`.
    pub rope_theta: f64,
}

impl Qwen2Shape {
    /// The shape of Qwen/Qwen2.5-0.5B (494 M parameters).
    pub const QWEN25_0_5B: Qwen2Shape =
        Qwen2Shape { vocab: 151936, hidden: 896, layers: 24, heads: 14, kv_heads: 2, intermediate: 4864, max_positions: 32768, rope_theta: 1e6 };

    /// Parameters of the checkpoint (the tied head counted once).
    pub fn params(&self) -> i64 {
        let Qwen2Shape { vocab, hidden: d, heads, kv_heads, intermediate: i, .. } = *self;
        let hd = d / heads;
        let attn = d * heads * hd + heads * hd + 2 * (d * kv_heads * hd + kv_heads * hd) + heads * hd * d;
        vocab * d + self.layers * (attn + 3 * d * i + 2 * d) + d
    }
}

/// Writes a random Qwen2 checkpoint of `shape` into `dir` as transformers saves one in bfloat16
/// (as Qwen2.5 ships): `config.json` with the fields transformers 5 writes for `Qwen2Config`
/// (and only those), `model.safetensors` in bf16 without `lm_head.weight` (tied). Seeded with
/// `seed`; tensors are drawn and converted one at a time, so about the file's size is held.
pub fn write_qwen2(dir: &Path, shape: Qwen2Shape, seed: i64) -> Result<(), TrainError> {
    let Qwen2Shape { vocab, hidden: d, layers, heads, kv_heads, intermediate: inter, .. } = shape;
    if vocab < 2 || d < 1 || layers < 1 || heads < 1 || kv_heads < 1 || inter < 1 || d % heads != 0 || heads % kv_heads != 0 || (d / heads) % 2 != 0 {
        return Err(TrainError::BadSpec { field: "shape", reason: format!("not a Qwen2 shape: {shape:?} (hidden must be heads x an even head_dim, heads a multiple of kv_heads)") });
    }
    std::fs::create_dir_all(dir).map_err(|e| TrainError::Io { path: dir.to_path_buf(), reason: e.to_string() })?;
    tch::manual_seed(seed);
    let hd = d / heads;
    let bf16 = |shape: &[i64], std: f64| randn(shape, std).to_kind(Kind::BFloat16);
    let mut t: Vec<(String, Tensor)> = vec![("model.embed_tokens.weight".into(), bf16(&[vocab, d], 0.02))];
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        for (name, din, dout, bias) in [
            ("self_attn.q_proj", d, heads * hd, true),
            ("self_attn.k_proj", d, kv_heads * hd, true),
            ("self_attn.v_proj", d, kv_heads * hd, true),
            ("self_attn.o_proj", heads * hd, d, false),
            ("mlp.gate_proj", d, inter, false),
            ("mlp.up_proj", d, inter, false),
            ("mlp.down_proj", inter, d, false),
        ] {
            t.push((format!("{p}.{name}.weight"), bf16(&[dout, din], 0.02)));
            if bias {
                t.push((format!("{p}.{name}.bias"), bf16(&[dout], 0.02)));
            }
        }
        t.push((format!("{p}.input_layernorm.weight"), norm_weight(d).to_kind(Kind::BFloat16)));
        t.push((format!("{p}.post_attention_layernorm.weight"), norm_weight(d).to_kind(Kind::BFloat16)));
    }
    t.push(("model.norm.weight".into(), norm_weight(d).to_kind(Kind::BFloat16)));
    write_safetensors_atomic(&dir.join("model.safetensors"), &t)?;
    drop(t);
    let cfg = serde_json::to_vec_pretty(&qwen2_config(shape)).expect("json values serialize");
    Ok(crate::fs::write_atomic(&dir.join("config.json"), &cfg)?)
}

/// The `config.json` [`write_qwen2`] writes for `shape`.
pub fn qwen2_config(shape: Qwen2Shape) -> serde_json::Value {
    let Qwen2Shape { vocab, hidden: d, layers, heads, kv_heads, intermediate: inter, max_positions, rope_theta } = shape;
    // What `Qwen2Config(...).to_json_string(use_diff=True)` writes under transformers 5.24 for
    // these values (Qwen2.5-0.5B's, rope_theta in `rope_parameters`), dtype bfloat16.
    let special = 151643.min(vocab - 1); // Qwen2.5's <|endoftext|>, inside a shrunk vocabulary
    serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": special,
        "dtype": "bfloat16",
        "eos_token_id": special,
        "hidden_act": "silu",
        "hidden_size": d,
        "initializer_range": 0.02,
        "intermediate_size": inter,
        "layer_types": vec!["full_attention"; layers as usize],
        "max_position_embeddings": max_positions,
        "max_window_layers": layers,
        "model_type": "qwen2",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "pad_token_id": null,
        "rms_norm_eps": 1e-6,
        "rope_parameters": { "rope_theta": rope_theta, "rope_type": "default" },
        "sliding_window": null,
        "tie_word_embeddings": true,
        "transformers_version": "5.24.0",
        "use_cache": true,
        "use_sliding_window": false,
        "vocab_size": vocab
    })
}

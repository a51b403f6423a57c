//! Rotary position embeddings (Su et al., arXiv 2104.09864) as transformers computes them: the
//! inverse frequencies of every `rope_type` transformers writes for the families ewtune loads
//! (default, linear, dynamic NTK, llama3, YaRN — Peng et al., arXiv 2309.00071), partial rotary
//! dimensions, the `rotate_half` convention, and the `attention_factor` applied to cos and sin.
//! LongRoPE is refused by name.

use super::hf_config::HfConfig;
use crate::train::TrainError;
use serde_json::{Map, Value};
use tch::{Kind, Tensor};

/// How the frequencies depend on the sequence length.
#[derive(Debug, Clone, PartialEq)]
enum Scaling {
    /// Fixed inverse frequencies.
    Fixed,
    /// Dynamic NTK: the base grows once a sequence exceeds `max_positions`.
    Dynamic { factor: f64, max_positions: i64 },
}

/// Resolved rotary embedding of one attention type.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    theta: f64,
    /// Rotated dimensions of each head (the first ones; the rest pass through).
    pub rotary_dim: i64,
    inv_freq: Vec<f64>,
    attention_scaling: f64,
    scaling: Scaling,
}

/// `1 / theta^(2i / dim)` for `i < dim / 2`.
fn default_inv_freq(theta: f64, dim: i64) -> Vec<f64> {
    (0..dim).step_by(2).map(|i| 1.0 / theta.powf(i as f64 / dim as f64)).collect()
}

/// The rope parameters of a config: `rope_parameters` (transformers >= 5), else `rope_scaling`
/// with a top-level `rope_theta` (transformers 4). Nested per-layer-type dicts are returned by
/// [`layer_type_parameters`].
pub fn parameters(cfg: &mut HfConfig) -> Result<Map<String, Value>, TrainError> {
    let v5: Option<Map<String, Value>> = cfg.opt("rope_parameters")?;
    let v4: Option<Map<String, Value>> = cfg.opt("rope_scaling")?;
    let theta: Option<f64> = cfg.opt("rope_theta")?;
    let mut p = v5.or(v4).unwrap_or_default();
    if let Some(t) = theta {
        p.entry("rope_theta").or_insert(Value::from(t));
    }
    if let Some(f) = cfg.opt::<f64>("partial_rotary_factor")? {
        p.entry("partial_rotary_factor").or_insert(Value::from(f));
    }
    Ok(p)
}

/// Splits nested per-layer-type parameters (`{"full_attention": {...}, "sliding_attention": {...}}`).
pub fn layer_type_parameters(p: &Map<String, Value>, layer_type: &str) -> Option<Map<String, Value>> {
    p.get(layer_type).and_then(Value::as_object).cloned()
}

impl Rope {
    /// Resolves one parameter dict. `default_theta` applies when it names none; `max_positions`
    /// is the config's `max_position_embeddings`.
    pub fn from_parameters(cfg: &HfConfig, params: &Map<String, Value>, head_dim: i64, max_positions: i64, default_theta: f64) -> Result<Rope, TrainError> {
        const KNOWN: &[&str] = &[
            "rope_type", "type", "rope_theta", "factor", "low_freq_factor", "high_freq_factor",
            "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow", "mscale",
            "mscale_all_dim", "truncate", "partial_rotary_factor",
        ];
        if let Some(k) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(cfg.unsupported(format!("rope parameter `{k}` = {} is not implemented", params[k])));
        }
        let num = |key: &str| -> Result<Option<f64>, TrainError> {
            match params.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| cfg.unsupported(format!("rope parameter `{key}` = {v} is not a number"))),
            }
        };
        let need = |key: &str, kind: &str| -> Result<f64, TrainError> {
            num(key)?.ok_or_else(|| cfg.unsupported(format!("rope_type `{kind}` without `{key}`")))
        };
        let kind = params.get("rope_type").or_else(|| params.get("type")).and_then(Value::as_str).unwrap_or("default").to_string();
        let theta = num("rope_theta")?.unwrap_or(default_theta);
        let partial = num("partial_rotary_factor")?.unwrap_or(1.0);
        if !(theta.is_finite() && theta > 1.0) || !(partial > 0.0 && partial <= 1.0) {
            return Err(cfg.unsupported(format!("rope_theta {theta} / partial_rotary_factor {partial} out of range")));
        }
        let dim = (head_dim as f64 * partial) as i64;
        if dim < 2 || dim % 2 != 0 {
            return Err(cfg.unsupported(format!("rotary dimension {dim} (head_dim {head_dim} x partial_rotary_factor {partial}) must be even and >= 2")));
        }
        let base = default_inv_freq(theta, dim);
        let original = num("original_max_position_embeddings")?.map(|v| v as i64).unwrap_or(max_positions);
        let (inv_freq, attention_scaling, scaling) = match kind.as_str() {
            "default" => (base, 1.0, Scaling::Fixed),
            "linear" => {
                let factor = need("factor", "linear")?;
                (base.iter().map(|f| f / factor).collect(), 1.0, Scaling::Fixed)
            }
            "dynamic" => {
                let factor = need("factor", "dynamic")?;
                (base, 1.0, Scaling::Dynamic { factor, max_positions })
            }
            "llama3" => {
                let factor = need("factor", "llama3")?;
                let (low, high) = (need("low_freq_factor", "llama3")?, need("high_freq_factor", "llama3")?);
                let old = need("original_max_position_embeddings", "llama3")?;
                let (low_wavelen, high_wavelen) = (old / low, old / high);
                let f = base
                    .iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect();
                (f, 1.0, Scaling::Fixed)
            }
            "yarn" => {
                let factor = match num("factor")? {
                    Some(f) => f,
                    None => max_positions as f64 / original as f64,
                };
                let mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
                let attention = match (num("attention_factor")?, num("mscale")?, num("mscale_all_dim")?) {
                    (Some(a), _, _) => a,
                    (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => mscale(factor, m) / mscale(factor, all),
                    _ => mscale(factor, 1.0),
                };
                let beta_fast = num("beta_fast")?.filter(|b| *b != 0.0).unwrap_or(32.0);
                let beta_slow = num("beta_slow")?.filter(|b| *b != 0.0).unwrap_or(1.0);
                let truncate = params.get("truncate").and_then(Value::as_bool).unwrap_or(true);
                let d = dim as f64;
                let correction = |rot: f64| (d * (original as f64 / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * theta.ln());
                let (mut low, mut high) = (correction(beta_fast), correction(beta_slow));
                if truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
                if low == high {
                    high += 0.001;
                }
                let f = base
                    .iter()
                    .enumerate()
                    .map(|(i, &extrapolation)| {
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let keep = 1.0 - ramp;
                        (extrapolation / factor) * (1.0 - keep) + extrapolation * keep
                    })
                    .collect();
                (f, attention, Scaling::Fixed)
            }
            "longrope" | "su" => return Err(cfg.unsupported("rope_type `longrope` (Phi-3 long-context checkpoints) is not implemented; use a short-context checkpoint")),
            other => return Err(cfg.unsupported(format!("rope_type `{other}` is not implemented"))),
        };
        Ok(Rope { theta, rotary_dim: dim, inv_freq, attention_scaling, scaling })
    }

    /// `(cos, sin)`, each `[T, rotary_dim]` (float32), for positions `0..t`.
    pub fn tables(&self, t: i64, device: tch::Device) -> (Tensor, Tensor) {
        let inv_freq = match self.scaling {
            Scaling::Dynamic { factor, max_positions } if t > max_positions => {
                let d = self.rotary_dim as f64;
                let base = self.theta * ((factor * t as f64 / max_positions as f64) - (factor - 1.0)).powf(d / (d - 2.0));
                default_inv_freq(base, self.rotary_dim)
            }
            _ => self.inv_freq.clone(),
        };
        let inv = Tensor::from_slice(&inv_freq.iter().map(|&f| f as f32).collect::<Vec<f32>>()).to_device(device);
        let freqs = Tensor::arange(t, (Kind::Float, device)).outer(&inv);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling)
    }
}

/// Applies the rotation to `x [B, H, T, head_dim]` (the first `cos.size(-1)` dimensions of each
/// head; the rest pass through), HF's `rotate_half` convention.
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let head_dim = *x.size().last().expect("rope input has a head dimension");
    let rot = *cos.size().last().expect("cos has a last dimension");
    let rotate_half = |y: &Tensor| {
        let halves = y.split(rot / 2, -1);
        Tensor::cat(&[&halves[1].neg(), &halves[0]], -1)
    };
    if rot == head_dim {
        return x * cos + rotate_half(x) * sin;
    }
    let parts = x.split_with_sizes([rot, head_dim - rot], -1);
    let rotated = &parts[0] * cos + rotate_half(&parts[0]) * sin;
    Tensor::cat(&[&rotated, &parts[1]], -1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_keeps_high_frequencies_and_divides_low_ones() {
        let cfg = HfConfig::empty_for_tests();
        let p: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192
        }))
        .unwrap();
        let r = Rope::from_parameters(&cfg, &p, 128, 131072, 10000.0).unwrap();
        let base = default_inv_freq(500000.0, 128);
        assert_eq!(r.inv_freq[0], base[0], "the highest frequency is unchanged");
        assert!((r.inv_freq[63] - base[63] / 8.0).abs() < 1e-18, "the lowest frequency is divided by the factor");
    }

    #[test]
    fn unknown_rope_parameters_and_longrope_are_refused_by_name() {
        let cfg = HfConfig::empty_for_tests();
        let p: Map<String, Value> = serde_json::from_value(serde_json::json!({"rope_type": "linear", "factor": 2.0, "mystery": 1})).unwrap();
        let e = Rope::from_parameters(&cfg, &p, 8, 16, 10000.0).unwrap_err().to_string();
        assert!(e.contains("mystery"), "{e}");
        let p: Map<String, Value> = serde_json::from_value(serde_json::json!({"rope_type": "longrope"})).unwrap();
        let e = Rope::from_parameters(&cfg, &p, 8, 16, 10000.0).unwrap_err().to_string();
        assert!(e.contains("longrope"), "{e}");
    }
}

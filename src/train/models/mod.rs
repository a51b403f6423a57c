//! The model families ewtune fine-tunes, one file each in the candle style (config resolution,
//! layers, forward, HF tensor names), on shared building blocks: layers (linear with LoRA,
//! norms), rotary embeddings, attention, MLPs, the pre-norm decoder, and the loader that records
//! each tensor's HF name once for loading and saving.

pub mod attention;
pub mod decoder;
pub mod gemma2;
pub mod gemma3;
pub mod gpt2;
pub mod gpt_neox;
pub mod hf_config;
pub mod layers;
pub mod llama;
pub mod loader;
pub mod mistral;
pub mod mlp;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
pub mod rope;

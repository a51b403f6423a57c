//! ewtune: privacy-preserving fine-tuning of causal language models with DP-SGD.
//!
//! * [`accountant`] — the certified / Edgeworth / RDP accountant crate, re-exported.
//! * [`train`] — the DP-SGD engine on tch (models, LoRA, clipping, noise, sampling, checkpoints).

pub use ewtune_accountant as accountant;
pub mod api;
pub mod artifacts;
pub mod audit;
pub mod service;
pub mod digest;
pub mod fs;
pub mod pages;
pub mod stats;
pub mod store;
pub mod strict_toml;
pub mod train;

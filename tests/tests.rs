//! ewtune's integration tests, one binary (each tch-linking binary costs a full link).

mod audit;
mod bench_memory;
mod chat;
mod citations;
mod config;
mod crash;
mod daemon;
mod dp_oracle;
mod hardening;
mod hf_roundtrip;
mod layers;
mod models;
mod outputs;
mod pages;
mod python_client;
mod readme;
mod reference_generators;
mod reports;
mod server_limits;
mod shared_ledger;
mod terminal;
mod train;
mod units;
mod util;

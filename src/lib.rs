//! ewtune: privacy-preserving fine-tuning. For now the crate re-exports its accountant; the
//! training engine, the store, the gRPC API and the audit land in the next issues.

pub use ewtune_accountant as accountant;

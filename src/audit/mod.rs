//! The membership audit (docs/audit.md): token log-probabilities by one forward pass,
//! membership scores, metrics, labelled-text audits, canaries and the one-run epsilon lower bound,
//! the multi-run classic bound, and the report (docs/audit.md, The report).
//!
//! `bounds` (with `metrics`) is plain statistics that reads nothing else of the crate: the
//! trainer's self-audit (`train::self_audit`) bounds its gradient canaries with it too.
pub mod bounds;
pub mod canary;
pub mod logprobs;
pub mod metrics;
pub mod report;
pub mod runs;
pub mod scores;
pub mod texts;
#[cfg(test)]
mod testutil;

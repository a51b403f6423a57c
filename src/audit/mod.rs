//! The membership audit (docs/audit.md): token log-probabilities by one forward pass,
//! membership scores, metrics, labelled-text audits, canaries and the one-run epsilon lower bound,
//! the multi-run classic bound, and the report (docs/audit.md, The report).
pub mod bounds;
pub mod canary;
pub mod logprobs;
pub mod metrics;
pub mod report;
pub mod runs;
pub mod scores;
pub mod self_audit;
pub mod texts;
#[cfg(test)]
mod testutil;

//! The membership audit (`research/audit.md`): token log-probabilities by one forward pass,
//! membership scores, metrics, canaries and the one-run epsilon lower bound, and the report.
pub mod bounds;
pub mod canary;
pub mod logprobs;
pub mod metrics;
pub mod report;
pub mod scores;
#[cfg(test)]
mod testutil;

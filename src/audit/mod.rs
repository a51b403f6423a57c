//! The membership audit (docs/audit.md): token log-probabilities by one forward pass,
//! membership scores, labelled-text audits, canaries and the report (docs/audit.md, The
//! report). The metrics and the epsilon lower bounds it states are plain statistics, in
//! `crate::stats`.
pub mod canary;
pub mod logprobs;
pub mod report;
pub mod runs;
pub mod scores;
pub mod texts;

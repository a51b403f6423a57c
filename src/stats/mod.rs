//! Plain statistics that read nothing else of the crate: membership metrics with bootstrap
//! intervals, the empirical epsilon lower bounds (docs/audit.md) and the f-DP one-run test
//! (docs/self_audit.md). The membership audit states
//! them about a finished model; the trainer's self-audit (`train::self_audit`) bounds its
//! gradient canaries with them.
pub mod bounds;
pub mod fdp_one_run;
pub mod metrics;
#[cfg(test)]
pub(crate) mod testutil;

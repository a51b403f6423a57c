//! The accountant's integration tests, one binary: the reference grid, the CLI as people and
//! scripts use it, crafted inputs at the entry points the daemon calls, and the certified
//! accountant at tiny delta and on long ledgers.

mod cli;
mod reference;
mod robustness;
mod tails;

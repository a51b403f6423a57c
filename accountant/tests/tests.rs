//! The accountant's integration tests, one binary: the reference grid, the CLI as people and
//! scripts use it, and crafted inputs at the entry points the daemon calls.

mod cli;
mod reference;
mod robustness;

//! The accountant's integration tests, one binary: the reference grid, and the CLI as people
//! and scripts use it.

mod cli;
mod reference;

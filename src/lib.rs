//! interdict: endpoint software-policy enforcement.
//!
//! This crate is the endpoint binary's library: loading policies from disk, the one-shot
//! compliance scan (running processes and installed software), hashing and the command line.
//! The policy language itself lives in the pure `interdict-policy` crate.
//!
//! Exit codes of the binary (see [`cli::exit`]): 0 success or compliant, 1 violations found,
//! 2 error (bad policy, bad arguments, I/O failure).

pub mod cli;
pub mod hash;
pub mod host;
pub mod installed;
pub mod policy_file;
pub mod procs;
pub mod scan;

//! Carrying out a verdict: guarded kills, the quarantine store, notices for employees.

pub mod notices;
pub mod quarantine;

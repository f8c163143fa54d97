//! Carrying out a verdict: guarded kills, the quarantine store, notices for employees.

pub mod kill;
pub mod notices;
pub mod notifier;
pub mod quarantine;

//! The agent's sensors: each watches one source and hands what it sees to the verdict.

pub mod fanotify;
pub mod install_watch;
pub mod proc_connector;
pub mod sweep;

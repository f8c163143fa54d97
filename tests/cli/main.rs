//! Integration tests of the `interdict` binary: one test binary, a module per command.

mod agent;
mod agent_configs;
mod agent_guards;
mod agent_packages;
mod agent_queues;
mod channels;
mod collector;
mod doctor;
mod evasion;
mod family_rules;
mod fleet;
mod hash_sizes;
mod install_watch;
mod notify;
mod npm_packages;
mod package;
mod policy_check;
mod registry_fetch;
mod scan_installed;
mod scan_processes;
mod service;
mod siem;
mod support;
mod syslog;

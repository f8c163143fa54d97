//! Integration tests of the `interdict` binary: one test binary, a module per command.

mod agent;
mod agent_configs;
mod channels;
mod collector;
mod evasion;
mod family_rules;
mod install_watch;
mod notify;
mod npm_packages;
mod policy_check;
mod registry_fetch;
mod scan_installed;
mod scan_processes;
mod siem;
mod support;
mod syslog;

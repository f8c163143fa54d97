//! The interdict policy language.
//!
//! A policy is a TOML file an IT admin writes: a `[policy]` table and a list of `[[rule]]`s, each
//! with selectors (`names`, `paths`, `scripts`, `packages`, `sha256`, `sha256_files`, family
//! rules `contains_all`/`contains_in`, configuration files `configs`), an action
//! (`block`, `kill`, `quarantine`, `report`, `allow`) and the text the employee is shown.
//!
//! This crate is pure: text and facts in, decisions out. It does no I/O of its own (files named by
//! `sha256_files` are read through the caller's [`Includes`]), spawns no threads and knows nothing
//! of processes or filesystems.
//!
//! Loading happens in three steps, as in cargo-deny:
//! 1. parse the TOML with spans ([`toml::de::DeTable`]);
//! 2. read every key by hand, rejecting unknown keys (with a "did you mean" hint);
//! 3. validate, collecting **every** problem as a [`Diagnostic`] with a stable kebab-case
//!    [`Code`], printed as `FILE:LINE:COL: error[code]: message`.
//!
//! A policy with any error is rejected whole; there is no partial policy and no fallback to
//! defaults.
//!
//! ```
//! use interdict_policy::{Facts, NoIncludes, Policy};
//!
//! let text = r#"
//! [policy]
//! name = "example"
//! version = "1"
//! mode = "enforce"
//!
//! [[rule]]
//! id = "claude-code"
//! name = "Claude Code"
//! risk = "high"
//! reason = "Banned by review SEC-2026-114"
//! action = "block"
//! [rule.match]
//! paths = ["**/.local/share/claude/versions/*"]
//! "#;
//! let (policy, _warnings) = Policy::load("example.toml", text, &NoIncludes).unwrap();
//! let facts = Facts {
//!     exe_path: Some("/home/ann/.local/share/claude/versions/2.1.0".into()),
//!     ..Facts::default()
//! };
//! let decision = policy.evaluate(&facts).unwrap();
//! assert_eq!(policy.rule(&decision).id, "claude-code");
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod content;
mod diag;
mod engine;
pub mod fields;
mod model;
mod parse;

pub use content::{ContentMatch, ContentScan, ContentSearcher};
pub use diag::{Code, Diagnostic, Diagnostics, Severity, SourceText};
pub use engine::{
    expand_placeholders, Decision, Enforcement, Evidence, Facts, PlaceholderValues, Policy,
    SelectorCounts, SelectorKind, Subject,
};
pub use model::{
    Action, Date, Ecosystem, Exception, ExceptionRefusal, Exemptions, FileFormat, Mode, OnInstall,
    PackageRef, PolicyInfo, Risk, Rule, Selectors, Sha256, Signature, DEFAULT_LEARN_MIN_SIZE,
    MAX_SIGNATURE_BYTES, MIN_SIGNATURE_BYTES, PLACEHOLDERS,
};
pub use parse::{
    parse_sha256_file, parse_sha256_file_sized, read_policy, IncludedFile, Includes, NoIncludes,
    PolicyDoc, CRITICAL_NAMES, CRITICAL_PATHS,
};

//! The console's tables, added to the store's migration list (issue 17).
//!
//! - `console_links`: one-time sign-in links, by the SHA-256 of their secret (the secret itself is
//!   shown once, by `interdict-collector reviewer NAME --login-link`, and never stored), with the
//!   reviewer's token hash at the time: a reviewer revoked (or given a new token) since cannot
//!   use it.
//! - `console_sessions`: signed-in browsers, by the SHA-256 of their cookie, with the reviewer's
//!   token hash at sign-in (so that revoking the reviewer ends them at once), when they signed
//!   in and when they were last used.
//! - `console_days`: violations per UTC day by rule, host and user (`dim` = `rule`, `host`,
//!   `user`): what the overview reads instead of counting a million events.
//! - `console_installs`: the latest install event per host and path (is a banned tool installed
//!   there now?).
//! - `console_hoststate`: each host's latest heartbeat, read out (policy, bundle, mode, version,
//!   sensors not running).
//! - `console_policies`: policy texts kept with `interdict-collector policy-text FILE`, by the
//!   SHA-256 the agents report, for a person's record ([`super::policies`]).
//! - `console_rollup`: how far (ingest sequence number) the three summaries have counted, and
//!   the signed cuts they were counted under (retention or a host deletion since: counted again).

/// The migration (SQLite and PostgreSQL alike).
pub const MIGRATION: &str = r#"
CREATE TABLE console_links (
    secret_sha256 TEXT PRIMARY KEY,
    reviewer TEXT NOT NULL,
    reviewer_token_sha256 TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    used_ms BIGINT
);
CREATE TABLE console_sessions (
    id_sha256 TEXT PRIMARY KEY,
    reviewer TEXT NOT NULL,
    reviewer_token_sha256 TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    seen_ms BIGINT NOT NULL
);
CREATE TABLE console_days (
    day_n BIGINT NOT NULL,
    dim TEXT NOT NULL,
    k TEXT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (dim, day_n, k)
);
CREATE TABLE console_installs (
    host_id TEXT NOT NULL,
    path TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    time_ms BIGINT NOT NULL,
    ingest_seq BIGINT NOT NULL,
    PRIMARY KEY (host_id, path)
);
CREATE TABLE console_hoststate (
    host_id TEXT PRIMARY KEY,
    ingest_seq BIGINT NOT NULL,
    time_ms BIGINT NOT NULL,
    policy_name TEXT,
    policy_version TEXT,
    policy_sha256 TEXT,
    bundle TEXT,
    mode TEXT,
    version TEXT,
    degraded TEXT NOT NULL
);
CREATE TABLE console_policies (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    text TEXT NOT NULL,
    added_ms BIGINT NOT NULL
);
CREATE TABLE console_rollup (upto BIGINT NOT NULL, cuts BIGINT NOT NULL);
INSERT INTO console_rollup (upto, cuts) VALUES (0, -1);
"#;

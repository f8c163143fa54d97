//! Learned hashes: when a path, script or package rule matches a file, the file's SHA-256 is
//! remembered as a digest of that rule, so that a renamed or moved copy of the same binary is
//! caught by hash on this host, by the agent's exec guard and by `interdict scan`.
//!
//! Kept in `STATE_DIR/learned.json`, written atomically (temporary file, fsync, rename).

use std::path::{Path, PathBuf};

use interdict_policy::{Policy, Sha256};
use serde::{Deserialize, Serialize};

/// The system directories: a learned digest never applies to a file in them, and a file whose
/// content equals one of theirs is never learned from.
pub const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// True when a learned digest matched a file it must never apply to: one in the system
/// directories, or one a package owns. (A digest the policy file declares applies everywhere:
/// the admin said so.)
pub fn misfires(
    policy: &Policy,
    d: &interdict_policy::Decision,
    path: &Path,
    packages: &crate::inventory::packages::PackageFiles,
) -> bool {
    policy.is_learned(d) && (SYSTEM_DIRS.iter().any(|s| path.starts_with(s)) || packages.owns(path))
}

/// One learned digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Learned {
    /// The rule it belongs to.
    pub rule_id: String,
    /// The digest, hex.
    pub sha256: String,
    /// When it was first seen (RFC 3339).
    pub first_seen: String,
    /// Where it was first seen.
    pub path: PathBuf,
    /// Which selector matched the file then.
    pub selector: String,
    /// The file's size when it was hashed (absent in files written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Which part of the agent saw it: `exec` (a launch) or `install` (the install watcher).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Which learned digests to forget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Forget {
    /// One digest (of every rule).
    Digest(String),
    /// Every digest of one rule.
    Rule(String),
    /// Every learned digest.
    All,
}

/// The learned digests of this host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedSet {
    /// In the order they were learned.
    pub entries: Vec<Learned>,
}

impl LearnedSet {
    /// The file under a state folder.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("learned.json")
    }

    /// Read the set; a missing file is an empty set, a damaged one an error.
    pub fn load(state_dir: &Path) -> anyhow::Result<LearnedSet> {
        match std::fs::read(Self::path(state_dir)) {
            Ok(b) => Ok(serde_json::from_slice(&b)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LearnedSet::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// Write the set atomically.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("serializes");
        crate::fsutil::write_atomic(&Self::path(state_dir), &bytes, 0o600)
    }

    /// Forget what `what` names; returns the entries removed.
    pub fn forget(&mut self, what: &Forget) -> Vec<Learned> {
        let (gone, keep) =
            std::mem::take(&mut self.entries)
                .into_iter()
                .partition(|e| match what {
                    Forget::Digest(d) => e.sha256.eq_ignore_ascii_case(d),
                    Forget::Rule(r) => &e.rule_id == r,
                    Forget::All => true,
                });
        self.entries = keep;
        gone
    }

    /// True when `digest` was learned (for any rule).
    pub fn contains(&self, digest: &Sha256) -> bool {
        let hex = digest.to_string();
        self.entries.iter().any(|e| e.sha256 == hex)
    }

    /// Remember an entry; false when its rule already has the digest.
    pub fn add_entry(&mut self, entry: Learned) -> bool {
        if self
            .entries
            .iter()
            .any(|e| e.rule_id == entry.rule_id && e.sha256 == entry.sha256)
        {
            return false;
        }
        self.entries.push(entry);
        true
    }

    /// Add every learned digest to `policy` (digests of rules it no longer has are skipped).
    /// Returns how many were applied.
    pub fn apply(&self, policy: &mut Policy) -> usize {
        self.entries
            .iter()
            .filter_map(|e| Sha256::from_hex(&e.sha256).map(|d| (e, d)))
            .filter(|(e, d)| policy.learn(&e.rule_id, *d, e.size))
            .count()
    }
}

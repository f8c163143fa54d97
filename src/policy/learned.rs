//! Learned hashes: when a path, script or package rule matches a file, the file's SHA-256 is
//! remembered as a digest of that rule, so that a renamed or moved copy of the same binary is
//! caught by hash on this host, by the agent's exec guard and by `interdict scan`.
//!
//! Kept in `STATE_DIR/learned.json`, written atomically (temporary file, fsync, rename).

use std::path::{Path, PathBuf};

use interdict_policy::{Policy, Sha256};
use serde::{Deserialize, Serialize};

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

    /// Remember a digest for a rule; false when it was known.
    pub fn add(&mut self, rule_id: &str, digest: Sha256, path: &Path, selector: &str) -> bool {
        let hex = digest.to_string();
        if self
            .entries
            .iter()
            .any(|e| e.rule_id == rule_id && e.sha256 == hex)
        {
            return false;
        }
        self.entries.push(Learned {
            rule_id: rule_id.to_string(),
            sha256: hex,
            first_seen: interdict_event::rfc3339(std::time::SystemTime::now()),
            path: path.to_path_buf(),
            selector: selector.to_string(),
        });
        true
    }

    /// Add every learned digest to `policy` (digests of rules it no longer has are skipped).
    /// Returns how many were applied.
    pub fn apply(&self, policy: &mut Policy) -> usize {
        self.entries
            .iter()
            .filter_map(|e| Sha256::from_hex(&e.sha256).map(|d| (e, d)))
            .filter(|(e, d)| policy.learn(&e.rule_id, *d))
            .count()
    }
}

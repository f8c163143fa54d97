//! The texts of the policies hosts enforce, kept so that a person's record can show the policy
//! in force at each time, not only its name and digest.
//!
//! Agents report the policy they enforce as its name, version, mode and the SHA-256 of its text
//! (`sha256sum policy.toml`); they do not send the text. Whoever writes the policy keeps it at
//! the collector with `interdict-collector policy-text FILE...`: the text is checked to be a valid
//! policy (with the `sha256_files` it names, read next to it) and stored under its SHA-256, so it
//! is shown for exactly the events that carry that digest and for no other. A text is added once
//! and never changed or removed (the same bytes always have the same digest). The hash lists a
//! policy names (`sha256_files`) are not part of that digest and are not kept.

use std::path::{Path, PathBuf};

use interdict_chain::{hex, sha256};
use interdict_policy::{IncludedFile, Includes};

use crate::sql::DbError;
use crate::store::{now_ms, Store, StoreError};

/// Policy files larger than this are refused (the agent refuses them too).
pub const MAX_TEXT: u64 = 4 << 20;

/// A kept policy text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyText {
    /// SHA-256 of the text, hex (what events carry as `policy.sha256`).
    pub sha256: String,
    /// The `[policy]` name.
    pub name: String,
    /// The `[policy]` version.
    pub version: String,
    /// The file's text, byte for byte.
    pub text: String,
    /// When it was kept, ms.
    pub added_ms: i64,
}

/// Why a policy text was not kept.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// The file could not be read.
    #[error("{path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Not a valid policy: every problem, as `FILE:LINE:COL: error[code]: message` lines.
    #[error("{0}\n{1}: not kept: this is not a policy the agent would enforce")]
    Invalid(String, String),
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads the files a policy names next to it (as the agent does), at most [`MAX_TEXT`] each.
struct Beside(PathBuf);

impl Includes for Beside {
    fn read(&self, relative: &str) -> Result<IncludedFile, String> {
        let p = self.0.join(relative);
        let text = read_limited(&p)?;
        Ok(IncludedFile {
            display_name: p.display().to_string(),
            text,
        })
    }
}

fn read_limited(p: &Path) -> Result<String, String> {
    use std::io::Read;
    let f = std::fs::File::open(p).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    f.take(MAX_TEXT + 1)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    if buf.len() as u64 > MAX_TEXT {
        return Err(format!("larger than {} MiB", MAX_TEXT >> 20));
    }
    String::from_utf8(buf).map_err(|_| "not UTF-8 text".to_string())
}

/// Check the policy file at `path` and keep its text. Returns what was kept and whether it was
/// new (`false`: the same text was kept already).
pub fn add_file(store: &Store, path: &Path) -> Result<(PolicyText, bool), AddError> {
    let shown = path.display().to_string();
    let text = read_limited(path).map_err(|reason| AddError::Read {
        path: shown.clone(),
        reason,
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let (doc, _warnings) = interdict_policy::read_policy(&shown, &text, &Beside(base))
        .map_err(|d| AddError::Invalid(d.to_string().trim_end().to_string(), shown.clone()))?;
    let p = PolicyText {
        sha256: hex(&sha256(text.as_bytes())),
        name: doc.info.name,
        version: doc.info.version,
        text,
        added_ms: now_ms(),
    };
    let new = store
        .db()
        .tx(|t| -> Result<bool, DbError> {
            let n = t.exec(
                "INSERT INTO console_policies (sha256, name, version, text, added_ms)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (sha256) DO NOTHING",
                &[
                    p.sha256.as_str().into(),
                    p.name.as_str().into(),
                    p.version.as_str().into(),
                    p.text.as_str().into(),
                    p.added_ms.into(),
                ],
            )?;
            Ok(n > 0)
        })
        .map_err(StoreError::from)?;
    Ok((p, new))
}

/// The kept text with this SHA-256, if any: one kept with `policy-text`, else the policy of a
/// bundle published to the fleet (`policy publish`) whose text has that digest.
pub fn get(store: &Store, sha: &str) -> Result<Option<PolicyText>, StoreError> {
    if let Some(p) = kept(store, sha)? {
        return Ok(Some(p));
    }
    from_bundle(store, sha)
}

/// Reads the files a bundle carries.
struct InBundle<'a>(&'a std::collections::BTreeMap<String, String>);

impl Includes for InBundle<'_> {
    fn read(&self, relative: &str) -> Result<IncludedFile, String> {
        self.0
            .get(relative)
            .map(|t| IncludedFile {
                display_name: relative.to_string(),
                text: t.clone(),
            })
            .ok_or_else(|| "not in the bundle".to_string())
    }
}

/// The policy text of a published bundle with this digest. The bundle's signature was checked
/// by whoever published it and is checked by every agent; here the text is shown only when it
/// hashes to the digest asked for, which is all that showing "the text with this SHA-256" needs.
fn from_bundle(store: &Store, sha: &str) -> Result<Option<PolicyText>, StoreError> {
    let rows = store.db().read(|c| {
        c.rows(
            "SELECT version, bundle, published_ms FROM fleet_bundles WHERE policy_sha256 = ?1 ORDER BY version",
            &[sha.into()],
        )
    })?;
    for r in rows {
        let Some(body) = r[1]
            .text()
            .and_then(|b| serde_json::from_str::<interdict_fleet::Envelope>(&b).ok())
            .and_then(|e| serde_json::from_str::<interdict_fleet::BundleBody>(&e.body).ok())
        else {
            continue;
        };
        if hex(&sha256(body.policy.as_bytes())) != sha {
            continue;
        }
        let (name, version) =
            match interdict_policy::read_policy("bundle", &body.policy, &InBundle(&body.files)) {
                Ok((doc, _)) => (doc.info.name, doc.info.version),
                Err(_) => (format!("bundle {}", body.version), String::new()),
            };
        return Ok(Some(PolicyText {
            sha256: sha.to_string(),
            name,
            version: format!("{version} (bundle {})", r[0].int())
                .trim_start()
                .to_string(),
            text: body.policy,
            added_ms: r[2].int(),
        }));
    }
    Ok(None)
}

fn kept(store: &Store, sha: &str) -> Result<Option<PolicyText>, StoreError> {
    Ok(store
        .db()
        .read(|c| {
            c.rows(
                "SELECT sha256, name, version, text, added_ms FROM console_policies WHERE sha256 = ?1",
                &[sha.into()],
            )
        })?
        .into_iter()
        .next()
        .map(|r| PolicyText {
            sha256: r[0].text().unwrap_or_default(),
            name: r[1].text().unwrap_or_default(),
            version: r[2].text().unwrap_or_default(),
            text: r[3].text().unwrap_or_default(),
            added_ms: r[4].int(),
        }))
}

/// Every kept text, newest first, without the texts themselves.
pub fn list(store: &Store) -> Result<Vec<PolicyText>, StoreError> {
    Ok(store
        .db()
        .read(|c| {
            c.rows(
                "SELECT sha256, name, version, added_ms FROM console_policies ORDER BY added_ms DESC, sha256",
                &[],
            )
        })?
        .into_iter()
        .map(|r| PolicyText {
            sha256: r[0].text().unwrap_or_default(),
            name: r[1].text().unwrap_or_default(),
            version: r[2].text().unwrap_or_default(),
            text: String::new(),
            added_ms: r[3].int(),
        })
        .collect())
}

//! Loading a policy file from disk: the file itself and the `sha256_files` it names, read
//! relative to the policy's folder.

pub mod bundle;
pub mod learned;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use interdict_policy::{Diagnostics, IncludedFile, Includes, Policy};
use sha2::{Digest, Sha256};

/// The largest policy or hash list read (a larger one is refused, not truncated).
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// A policy that loaded, with its warnings and identity.
#[derive(Debug, Clone)]
pub struct LoadedPolicy {
    /// The compiled policy.
    pub policy: Policy,
    /// Warnings (the policy is in force regardless).
    pub warnings: Diagnostics,
    /// The file as named by the user.
    pub path: PathBuf,
    /// SHA-256 of the policy text, hex: identifies exactly which policy is in force.
    pub sha256: String,
    /// SHA-256 over the policy text and every `sha256_files` list it read (by name), hex: changes
    /// when a hash list does, which `sha256` alone does not.
    pub content_sha256: String,
}

/// SHA-256 over a policy's text and the hash lists it read, hex ([`LoadedPolicy::content_sha256`]).
pub fn content_sha256(text: &str, files: &std::collections::BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for part in
        std::iter::once(("", text)).chain(files.iter().map(|(n, t)| (n.as_str(), t.as_str())))
    {
        for bytes in [part.0.as_bytes(), part.1.as_bytes()] {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
    }
    hex::encode(h.finalize())
}

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{path}: cannot read policy: {}", crate::io_reason(source))]
    Io {
        /// The policy file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The policy is invalid: every diagnostic.
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// Reads `sha256_files` relative to the policy's folder.
#[derive(Debug, Clone)]
pub struct DirIncludes {
    base: PathBuf,
}

impl DirIncludes {
    /// Resolve names relative to the folder holding `policy_path`.
    pub fn for_policy(policy_path: &Path) -> DirIncludes {
        let base = policy_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        DirIncludes { base }
    }
}

impl Includes for DirIncludes {
    fn read(&self, relative: &str) -> Result<IncludedFile, String> {
        let path = self.base.join(relative);
        let text = read_limited(&path).map_err(|e| crate::io_reason(&e))?;
        Ok(IncludedFile {
            display_name: path.display().to_string(),
            text,
        })
    }
}

fn read_limited(path: &Path) -> std::io::Result<String> {
    let f = fs::File::open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    Ok(text)
}

/// Load, validate and compile the policy at `path`.
pub fn load(path: &Path) -> Result<LoadedPolicy, LoadError> {
    let text = read_limited(path).map_err(|source| LoadError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let name = path.display().to_string();
    let rec = bundle::Recording {
        dir: DirIncludes::for_policy(path),
        read: Default::default(),
    };
    let (policy, warnings) = Policy::load(&name, &text, &rec).map_err(LoadError::Invalid)?;
    Ok(LoadedPolicy {
        policy,
        warnings,
        path: path.to_path_buf(),
        sha256: hex::encode(Sha256::digest(text.as_bytes())),
        content_sha256: content_sha256(&text, &rec.read.into_inner()),
    })
}

/// Load a policy for a command: warnings and errors go to stderr; `None` when it did not load.
pub fn load_or_print(path: &Path) -> Option<LoadedPolicy> {
    match load(path) {
        Ok(l) => {
            for w in &l.warnings.0 {
                eprintln!("{w}");
            }
            Some(l)
        }
        Err(e) => {
            let text = e.to_string();
            eprint!("{text}");
            if !text.ends_with('\n') {
                eprintln!();
            }
            None
        }
    }
}

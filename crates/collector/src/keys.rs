//! The collector's signing key: ed25519, for checkpoints and cuts. Kept in a file readable by
//! its owner only (0600), created on first use; it never goes into the database, so someone who
//! can write the database cannot sign.

use std::io::Write;
use std::path::Path;

/// Key file problems.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file does not hold a key.
    #[error(
        "{0}: not a signing key (64 hex digits expected); move it away to have a new one made"
    )]
    Invalid(String),
}

/// A new random key.
pub fn generate() -> ed25519_dalek::SigningKey {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the operating system's random generator");
    ed25519_dalek::SigningKey::from_bytes(&seed)
}

/// Load the key at `path`, creating it (0600, in a 0700 directory when that is new) when
/// missing. A key file others can read is made owner-only, with a warning.
pub fn load_or_create(path: &Path) -> Result<ed25519_dalek::SigningKey, KeyError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let io = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let meta = std::fs::metadata(path).map_err(io)?;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    "{}: the signing key was readable by others; made owner-only (0600)",
                    path.display()
                );
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(io)?;
            }
            let seed = interdict_chain::unhex(text.trim())
                .ok_or_else(|| KeyError::Invalid(path.display().to_string()))?;
            Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                if !dir.as_os_str().is_empty() && !dir.exists() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .map_err(io)?;
                }
            }
            let key = generate();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            writeln!(f, "{}", interdict_chain::hex(key.as_bytes())).map_err(io)?;
            f.sync_all().map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

/// The public key, hex: what reviewers pin.
pub fn public_hex(key: &ed25519_dalek::SigningKey) -> String {
    interdict_chain::hex(key.verifying_key().as_bytes())
}

//! Small file-system helpers shared by the agent's state files.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Replace `path` with `bytes` atomically: write a temporary file beside it (mode `mode`), fsync
/// it, rename it over `path`, fsync the folder. A crash leaves the old file or the new one,
/// never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_whole_and_sets_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/state.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read_dir(p.parent().unwrap()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }
}

/// Serde for a path that may not be UTF-8 (a file name made to be unreadable): a string when
/// it is UTF-8, else the array of its bytes. Use with `#[serde(with = "crate::fsutil::any_path")]`.
pub mod any_path {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Form {
        Text(String),
        Bytes(Vec<u8>),
    }

    /// Serialize.
    pub fn serialize<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
        match p.to_str() {
            Some(t) => Form::Text(t.to_string()),
            None => Form::Bytes(p.as_os_str().as_bytes().to_vec()),
        }
        .serialize(s)
    }

    /// Deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        Ok(match Form::deserialize(d)? {
            Form::Text(t) => PathBuf::from(t),
            Form::Bytes(b) => PathBuf::from(std::ffi::OsString::from_vec(b)),
        })
    }

    #[cfg(test)]
    mod tests {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct W {
            #[serde(with = "super")]
            p: std::path::PathBuf,
        }

        #[test]
        fn paths_that_are_not_utf8_round_trip() {
            use std::os::unix::ffi::OsStrExt;
            for raw in [&b"/opt/claude"[..], b"/opt/\xff\xfeclaude"] {
                let w = W {
                    p: std::ffi::OsStr::from_bytes(raw).into(),
                };
                let json = serde_json::to_string(&w).unwrap();
                assert_eq!(serde_json::from_str::<W>(&json).unwrap(), w, "{json}");
            }
        }
    }
}

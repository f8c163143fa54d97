//! The quarantine store: banned files moved out of reach, with everything needed to put them
//! back exactly.
//!
//! The store is a root-only folder (`STATE_DIR/quarantine`, mode 0700). Each entry is two files:
//! `ID.bin`, the file's bytes (mode 0400: nothing executable is left anywhere), and `ID.json`,
//! the manifest entry (id, original path, owner, group, mode, size, SHA-256, time, rule). Moves
//! are renames where the store is on the same filesystem, else copy, fsync, rename, then unlink
//! of the original. Manifest entries are written to a temporary file and renamed into place.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::inventory::hash::{open_regular, sha256_reader};

/// One quarantined file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Entry id (UUIDv7).
    pub id: String,
    /// Where the file was.
    pub original_path: PathBuf,
    /// Owner uid.
    pub uid: u32,
    /// Group gid.
    pub gid: u32,
    /// Permission bits (including setuid/setgid/sticky).
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
    /// When it was quarantined (RFC 3339).
    pub time: String,
    /// The rule that asked for it.
    pub rule_id: String,
}

/// Why a file was not quarantined or restored.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    /// The path is not inside any of the configured roots (after resolving its folder).
    #[error("{0}: outside the install roots; never touched")]
    OutsideRoots(PathBuf),
    /// The path is a symlink, a folder or a special file.
    #[error("{0}: not a regular file (symlinks are never followed)")]
    NotRegular(PathBuf),
    /// The file belongs to a system package.
    #[error("{0}: owned by the system package manager (set allow_system_files = true to allow)")]
    SystemFile(PathBuf),
    /// No such entry.
    #[error("no quarantine entry {0}")]
    NoEntry(String),
    /// Something is in the way of a restore.
    #[error("{0}: exists; restore refused (move it away first)")]
    Occupied(PathBuf),
    /// The stored bytes do not match the manifest.
    #[error("entry {0}: stored bytes do not match their SHA-256; restore refused")]
    Corrupt(String),
    /// An I/O error.
    #[error("{0}: {1}")]
    Io(PathBuf, String),
}

fn io_err(p: &Path) -> impl Fn(io::Error) -> QuarantineError + '_ {
    move |e| QuarantineError::Io(p.to_path_buf(), crate::io_reason(&e))
}

pub use crate::inventory::packages::PackageFiles as SystemFiles;

/// Quarantine a file found installed when its rule says so (`on_install = "quarantine"`) and
/// the rule changes anything today (not in monitor mode, not before `enforce_from`). `None`
/// when the rule does not ask for it, or the find is a package folder (reported only).
pub fn if_asked(
    shared: &crate::agent::shared::Shared,
    found: &crate::inventory::installed::Found,
) -> Option<Result<Entry, QuarantineError>> {
    let active = shared.policy.active();
    let policy = &active.loaded.policy;
    let rule = policy.rule(&found.decision);
    if rule.on_install != interdict_policy::OnInstall::Quarantine || found.package.is_some() {
        return None;
    }
    if policy.rule_enforcement(found.decision.rule, shared.today())
        != interdict_policy::Enforcement::Enforced
    {
        return None;
    }
    let roots = crate::agent::sensors::install_watch::roots_now(shared);
    let system = (!rule.allow_system_files).then(|| shared.learner.packages());
    Some(
        Store::open(&shared.config.agent.state_dir)
            .and_then(|s| s.quarantine(&found.canonical, &roots, &rule.id, system.as_deref())),
    )
}

/// The store.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Open (creating, root-only) the store under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Store, QuarantineError> {
        let dir = state_dir.join("quarantine");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io_err(&dir))?;
        Ok(Store { dir })
    }

    fn bin(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.bin"))
    }

    fn manifest(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Move `path` into the store. `roots` are the canonical install roots the file must be in.
    pub fn quarantine(
        &self,
        path: &Path,
        roots: &[PathBuf],
        rule_id: &str,
        system: Option<&SystemFiles>,
    ) -> Result<Entry, QuarantineError> {
        // Resolve the folder, never the file itself: a symlink is refused, not followed.
        let parent = path
            .parent()
            .and_then(|p| fs::canonicalize(p).ok())
            .ok_or_else(|| QuarantineError::OutsideRoots(path.to_path_buf()))?;
        let path = parent.join(path.file_name().unwrap_or_default());
        if !roots.iter().any(|r| path.starts_with(r)) {
            return Err(QuarantineError::OutsideRoots(path));
        }
        let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
        if !meta.file_type().is_file() {
            return Err(QuarantineError::NotRegular(path));
        }
        if system.is_some_and(|s| s.owns(&path)) {
            return Err(QuarantineError::SystemFile(path));
        }
        let (f, _) = open_regular(&path, false).map_err(io_err(&path))?;
        let (digest, size) = sha256_reader(&f).map_err(io_err(&path))?;
        let id = uuid_v7();
        let bin = self.bin(&id);
        match fs::rename(&path, &bin) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let tmp = self.dir.join(format!("{id}.tmp"));
                copy_synced(&path, &tmp)?;
                fs::rename(&tmp, &bin).map_err(io_err(&bin))?;
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
            Err(e) => return Err(io_err(&path)(e)),
        }
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o400)).map_err(io_err(&bin))?;
        std::os::unix::fs::chown(&bin, Some(0), Some(0)).map_err(io_err(&bin))?;
        let entry = Entry {
            id: id.clone(),
            original_path: path,
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o7777,
            size,
            sha256: digest.to_string(),
            time: interdict_event::rfc3339(std::time::SystemTime::now()),
            rule_id: rule_id.to_string(),
        };
        self.write_entry(&entry)?;
        Ok(entry)
    }

    fn write_entry(&self, e: &Entry) -> Result<(), QuarantineError> {
        let path = self.manifest(&e.id);
        let bytes = serde_json::to_vec_pretty(e).expect("entries serialize");
        crate::fsutil::write_atomic(&path, &bytes, 0o600).map_err(io_err(&path))
    }

    /// Every entry, oldest first. Unreadable manifest files are skipped.
    pub fn list(&self) -> Vec<Entry> {
        let mut out: Vec<Entry> = fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .filter_map(|e| fs::read(e.path()).ok())
                    .filter_map(|b| serde_json::from_slice(&b).ok())
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Put an entry back where it was, with its bytes, owner, group and mode, and drop it from
    /// the store.
    pub fn restore(&self, id: &str) -> Result<Entry, QuarantineError> {
        let entry = self
            .list()
            .into_iter()
            .find(|e| e.id == id)
            .ok_or_else(|| QuarantineError::NoEntry(id.to_string()))?;
        let bin = self.bin(id);
        let (f, _) = open_regular(&bin, false).map_err(io_err(&bin))?;
        let (digest, _) = sha256_reader(&f).map_err(io_err(&bin))?;
        if digest.to_string() != entry.sha256 {
            return Err(QuarantineError::Corrupt(id.to_string()));
        }
        let dest = &entry.original_path;
        if fs::symlink_metadata(dest).is_ok() {
            return Err(QuarantineError::Occupied(dest.clone()));
        }
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        match fs::rename(&bin, dest) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let tmp = dest.with_file_name(format!(".{}.interdict-restore", entry.id));
                copy_synced(&bin, &tmp)?;
                fs::rename(&tmp, dest).map_err(io_err(dest))?;
                fs::remove_file(&bin).map_err(io_err(&bin))?;
            }
            Err(e) => return Err(io_err(dest)(e)),
        }
        std::os::unix::fs::chown(dest, Some(entry.uid), Some(entry.gid)).map_err(io_err(dest))?;
        // chown clears setuid/setgid: set the mode afterwards.
        fs::set_permissions(dest, fs::Permissions::from_mode(entry.mode)).map_err(io_err(dest))?;
        let m = self.manifest(id);
        fs::remove_file(&m).map_err(io_err(&m))?;
        Ok(entry)
    }
}

fn copy_synced(from: &Path, to: &Path) -> Result<(), QuarantineError> {
    let mut src = fs::File::open(from).map_err(io_err(from))?;
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(io_err(to))?;
    io::copy(&mut src, &mut dst).map_err(io_err(to))?;
    dst.sync_all().map_err(io_err(to))
}

fn uuid_v7() -> String {
    interdict_event::Origin::default()
        .event(interdict_event::EventKind::AgentStarted)
        .id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_bytes_owner_and_mode_and_leaves_nothing_executable() {
        let roots_dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(roots_dir.path()).unwrap();
        let file = root.join("bin/banned");
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, b"\x7fELF banned bytes").unwrap();
        std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o4751)).unwrap();
        let store = Store::open(state.path()).unwrap();
        let e = store
            .quarantine(&file, std::slice::from_ref(&root), "r", None)
            .unwrap();
        assert!(!file.exists());
        assert_eq!((e.uid, e.gid, e.mode, e.size), (65534, 65534, 0o4751, 17));
        let stored = fs::metadata(store.bin(&e.id)).unwrap();
        assert_eq!(stored.mode() & 0o777, 0o400);
        assert_eq!(store.list(), vec![e.clone()]);
        let back = store.restore(&e.id).unwrap();
        assert_eq!(back, e);
        let m = fs::metadata(&file).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (65534, 65534, 0o4751)
        );
        assert_eq!(fs::read(&file).unwrap(), b"\x7fELF banned bytes");
        assert!(store.list().is_empty());
    }

    #[test]
    fn refuses_symlinks_outside_paths_and_system_files() {
        let roots_dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(roots_dir.path()).unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("victim");
        fs::write(&target, b"x").unwrap();
        std::os::unix::fs::symlink(&target, root.join("link")).unwrap();
        let store = Store::open(state.path()).unwrap();
        let r = store.quarantine(&root.join("link"), std::slice::from_ref(&root), "r", None);
        assert!(matches!(r, Err(QuarantineError::NotRegular(_))), "{r:?}");
        assert!(target.exists());
        let r = store.quarantine(&target, std::slice::from_ref(&root), "r", None);
        assert!(matches!(r, Err(QuarantineError::OutsideRoots(_))), "{r:?}");
        let owned = root.join("owned");
        fs::write(&owned, b"y").unwrap();
        let lists = tempfile::tempdir().unwrap();
        fs::write(
            lists.path().join("pkg.list"),
            format!("/\n{}\n", owned.display()),
        )
        .unwrap();
        let sys = SystemFiles::load_dpkg(lists.path());
        let r = store.quarantine(&owned, std::slice::from_ref(&root), "r", Some(&sys));
        assert!(matches!(r, Err(QuarantineError::SystemFile(_))), "{r:?}");
        assert!(owned.exists());
    }

    #[test]
    fn restore_refuses_to_overwrite_and_detects_tampering() {
        let roots_dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(roots_dir.path()).unwrap();
        let file = root.join("t");
        fs::write(&file, b"abc").unwrap();
        let store = Store::open(state.path()).unwrap();
        let e = store
            .quarantine(&file, std::slice::from_ref(&root), "r", None)
            .unwrap();
        fs::write(&file, b"new").unwrap();
        assert!(matches!(
            store.restore(&e.id),
            Err(QuarantineError::Occupied(_))
        ));
        fs::remove_file(&file).unwrap();
        fs::set_permissions(store.bin(&e.id), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(store.bin(&e.id), b"tampered").unwrap();
        assert!(matches!(
            store.restore(&e.id),
            Err(QuarantineError::Corrupt(_))
        ));
    }
}

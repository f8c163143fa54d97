//! What a walk of the install roots saw, so that the next walk reads again only the folders that
//! changed ([`crate::inventory::installed::Pass::Quick`]).
//!
//! For every folder walked: its identity and times (device, inode, mtime, ctime), the names of
//! its subfolders, and the names of the entries worth looking at again even when the folder is
//! unchanged (those that held a finding or could not be read, and symlinks, whose targets lie
//! elsewhere). Creating, removing or renaming an entry changes its folder's mtime and ctime, and
//! ctime cannot be set back by anyone but the clock; a folder whose ctime was within
//! [`RACY_NS`] of the moment it was read may have changed again within the same timestamp tick,
//! so it is read again next time (git's "racy" entries).
//!
//! File format (little-endian), `STATE_DIR/walkstate.bin`: the magic `IDWS0001`, the policy
//! fingerprint the findings were made with (32 bytes), the folder count (u64), the folders, then
//! the SHA-256 of everything before it. A folder is its path (u32 length + bytes), dev u64, ino
//! u64, mtime ns i128, ctime ns i128, racy u8, then the subfolder names and the kept names (each
//! list a u32 count of u16 length + bytes). A damaged file is rejected whole (a full walk then
//! rebuilds it).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use crate::inventory::records::LeReader;

const MAGIC: &[u8; 8] = b"IDWS0001";

/// A folder read less than this long after its last change is read again next time: a change
/// within the same timestamp tick would leave its times as they were (2 s covers the coarsest
/// timestamps Linux filesystems keep, FAT's).
pub const RACY_NS: i128 = 2_000_000_000;

/// A folder's identity and times: any entry created, removed or renamed in it changes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DirKey {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i128,
}

impl DirKey {
    /// The key of a folder from its metadata.
    pub fn of(m: &std::fs::Metadata) -> DirKey {
        DirKey {
            dev: m.dev(),
            ino: m.ino(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }
}

/// One folder as the last walk saw it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DirState {
    /// Its identity and times when it was read.
    pub key: DirKey,
    /// Read within [`RACY_NS`] of its last change: not to be trusted unchanged.
    pub racy: bool,
    /// Its subfolders.
    pub subdirs: Vec<OsString>,
    /// Entries looked at again even when the folder is unchanged.
    pub keep: Vec<OsString>,
}

/// Every folder the last walk saw, and the policy its findings were made with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalkState {
    /// Identifies the policy in force when the findings were made: a walk under another policy
    /// trusts nothing recorded here.
    pub fingerprint: [u8; 32],
    /// By folder path.
    pub dirs: HashMap<PathBuf, DirState>,
}

/// Why a state file was not used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    /// No state yet.
    #[error("no walk state file")]
    Missing,
    /// Damaged or of another format; a full walk rebuilds it.
    #[error("walk state file rejected: {0}")]
    Corrupt(&'static str),
    /// It could not be read.
    #[error("walk state file unreadable: {0}")]
    Io(String),
}

impl WalkState {
    /// Something changed at `path` (the watcher said so): its folder, and the path itself when
    /// it is a folder, are read again by the next walk.
    pub fn invalidate(&mut self, path: &Path) {
        self.dirs.remove(path);
        if let Some(parent) = path.parent() {
            self.dirs.remove(parent);
        }
    }

    /// A digest of the whole state that does not depend on the order folders were visited in:
    /// equal states have equal digests, so an unchanged state need not be written again (nor
    /// kept twice in memory to find out).
    pub fn digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let one = |h: &dyn Fn(&mut std::collections::hash_map::DefaultHasher)| {
            let mut s = std::collections::hash_map::DefaultHasher::new();
            h(&mut s);
            s.finish()
        };
        self.dirs
            .iter()
            .map(|(p, d)| {
                one(&|s| {
                    p.hash(s);
                    d.hash(s);
                })
            })
            .fold(one(&|s| self.fingerprint.hash(s)), u64::wrapping_add)
    }

    /// Encode for the state file.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.dirs.len() * 96);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.fingerprint);
        out.extend_from_slice(&(self.dirs.len() as u64).to_le_bytes());
        let names = |out: &mut Vec<u8>, list: &[OsString]| {
            out.extend_from_slice(&(list.len() as u32).to_le_bytes());
            for n in list {
                let b = n.as_bytes();
                out.extend_from_slice(&(b.len() as u16).to_le_bytes());
                out.extend_from_slice(b);
            }
        };
        for (path, d) in &self.dirs {
            let p = path.as_os_str().as_bytes();
            out.extend_from_slice(&(p.len() as u32).to_le_bytes());
            out.extend_from_slice(p);
            out.extend_from_slice(&d.key.dev.to_le_bytes());
            out.extend_from_slice(&d.key.ino.to_le_bytes());
            out.extend_from_slice(&d.key.mtime_ns.to_le_bytes());
            out.extend_from_slice(&d.key.ctime_ns.to_le_bytes());
            out.push(u8::from(d.racy));
            names(&mut out, &d.subdirs);
            names(&mut out, &d.keep);
        }
        let sum: [u8; 32] = sha2::Sha256::digest(&out).into();
        out.extend_from_slice(&sum);
        out
    }

    /// Decode a state file's bytes, checking everything.
    pub fn decode(bytes: &[u8]) -> Result<WalkState, StateError> {
        if bytes.len() < 48 + 32 {
            return Err(StateError::Corrupt("truncated"));
        }
        if &bytes[..8] != MAGIC {
            return Err(StateError::Corrupt("unknown format"));
        }
        let body = bytes.len() - 32;
        let sum: [u8; 32] = sha2::Sha256::digest(&bytes[..body]).into();
        if sum[..] != bytes[body..] {
            return Err(StateError::Corrupt("checksum mismatch"));
        }
        let mut r = LeReader::new(&bytes[..body], 8, StateError::Corrupt("truncated record"));
        let fingerprint: [u8; 32] = r.array()?;
        let n = r.u64()?;
        // A folder takes at least 4 + 56 + 1 + 8 bytes: a count that cannot fit is a lie.
        if n.checked_mul(69).is_none_or(|m| m > r.remaining() as u64) {
            return Err(StateError::Corrupt("bad length"));
        }
        let mut dirs = HashMap::with_capacity(n as usize);
        for _ in 0..n {
            let len = r.u32()? as usize;
            let path = PathBuf::from(OsStr::from_bytes(r.take(len)?));
            let key = DirKey {
                dev: r.u64()?,
                ino: r.u64()?,
                mtime_ns: r.i128()?,
                ctime_ns: r.i128()?,
            };
            let racy = r.take(1)?[0] != 0;
            let subdirs = names(&mut r)?;
            let keep = names(&mut r)?;
            dirs.insert(
                path,
                DirState {
                    key,
                    racy,
                    subdirs,
                    keep,
                },
            );
        }
        if r.remaining() != 0 {
            return Err(StateError::Corrupt("truncated or extended"));
        }
        Ok(WalkState { fingerprint, dirs })
    }

    /// Read and check a state file.
    pub fn load(path: &Path) -> Result<WalkState, StateError> {
        match std::fs::read(path) {
            Ok(b) => WalkState::decode(&b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StateError::Missing),
            Err(e) => Err(StateError::Io(crate::io_reason(&e))),
        }
    }
}

/// The names of a list: a u32 count of u16 length + bytes.
fn names(r: &mut LeReader<'_, StateError>) -> Result<Vec<OsString>, StateError> {
    let n = r.u32()? as usize;
    if n > r.remaining() {
        return Err(StateError::Corrupt("bad length"));
    }
    (0..n)
        .map(|_| {
            let len = r.u16()?;
            Ok(OsString::from_vec(r.take(usize::from(len))?.to_vec()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state(n: usize) -> WalkState {
        let mut s = WalkState {
            fingerprint: [7; 32],
            dirs: HashMap::new(),
        };
        for i in 0..n {
            s.dirs.insert(
                PathBuf::from(format!("/r/d{i}")),
                DirState {
                    key: DirKey {
                        dev: 1,
                        ino: i as u64,
                        mtime_ns: -(i as i128),
                        ctime_ns: 1 << 70,
                    },
                    racy: i % 2 == 0,
                    subdirs: vec![OsString::from(format!("s{i}")), OsString::from("x")],
                    keep: (0..i % 3)
                        .map(|k| OsString::from(format!("k{k}")))
                        .collect(),
                },
            );
        }
        s
    }

    #[test]
    fn round_trip_and_rejects_damage() {
        let s = state(50);
        let bytes = s.encode();
        assert_eq!(WalkState::decode(&bytes).unwrap(), s);
        let mut flipped = bytes.clone();
        flipped[60] ^= 1;
        assert_eq!(
            WalkState::decode(&flipped),
            Err(StateError::Corrupt("checksum mismatch"))
        );
        assert_eq!(
            WalkState::decode(b"short"),
            Err(StateError::Corrupt("truncated"))
        );
    }

    #[test]
    fn the_digest_depends_on_the_content_not_the_order() {
        let a = state(30);
        let mut b = WalkState {
            fingerprint: a.fingerprint,
            dirs: HashMap::new(),
        };
        let mut entries: Vec<_> = a.dirs.clone().into_iter().collect();
        entries.reverse();
        b.dirs.extend(entries);
        assert_eq!(a.digest(), b.digest());
        let some = b.dirs.keys().next().unwrap().clone();
        b.dirs.get_mut(&some).unwrap().keep.push("new".into());
        assert_ne!(a.digest(), b.digest());
        let mut c = a.clone();
        c.fingerprint = [8; 32];
        assert_ne!(a.digest(), c.digest());
    }

    #[test]
    fn invalidating_a_path_forgets_it_and_its_folder_only() {
        let mut s = state(3);
        s.dirs
            .insert("/r/d1/sub".into(), s.dirs[Path::new("/r/d0")].clone());
        s.invalidate(Path::new("/r/d1/file"));
        assert!(!s.dirs.contains_key(Path::new("/r/d1")));
        assert!(s.dirs.contains_key(Path::new("/r/d1/sub")));
        s.invalidate(Path::new("/r/d1/sub"));
        assert!(!s.dirs.contains_key(Path::new("/r/d1/sub")));
        assert!(s.dirs.contains_key(Path::new("/r/d0")));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = WalkState::decode(&b);
        }
    }
}

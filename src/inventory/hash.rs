//! SHA-256 of files: streamed in 256 KiB reads (never loaded whole), through an already open
//! descriptor, and memoized by file identity so a file is hashed once per run.
//!
//! When the policy has family rules, the same read also looks for their signatures: each buffer
//! read is hashed and then searched while it is still in cache ([`digest_reader`]), so a file is
//! read once for both.

use std::collections::HashMap;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, RwLock};

use interdict_policy::{ContentMatch, ContentSearcher, Sha256};
use sha2::Digest as _;

/// The read buffer: each read is hashed, then searched for family signatures.
pub const CHUNK: usize = 256 * 1024;

/// What one read of a file yields: its digest and, when family signatures were looked for,
/// what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// SHA-256 of the whole file.
    pub sha256: Sha256,
    /// The family signatures it holds and its format (`None` when none were looked for).
    pub content: Option<ContentMatch>,
}

/// Hash everything readable from `reader`, returning the digest and the number of bytes.
pub fn sha256_reader(reader: impl Read) -> io::Result<(Sha256, u64)> {
    digest_reader(reader, None).map(|(d, n)| (d.sha256, n))
}

/// Hash everything readable from `reader` and, with a `searcher`, look for its signatures in the
/// same pass over each buffer. Returns the digest and the number of bytes.
pub fn digest_reader(
    mut reader: impl Read,
    searcher: Option<&ContentSearcher>,
) -> io::Result<(Digest, u64)> {
    let mut hasher = sha2::Sha256::new();
    let mut scan = searcher.map(ContentSearcher::scan);
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        if let Some(s) = &mut scan {
            s.feed(&buf[..n]);
        }
        total += n as u64;
    }
    Ok((
        Digest {
            sha256: Sha256(hasher.finalize().into()),
            content: scan.map(|s| s.finish()),
        },
        total,
    ))
}

/// The first bytes of `file` (its format's magic), as many as it has up to `head.len()`, with
/// positioned reads (the descriptor's offset is left as it is).
pub fn read_head(file: &File, head: &mut [u8]) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut n = 0;
    while n < head.len() {
        match file.read_at(&mut head[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// What a file holds for the policy's family rules, when its format and size could match one
/// (else `None`, nothing read beyond its first bytes): hashed and searched in one read through
/// `memo`, so that the digest asked for next is remembered.
pub fn family_content(
    policy: &interdict_policy::Policy,
    file: &File,
    meta: &Metadata,
    memo: &HashMemo,
) -> Option<ContentMatch> {
    let cs = policy.content_searcher()?;
    let mut head = [0u8; interdict_policy::FileFormat::MAGIC_BYTES];
    let n = read_head(file, &mut head).ok()?;
    if !policy.may_match_content(meta.len(), &head[..n]) {
        return None;
    }
    memo.digest_file_with(file, meta, Some(cs.clone()))
        .ok()?
        .0
        .content
}

/// Look for `searcher`'s signatures in `file` without hashing it, from its first byte with
/// positioned reads (the descriptor's offset is left as it is), in [`CHUNK`] reads; stops
/// reading once every signature has been found. For the exec guard, when no digest of the
/// file's size is banned: searching alone costs a fraction of hashing.
pub fn search_file(file: &File, searcher: &ContentSearcher) -> io::Result<ContentMatch> {
    use std::os::unix::fs::FileExt;
    let mut scan = searcher.scan();
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while !scan.complete() {
        let n = match file.read_at(&mut buf, at) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        scan.feed(&buf[..n]);
        at += n as u64;
    }
    Ok(scan.finish())
}

/// Open `path` for hashing only if it is a regular file: never blocks on a FIFO, never becomes a
/// controlling terminal, and checks the type on the open descriptor (the path may have changed
/// since it was listed). With `follow = false` a final symlink is refused; `/proc/PID/exe` needs
/// `follow = true`.
pub fn open_regular(path: &Path, follow: bool) -> io::Result<(File, Metadata)> {
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok((f, meta))
}

/// Identity of a file's contents for caching: a change to any field means "hash again".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i128,
}

impl FileKey {
    /// The key of a file from its metadata.
    pub fn of(m: &Metadata) -> FileKey {
        FileKey {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }
}

type Waiter = Arc<(Mutex<Option<Option<Digest>>>, Condvar)>;

enum Slot {
    Done(Digest),
    Pending(Waiter),
}

/// True when `d` answers a request that needs the signatures of `want` (if any).
fn fresh(d: &Digest, want: Option<&ContentSearcher>) -> bool {
    match want {
        None => true,
        Some(s) => d
            .content
            .as_ref()
            .is_some_and(|c| c.searcher() == s.fingerprint()),
    }
}

impl FileKey {
    /// The key of an open descriptor (`fstat`), or `None` if it cannot be read.
    pub fn of_fd(fd: &impl std::os::fd::AsFd) -> Option<FileKey> {
        let st = rustix::fs::fstat(fd).ok()?;
        Some(FileKey {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime_ns: i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec),
            ctime_ns: i128::from(st.st_ctime) * 1_000_000_000 + i128::from(st.st_ctime_nsec),
        })
    }
}

/// A thread-safe memo of digests by [`FileKey`]: hard links, the same interpreter behind many
/// processes, and a symlink and its target are hashed once. Concurrent requests for one file
/// share one computation: the first hashes, the others wait for its result.
///
/// With a [`ContentSearcher`] set ([`HashMemo::set_searcher`]), every file read also has its
/// family signatures looked for, and the result is remembered beside the digest. A remembered
/// digest without that result (from the persistent cache, or made with another policy's
/// signatures) still answers [`HashMemo::hash_file`]; [`HashMemo::digest_file`] reads such a file
/// again.
#[derive(Default)]
pub struct HashMemo {
    map: Mutex<HashMap<FileKey, Slot>>,
    searcher: RwLock<Option<Arc<ContentSearcher>>>,
    /// Counts every digest remembered: the persistent cache is written again only when it moved.
    changes: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for HashMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.map.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("HashMemo").field("entries", &n).finish()
    }
}

impl HashMemo {
    /// Look for these family signatures in every file read from now on (`None`: only hash).
    /// Usually `policy.content_searcher().cloned()`, set again when the policy changes.
    pub fn set_searcher(&self, searcher: Option<Arc<ContentSearcher>>) {
        *self.searcher.write().expect("hash memo poisoned") = searcher;
    }

    /// The signatures being looked for.
    pub fn searcher(&self) -> Option<Arc<ContentSearcher>> {
        self.searcher.read().expect("hash memo poisoned").clone()
    }

    /// Hash an open file, or return the digest remembered (or being computed) for its identity.
    /// The second value is true when no hashing was done by this call. The file is re-`fstat`ed
    /// after hashing; if it changed meanwhile the digest is returned but not remembered.
    pub fn hash_file(&self, file: &File, meta: &Metadata) -> io::Result<(Sha256, bool)> {
        self.digest_inner(file, meta, false)
            .map(|(d, cached)| (d.sha256, cached))
    }

    /// Like [`HashMemo::hash_file`], with what the file holds when a searcher is set: a
    /// remembered digest made without the current signatures is not enough, the file is read
    /// again (once).
    pub fn digest_file(&self, file: &File, meta: &Metadata) -> io::Result<(Digest, bool)> {
        self.digest_inner(file, meta, true)
    }

    /// Like [`HashMemo::digest_file`] with these signatures rather than the ones set: the exec
    /// guard passes those of the policy it decides with, which a reload may have changed since
    /// the memo's were set.
    pub fn digest_file_with(
        &self,
        file: &File,
        meta: &Metadata,
        searcher: Option<Arc<ContentSearcher>>,
    ) -> io::Result<(Digest, bool)> {
        self.digest_searching(file, meta, searcher, true)
    }

    fn digest_inner(
        &self,
        file: &File,
        meta: &Metadata,
        need_content: bool,
    ) -> io::Result<(Digest, bool)> {
        self.digest_searching(file, meta, self.searcher(), need_content)
    }

    fn digest_searching(
        &self,
        file: &File,
        meta: &Metadata,
        searcher: Option<Arc<ContentSearcher>>,
        need_content: bool,
    ) -> io::Result<(Digest, bool)> {
        let key = FileKey::of(meta);
        let want = if need_content {
            searcher.as_deref()
        } else {
            None
        };
        let waiter = {
            let mut map = self.map.lock().expect("hash memo poisoned");
            match map.get(&key) {
                Some(Slot::Done(d)) if fresh(d, want) => return Ok((d.clone(), true)),
                Some(Slot::Pending(w)) => w.clone(),
                _ => {
                    let w: Waiter = Arc::new((Mutex::new(None), Condvar::new()));
                    map.insert(key, Slot::Pending(w.clone()));
                    drop(map);
                    return self.compute(file, key, w, searcher.as_deref());
                }
            }
        };
        let (lock, cv) = &*waiter;
        let mut done = lock.lock().expect("hash memo poisoned");
        while done.is_none() {
            done = cv.wait(done).expect("hash memo poisoned");
        }
        if let Some(Some(d)) = &*done {
            if fresh(d, want) {
                return Ok((d.clone(), true));
            }
        }
        drop(done);
        // The shared computation failed, the file changed under it, or it was made without the
        // signatures asked for: read it on our own.
        digest_reader(file, searcher.as_deref()).map(|(d, _)| (d, false))
    }

    fn compute(
        &self,
        file: &File,
        key: FileKey,
        w: Waiter,
        searcher: Option<&ContentSearcher>,
    ) -> io::Result<(Digest, bool)> {
        let result = digest_reader(file, searcher)
            .and_then(|(d, _)| Ok((d, FileKey::of(&file.metadata()?) == key)));
        let shared = match &result {
            Ok((d, true)) => Some(d.clone()),
            _ => None,
        };
        {
            let mut map = self.map.lock().expect("hash memo poisoned");
            match &shared {
                Some(d) => map.insert(key, Slot::Done(d.clone())),
                None => map.remove(&key),
            };
        }
        if shared.is_some() {
            self.changes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let (lock, cv) = &*w;
        *lock.lock().expect("hash memo poisoned") = Some(shared);
        cv.notify_all();
        result.map(|(d, _)| (d, false))
    }

    /// Remember digests computed earlier (from the persistent cache), with what the family
    /// search found in each where it was stored.
    pub fn preload(&self, entries: impl IntoIterator<Item = (FileKey, Digest)>) {
        let mut map = self.map.lock().expect("hash memo poisoned");
        for (k, d) in entries {
            map.entry(k).or_insert(Slot::Done(d));
        }
    }

    /// Every finished digest, for the persistent cache.
    pub fn entries(&self) -> Vec<(FileKey, Digest)> {
        let map = self.map.lock().expect("hash memo poisoned");
        map.iter()
            .filter_map(|(k, s)| match s {
                Slot::Done(d) => Some((*k, d.clone())),
                Slot::Pending(_) => None,
            })
            .collect()
    }

    /// How many digests have been remembered so far (it only grows): equal readings mean
    /// nothing new to store.
    pub fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The digest remembered for `key`, if its computation is done.
    pub fn get(&self, key: &FileKey) -> Option<Sha256> {
        match self.map.lock().expect("hash memo poisoned").get(key) {
            Some(Slot::Done(d)) => Some(d.sha256),
            _ => None,
        }
    }

    /// The digest and content remembered for `key`, if done and made with the current
    /// signatures (when a searcher is set).
    pub fn get_digest(&self, key: &FileKey) -> Option<Digest> {
        let searcher = self.searcher();
        match self.map.lock().expect("hash memo poisoned").get(key) {
            Some(Slot::Done(d)) if fresh(d, searcher.as_deref()) => Some(d.clone()),
            _ => None,
        }
    }

    /// Open `path` as a regular file and hash it through the memo.
    pub fn hash_path(&self, path: &Path, follow: bool) -> io::Result<Sha256> {
        let (f, m) = open_regular(path, follow)?;
        self.hash_file(&f, &m).map(|(d, _)| d)
    }

    /// Open `path` as a regular file and read it through the memo, with its content.
    pub fn digest_path(&self, path: &Path, follow: bool) -> io::Result<Digest> {
        let (f, m) = open_regular(path, follow)?;
        self.digest_file(&f, &m).map(|(d, _)| d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest() {
        let (d, n) = sha256_reader(&b"abc"[..]).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            d.to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn search_alone_finds_what_the_hashing_read_finds_and_leaves_the_offset() {
        use std::io::{Seek, SeekFrom, Write};
        let (policy, _) = interdict_policy::Policy::load(
            "t.toml",
            "[policy]\nname = \"t\"\nversion = \"1\"\nmode = \"enforce\"\n[[rule]]\nid = \"f\"\nname = \"f\"\nrisk = \"high\"\nreason = \"r\"\naction = \"block\"\n[rule.match]\ncontains_all = [\"signature one\", \"signature two\"]\n",
            &interdict_policy::NoIncludes,
        )
        .unwrap();
        let cs = policy.content_searcher().unwrap();
        let mut f = tempfile::tempfile().unwrap();
        // The second signature spans the boundary between two reads.
        let mut body = b"\x7fELF\x02\x01\x01\x00 signature one ".to_vec();
        body.resize(CHUNK - 5, b'.');
        body.extend_from_slice(b"signature two and more");
        f.write_all(&body).unwrap();
        f.seek(SeekFrom::Start(7)).unwrap();
        let found = search_file(&f, cs).unwrap();
        assert_eq!(found.found_count(), 2);
        assert_eq!(f.stream_position().unwrap(), 7, "offset untouched");
        f.seek(SeekFrom::Start(0)).unwrap();
        let (d, _) = digest_reader(&f, Some(cs)).unwrap();
        assert_eq!(d.content.as_ref(), Some(&found));
        f.set_len(CHUNK as u64 - 1).unwrap();
        assert_eq!(search_file(&f, cs).unwrap().found_count(), 1);
    }

    #[test]
    fn concurrent_requests_share_one_computation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        std::fs::write(&p, vec![7u8; 8 << 20]).unwrap();
        let memo = HashMemo::default();
        let hashed_here: Vec<bool> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let (f, m) = open_regular(&p, false).unwrap();
                        let (d, reused) = memo.hash_file(&f, &m).unwrap();
                        (d, !reused)
                    })
                })
                .collect();
            let results: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
            assert!(results.windows(2).all(|w| w[0].0 == w[1].0));
            results.into_iter().map(|r| r.1).collect()
        });
        assert_eq!(
            hashed_here.iter().filter(|h| **h).count(),
            1,
            "{hashed_here:?}"
        );
    }

    #[test]
    fn refuses_fifo_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let err = open_regular(&fifo, false).unwrap_err();
        assert_eq!(err.to_string(), "not a regular file");
    }
}

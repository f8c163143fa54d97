//! The persistent hash cache: digests by file identity (device, inode, size, mtime ns, ctime ns),
//! so that a rescan hashes only what changed and a restart does not rehash the world.
//!
//! File format (little-endian): the magic `IDHC0001`, the record count (u64), the records (88
//! bytes each: dev u64, ino u64, size u64, mtime ns i128, ctime ns i128, SHA-256), then the
//! SHA-256 of everything before it. A file that is short, long, of another version or whose
//! checksum does not match is rejected whole and rebuilt: never trusted in part.

use std::path::Path;

use interdict_policy::Sha256;
use sha2::Digest;

use crate::inventory::hash::FileKey;

const MAGIC: &[u8; 8] = b"IDHC0001";
const RECORD: usize = 8 * 3 + 16 * 2 + 32;

/// Why a cache file was not used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CacheError {
    /// No cache yet.
    #[error("no cache file")]
    Missing,
    /// The file is damaged or of another format; it will be rebuilt.
    #[error("cache file rejected: {0}")]
    Corrupt(&'static str),
    /// It could not be read.
    #[error("cache file unreadable: {0}")]
    Io(String),
}

/// Encode entries.
pub fn encode(entries: &[(FileKey, Sha256)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entries.len() * RECORD + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (k, d) in entries {
        out.extend_from_slice(&k.dev.to_le_bytes());
        out.extend_from_slice(&k.ino.to_le_bytes());
        out.extend_from_slice(&k.size.to_le_bytes());
        out.extend_from_slice(&k.mtime_ns.to_le_bytes());
        out.extend_from_slice(&k.ctime_ns.to_le_bytes());
        out.extend_from_slice(&d.0);
    }
    let sum: [u8; 32] = sha2::Sha256::digest(&out).into();
    out.extend_from_slice(&sum);
    out
}

/// Decode a cache file's bytes, checking everything.
pub fn decode(bytes: &[u8]) -> Result<Vec<(FileKey, Sha256)>, CacheError> {
    if bytes.len() < 16 + 32 {
        return Err(CacheError::Corrupt("truncated"));
    }
    if &bytes[..8] != MAGIC {
        return Err(CacheError::Corrupt("unknown format"));
    }
    let n = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
    let body_len = n
        .checked_mul(RECORD)
        .and_then(|b| b.checked_add(16))
        .ok_or(CacheError::Corrupt("bad length"))?;
    if bytes.len() != body_len + 32 {
        return Err(CacheError::Corrupt("truncated or extended"));
    }
    let sum: [u8; 32] = sha2::Sha256::digest(&bytes[..body_len]).into();
    if sum[..] != bytes[body_len..] {
        return Err(CacheError::Corrupt("checksum mismatch"));
    }
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let i128_at =
        |b: &[u8], o: usize| i128::from_le_bytes(b[o..o + 16].try_into().expect("16 bytes"));
    Ok(bytes[16..body_len]
        .chunks_exact(RECORD)
        .map(|r| {
            let mut d = [0u8; 32];
            d.copy_from_slice(&r[56..88]);
            (
                FileKey {
                    dev: u64_at(r, 0),
                    ino: u64_at(r, 8),
                    size: u64_at(r, 16),
                    mtime_ns: i128_at(r, 24),
                    ctime_ns: i128_at(r, 40),
                },
                Sha256(d),
            )
        })
        .collect())
}

/// Read and check a cache file.
pub fn load(path: &Path) -> Result<Vec<(FileKey, Sha256)>, CacheError> {
    match std::fs::read(path) {
        Ok(b) => decode(&b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CacheError::Missing),
        Err(e) => Err(CacheError::Io(crate::io_reason(&e))),
    }
}

/// Write a cache file atomically (temporary file, fsync, rename), root-only.
pub fn save(path: &Path, entries: &[(FileKey, Sha256)]) -> std::io::Result<()> {
    crate::fsutil::write_atomic(path, &encode(entries), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(i: u64) -> FileKey {
        FileKey {
            dev: 1,
            ino: i,
            size: i * 10,
            mtime_ns: -5 + i as i128,
            ctime_ns: 1 << 100,
        }
    }

    #[test]
    fn round_trip_and_rejects_damage() {
        let entries: Vec<_> = (0..100).map(|i| (key(i), Sha256([i as u8; 32]))).collect();
        let bytes = encode(&entries);
        assert_eq!(decode(&bytes).unwrap(), entries);
        assert_eq!(
            decode(&bytes[..bytes.len() - 1]),
            Err(CacheError::Corrupt("truncated or extended"))
        );
        let mut flipped = bytes.clone();
        flipped[100] ^= 1;
        assert_eq!(
            decode(&flipped),
            Err(CacheError::Corrupt("checksum mismatch"))
        );
        assert_eq!(decode(b"garbage"), Err(CacheError::Corrupt("truncated")));
        let mut other = bytes.clone();
        other[7] = b'9';
        assert_eq!(decode(&other), Err(CacheError::Corrupt("unknown format")));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode(&b);
        }
    }
}

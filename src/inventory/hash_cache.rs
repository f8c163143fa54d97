//! The persistent hash cache: digests by file identity (device, inode, size, mtime ns, ctime ns),
//! with what the policy's family search found in each file, so that a rescan reads only what
//! changed and a restart does not read the world again.
//!
//! File format (little-endian): the magic `IDHC0002`, the record count (u64), the records, then
//! the SHA-256 of everything before it. A record is dev u64, ino u64, size u64, mtime ns i128,
//! ctime ns i128, the SHA-256 (88 bytes), then one byte: 0 when no family search was made, or 1
//! followed by the searcher's fingerprint (u64), the format (u8: 0 none, else 1 + its index in
//! [`FileFormat::ALL`]), the number of words of the found-signature bit set (u8) and the words
//! (u64 each). A file that is short, long, of another version or whose checksum does not match
//! is rejected whole and rebuilt: never trusted in part. Files of the first version
//! (`IDHC0001`, no family search results) are still read.

use std::path::Path;

use interdict_policy::{ContentMatch, FileFormat, Sha256};
use sha2::Digest as _;

use crate::inventory::hash::{Digest, FileKey};
use crate::inventory::records::LeReader;

const MAGIC_V1: &[u8; 8] = b"IDHC0001";
const MAGIC: &[u8; 8] = b"IDHC0002";
const FIXED: usize = 8 * 3 + 16 * 2 + 32;

/// Why a cache file was not used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
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
pub fn encode(entries: &[(FileKey, Digest)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entries.len() * (FIXED + 19) + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (k, d) in entries {
        out.extend_from_slice(&k.dev.to_le_bytes());
        out.extend_from_slice(&k.ino.to_le_bytes());
        out.extend_from_slice(&k.size.to_le_bytes());
        out.extend_from_slice(&k.mtime_ns.to_le_bytes());
        out.extend_from_slice(&k.ctime_ns.to_le_bytes());
        out.extend_from_slice(&d.sha256.0);
        match &d.content {
            // A bit set longer than 255 words (16,320 signatures) is not stored: read again.
            Some(c) if c.found_bits().len() <= usize::from(u8::MAX) => {
                out.push(1);
                out.extend_from_slice(&c.searcher().to_le_bytes());
                let format = c
                    .format()
                    .and_then(|f| FileFormat::ALL.iter().position(|a| *a == f))
                    .map_or(0, |i| i as u8 + 1);
                out.push(format);
                out.push(c.found_bits().len() as u8);
                for w in c.found_bits() {
                    out.extend_from_slice(&w.to_le_bytes());
                }
            }
            _ => out.push(0),
        }
    }
    let sum: [u8; 32] = sha2::Sha256::digest(&out).into();
    out.extend_from_slice(&sum);
    out
}

/// Decode a cache file's bytes, checking everything.
pub fn decode(bytes: &[u8]) -> Result<Vec<(FileKey, Digest)>, CacheError> {
    if bytes.len() < 16 + 32 {
        return Err(CacheError::Corrupt("truncated"));
    }
    let v1 = match &bytes[..8] {
        m if m == MAGIC => false,
        m if m == MAGIC_V1 => true,
        _ => return Err(CacheError::Corrupt("unknown format")),
    };
    let body_len = bytes.len() - 32;
    let sum: [u8; 32] = sha2::Sha256::digest(&bytes[..body_len]).into();
    if sum[..] != bytes[body_len..] {
        return Err(CacheError::Corrupt("checksum mismatch"));
    }
    let n = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    // Every record takes at least FIXED (+1) bytes: a count that cannot fit is a lie.
    let min = if v1 { FIXED } else { FIXED + 1 } as u64;
    if n.checked_mul(min)
        .is_none_or(|m| m > (body_len - 16) as u64)
    {
        return Err(CacheError::Corrupt("bad length"));
    }
    let mut r = LeReader::new(
        &bytes[16..body_len],
        0,
        CacheError::Corrupt("truncated record"),
    );
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let key = FileKey {
            dev: r.u64()?,
            ino: r.u64()?,
            size: r.u64()?,
            mtime_ns: r.i128()?,
            ctime_ns: r.i128()?,
        };
        let sha256 = Sha256(r.array()?);
        let content = if v1 || r.u8()? == 0 {
            None
        } else {
            let searcher = r.u64()?;
            let format = match r.u8()? {
                0 => None,
                i => Some(
                    *FileFormat::ALL
                        .get(usize::from(i) - 1)
                        .ok_or(CacheError::Corrupt("unknown file format"))?,
                ),
            };
            let words = r.u8()?;
            let found = (0..words).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
            Some(ContentMatch::from_parts(searcher, format, found))
        };
        out.push((key, Digest { sha256, content }));
    }
    if r.remaining() != 0 {
        return Err(CacheError::Corrupt("truncated or extended"));
    }
    Ok(out)
}

/// Read and check a cache file.
pub fn load(path: &Path) -> Result<Vec<(FileKey, Digest)>, CacheError> {
    match std::fs::read(path) {
        Ok(b) => decode(&b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CacheError::Missing),
        Err(e) => Err(CacheError::Io(crate::io_reason(&e))),
    }
}

/// Write a cache file atomically (temporary file, fsync, rename), root-only.
pub fn save(path: &Path, entries: &[(FileKey, Digest)]) -> std::io::Result<()> {
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
            size: i.wrapping_mul(10),
            mtime_ns: -5 + i as i128,
            ctime_ns: 1 << 100,
        }
    }

    fn entry(i: u64) -> (FileKey, Digest) {
        let content = match i % 3 {
            0 => None,
            1 => Some(ContentMatch::from_parts(
                7,
                Some(FileFormat::Elf),
                vec![i, 3],
            )),
            _ => Some(ContentMatch::from_parts(9, None, vec![])),
        };
        (
            key(i),
            Digest {
                sha256: Sha256([i as u8; 32]),
                content,
            },
        )
    }

    #[test]
    fn round_trip_and_rejects_damage() {
        let entries: Vec<_> = (0..100).map(entry).collect();
        let bytes = encode(&entries);
        assert_eq!(decode(&bytes).unwrap(), entries);
        assert_eq!(
            decode(&bytes[..bytes.len() - 1]),
            Err(CacheError::Corrupt("checksum mismatch"))
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

    #[test]
    fn a_count_that_does_not_match_the_records_is_rejected() {
        let entries: Vec<_> = (0..10).map(entry).collect();
        for n in [9u64, 11, u64::MAX] {
            let mut bytes = encode(&entries);
            bytes.truncate(bytes.len() - 32);
            bytes[8..16].copy_from_slice(&n.to_le_bytes());
            let sum: [u8; 32] = sha2::Sha256::digest(&bytes).into();
            bytes.extend_from_slice(&sum);
            assert!(
                matches!(decode(&bytes), Err(CacheError::Corrupt(_))),
                "count {n} accepted"
            );
        }
    }

    #[test]
    fn first_version_files_are_still_read() {
        let mut v1 = Vec::new();
        v1.extend_from_slice(MAGIC_V1);
        v1.extend_from_slice(&2u64.to_le_bytes());
        for i in 0..2u64 {
            let (k, d) = entry(i);
            v1.extend_from_slice(&k.dev.to_le_bytes());
            v1.extend_from_slice(&k.ino.to_le_bytes());
            v1.extend_from_slice(&k.size.to_le_bytes());
            v1.extend_from_slice(&k.mtime_ns.to_le_bytes());
            v1.extend_from_slice(&k.ctime_ns.to_le_bytes());
            v1.extend_from_slice(&d.sha256.0);
        }
        let sum: [u8; 32] = sha2::Sha256::digest(&v1).into();
        v1.extend_from_slice(&sum);
        let got = decode(&v1).unwrap();
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|(_, d)| d.content.is_none()));
        assert_eq!(got[1].0, key(1));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode(&b);
        }

        #[test]
        fn any_entries_round_trip(ids in proptest::collection::vec(any::<u64>(), 0..50)) {
            let entries: Vec<_> = ids.into_iter().map(entry).collect();
            prop_assert_eq!(decode(&encode(&entries)).unwrap(), entries);
        }
    }
}

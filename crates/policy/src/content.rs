//! Family rules: byte signatures searched for in the same pass that hashes a file.
//!
//! The distinct signatures of every rule are compiled once ([`ContentSearcher`]). A file is fed
//! to a [`ContentScan`] buffer by buffer, in the order it is read; the scan remembers which
//! signatures occurred and the file's format (from its first bytes), and is turned into a
//! [`ContentMatch`] at the end, which the policy evaluates like any other fact.
//!
//! Up to [`EACH_MAX`] signatures, each is looked for on its own with `memchr`'s SIMD substring
//! search (rare-byte prefilter), and no longer once found: on executables this is several times
//! faster than a multi-pattern automaton, whose prefilter keys on the first bytes of each
//! signature ("get", "ten" are everywhere in binaries). With more signatures, one Aho-Corasick
//! automaton searches for all of them at once: leftmost-longest (which keeps its prefilter), a
//! signature contained in a longer one counting as found whenever the longer one is, and after a
//! match the search resuming inside it only when some other signature could begin there.
//!
//! Signatures that span two buffers are found: the last `longest signature - 1` bytes of each
//! buffer are kept and searched together with the start of the next one.

use std::hash::{Hash, Hasher};

use aho_corasick::{AhoCorasick, Input, MatchKind};
use memchr::memmem::Finder;
use serde::{Deserialize, Serialize};

use crate::model::{FileFormat, Rule};

/// One family rule, compiled: the ids of its signatures in the automaton and the formats it
/// looks into.
#[derive(Debug, Clone)]
pub(crate) struct Family {
    /// Index of the rule in the policy.
    pub rule: u32,
    /// Pattern ids that must all be found.
    pub patterns: Vec<u32>,
    /// File formats the rule applies to.
    pub formats: Vec<FileFormat>,
}

/// Up to this many distinct signatures, each is searched for on its own (`memmem`); beyond, one
/// automaton searches for all.
pub const EACH_MAX: usize = 12;

#[derive(Debug, Clone)]
enum Engine {
    /// One SIMD substring finder per signature.
    Each(Vec<Finder<'static>>),
    /// One automaton for all.
    Automaton(AhoCorasick),
}

/// Every signature of a policy's family rules, compiled. Shared (it is `Send + Sync`); each file
/// gets its own [`ContentScan`].
#[derive(Debug, Clone)]
pub struct ContentSearcher {
    engine: Engine,
    /// The bytes of each pattern, by pattern id.
    patterns: Vec<Vec<u8>>,
    /// For each pattern: every pattern that occurs inside it (itself included), as a bit set.
    implied: Vec<Vec<u64>>,
    /// For each pattern p: the other patterns that may begin inside a match of p and run past
    /// its end, with how far back from the end they would begin (longest first).
    overlap: Vec<Vec<(usize, u32)>>,
    /// The longest pattern, in bytes.
    max_len: usize,
    /// Identifies the signature set, so that a [`ContentMatch`] made by another policy is never
    /// read against this one.
    fingerprint: u64,
    pub(crate) families: Vec<Family>,
}

/// What one file held: its format and which signatures occurred in it. Only meaningful to the
/// [`ContentSearcher`] that made it (see [`ContentMatch::searcher`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContentMatch {
    searcher: u64,
    format: Option<FileFormat>,
    found: Vec<u64>,
}

impl ContentMatch {
    /// The fingerprint of the signature set that was searched for.
    pub fn searcher(&self) -> u64 {
        self.searcher
    }

    /// The file's format, from its first bytes; `None` when it is none of the known ones.
    pub fn format(&self) -> Option<FileFormat> {
        self.format
    }

    /// How many distinct signatures occurred.
    pub fn found_count(&self) -> usize {
        self.found.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Which signatures occurred, as a bit set (bit `i` of word `i / 64`: signature `i` of the
    /// searcher), for storing a match beside a file's digest.
    pub fn found_bits(&self) -> &[u64] {
        &self.found
    }

    /// A match stored earlier ([`ContentMatch::searcher`], [`ContentMatch::format`],
    /// [`ContentMatch::found_bits`]). It is read only by the searcher whose fingerprint it
    /// carries: a match stored with another policy's signatures is never taken as this one's.
    pub fn from_parts(searcher: u64, format: Option<FileFormat>, found: Vec<u64>) -> ContentMatch {
        ContentMatch {
            searcher,
            format,
            found,
        }
    }

    pub(crate) fn has(&self, pattern: u32) -> bool {
        (pattern as usize) < self.found.len() * 64 && has_bit(&self.found, pattern as usize)
    }
}

fn has_bit(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

fn set_bit(bits: &mut [u64], i: usize) {
    bits[i / 64] |= 1 << (i % 64);
}

impl ContentSearcher {
    /// Compile the family rules of `rules`; `None` when no rule has `contains_all`.
    pub(crate) fn build(rules: &[Rule]) -> Option<ContentSearcher> {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut families = Vec::new();
        for (ri, r) in rules.iter().enumerate() {
            if r.selectors.contains_all.is_empty() {
                continue;
            }
            let mut ids = Vec::new();
            for sig in &r.selectors.contains_all {
                let id = match patterns.iter().position(|p| *p == sig.bytes) {
                    Some(i) => i,
                    None => {
                        patterns.push(sig.bytes.clone());
                        patterns.len() - 1
                    }
                };
                ids.push(id as u32);
            }
            families.push(Family {
                rule: ri as u32,
                patterns: ids,
                formats: r.selectors.contains_in.clone(),
            });
        }
        if families.is_empty() {
            return None;
        }
        let words = patterns.len().div_ceil(64);
        let contains = |hay: &[u8], needle: &[u8]| {
            needle.len() <= hay.len() && hay.windows(needle.len()).any(|w| w == needle)
        };
        let implied = patterns
            .iter()
            .map(|p| {
                let mut bits = vec![0u64; words];
                for (j, q) in patterns.iter().enumerate() {
                    if contains(p, q) {
                        set_bit(&mut bits, j);
                    }
                }
                bits
            })
            .collect();
        // After a match of p ending at e, another pattern q may begin inside p and run past e
        // only if a proper suffix of p is a proper prefix of q.
        let overlap = patterns
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut v = Vec::new();
                for k in (1..p.len()).rev() {
                    for (j, q) in patterns.iter().enumerate() {
                        if j != i && q.len() > k && q[..k] == p[p.len() - k..] {
                            v.push((k, j as u32));
                        }
                    }
                }
                v
            })
            .collect();
        let max_len = patterns.iter().map(Vec::len).max().unwrap_or(1);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        patterns.hash(&mut h);
        let fingerprint = h.finish();
        let engine = if patterns.len() <= EACH_MAX {
            Engine::Each(
                patterns
                    .iter()
                    .map(|p| Finder::new(p.as_slice()).into_owned())
                    .collect(),
            )
        } else {
            Engine::Automaton(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&patterns)
                    .expect("signatures are at most 256 bytes: the automaton always builds"),
            )
        };
        Some(ContentSearcher {
            engine,
            patterns,
            implied,
            overlap,
            max_len,
            fingerprint,
            families,
        })
    }

    /// Identifies this signature set.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Number of distinct signatures.
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// True when there is no signature (never: a searcher is only built for family rules).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The longest signature, in bytes: the overlap kept between two buffers is one less.
    pub fn max_signature_len(&self) -> usize {
        self.max_len
    }

    /// The signatures (as bytes) that `m` says occurred; empty when `m` was made by another
    /// searcher.
    pub fn found_signatures<'a>(&'a self, m: &ContentMatch) -> Vec<&'a [u8]> {
        if m.searcher != self.fingerprint {
            return Vec::new();
        }
        (0..self.patterns.len())
            .filter(|&i| m.has(i as u32))
            .map(|i| self.patterns[i].as_slice())
            .collect()
    }

    /// True when a file of `size` bytes whose first bytes are `head` (up to
    /// [`FileFormat::MAGIC_BYTES`], fewer for a shorter file) could be identified by some family
    /// rule: its format is one such a rule looks into, and it is at least as long as each of that
    /// rule's signatures. When false, reading the file for signatures cannot change a decision
    /// (the exec guard then leaves it unread).
    pub fn may_match(&self, size: u64, head: &[u8]) -> bool {
        let Some(format) = FileFormat::detect(head) else {
            return false;
        };
        self.families.iter().any(|f| {
            f.formats.contains(&format)
                && f.patterns
                    .iter()
                    .all(|&p| self.patterns[p as usize].len() as u64 <= size)
        })
    }

    /// Start looking into one file.
    pub fn scan(&self) -> ContentScan<'_> {
        ContentScan {
            s: self,
            found: vec![0; self.patterns.len().div_ceil(64)],
            missing: self.patterns.len(),
            head: Vec::with_capacity(FileFormat::MAGIC_BYTES),
            carry: Vec::with_capacity(self.max_len),
            window: Vec::with_capacity(2 * self.max_len),
        }
    }

    /// Look into a whole file held in memory (tests, small files).
    pub fn scan_bytes(&self, bytes: &[u8]) -> ContentMatch {
        let mut s = self.scan();
        s.feed(bytes);
        s.finish()
    }
}

/// The search through one file, fed in the order the file is read. Memory: the signatures'
/// bit set and twice the longest signature, whatever the file's size.
#[derive(Debug)]
pub struct ContentScan<'s> {
    s: &'s ContentSearcher,
    found: Vec<u64>,
    missing: usize,
    head: Vec<u8>,
    /// The last `max_len - 1` bytes fed, for signatures that span two buffers.
    carry: Vec<u8>,
    /// Scratch: `carry` followed by the start of the next buffer.
    window: Vec<u8>,
}

impl ContentScan<'_> {
    /// Feed the next bytes of the file (any size, including empty). Once its first bytes show a
    /// format none of the family rules looks into, nothing more is searched ([`Self::complete`]).
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.head.len() < FileFormat::MAGIC_BYTES {
            let take = (FileFormat::MAGIC_BYTES - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
            // A file of a format no family rule looks into holds nothing any rule asks for:
            // the rest is not searched (most of an install tree is data, not executables).
            if self.head.len() == FileFormat::MAGIC_BYTES {
                let format = FileFormat::detect(&self.head);
                let looked_into = self
                    .s
                    .families
                    .iter()
                    .any(|f| format.is_some_and(|x| f.formats.contains(&x)));
                if !looked_into {
                    self.missing = 0;
                }
            }
        }
        if self.missing == 0 || chunk.is_empty() {
            return;
        }
        let keep = self.s.max_len - 1;
        if !self.carry.is_empty() {
            // Signatures that start in the carried bytes and end in this chunk.
            let mut window = std::mem::take(&mut self.window);
            window.clear();
            window.extend_from_slice(&self.carry);
            window.extend_from_slice(&chunk[..keep.min(chunk.len())]);
            self.search(&window);
            self.window = window;
        }
        self.search(chunk);
        if keep == 0 {
            return;
        }
        if chunk.len() >= keep {
            self.carry.clear();
            self.carry.extend_from_slice(&chunk[chunk.len() - keep..]);
        } else {
            self.carry.extend_from_slice(chunk);
            let excess = self.carry.len().saturating_sub(keep);
            self.carry.drain(..excess);
        }
    }

    fn search(&mut self, hay: &[u8]) {
        let ac = match &self.s.engine {
            Engine::Each(finders) => {
                for (i, f) in finders.iter().enumerate() {
                    if !has_bit(&self.found, i) && f.find(hay).is_some() {
                        set_bit(&mut self.found, i);
                        self.missing -= 1;
                    }
                }
                return;
            }
            Engine::Automaton(ac) => ac,
        };
        let mut at = 0;
        while at < hay.len() && self.missing > 0 {
            let Some(m) = ac.find(Input::new(hay).range(at..)) else {
                return;
            };
            let p = m.pattern().as_usize();
            for (w, bits) in self.s.implied[p].iter().enumerate() {
                let new = bits & !self.found[w];
                if new != 0 {
                    self.found[w] |= new;
                    self.missing -= new.count_ones() as usize;
                }
            }
            // Step back only for a signature still missing that may begin inside this match.
            let back = self.s.overlap[p]
                .iter()
                .find(|(_, q)| !has_bit(&self.found, *q as usize))
                .map_or(0, |(k, _)| *k);
            at = (m.end() - back).max(m.start() + 1);
        }
    }

    /// True when every signature has been found: the rest of the file need not be searched
    /// (the caller may go on hashing it).
    pub fn complete(&self) -> bool {
        self.missing == 0
    }

    /// What the file held.
    pub fn finish(self) -> ContentMatch {
        ContentMatch {
            searcher: self.s.fingerprint,
            format: FileFormat::detect(&self.head),
            found: self.found,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Signature;

    fn searcher(sigs: &[&str]) -> ContentSearcher {
        let text = format!(
            "[policy]\nname = \"t\"\nversion = \"1\"\nmode = \"enforce\"\n[[rule]]\nid = \"r\"\nname = \"r\"\nrisk = \"low\"\nreason = \"r\"\naction = \"report\"\n[rule.match]\ncontains_all = [{}]\n",
            sigs.iter()
                .map(|s| format!("'{s}'"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let (doc, _) = crate::read_policy("t.toml", &text, &crate::NoIncludes).unwrap();
        ContentSearcher::build(&doc.rules).unwrap()
    }

    fn found(s: &ContentSearcher, m: &ContentMatch) -> Vec<String> {
        (0..s.len())
            .filter(|&i| m.has(i as u32))
            .map(|i| String::from_utf8_lossy(&s.patterns[i]).into_owned())
            .collect()
    }

    #[test]
    fn overlapping_and_nested_signatures_are_all_found() {
        let s = searcher(&["abcdefgh", "efghijkl", "bcdefg12", "cdefghij"]);
        let m = s.scan_bytes(b"\x7fELF\x02\x01\x01\x00xxabcdefghijklxx");
        assert_eq!(found(&s, &m), ["abcdefgh", "efghijkl", "cdefghij"]);
        let s = searcher(&["claude-code", "claude-code-2025"]);
        let m = s.scan_bytes(b"\x7fELF\x02\x01\x01\x00..claude-code-2025..");
        assert_eq!(m.found_count(), 2);
    }

    #[test]
    fn a_file_of_a_format_no_rule_looks_into_is_not_searched() {
        let s = searcher(&["claude-code"]);
        let mut scan = s.scan();
        scan.feed(b"plain da");
        assert!(
            scan.complete(),
            "nothing left to look for after the first bytes"
        );
        scan.feed(b"ta holding claude-code");
        let m = scan.finish();
        assert_eq!((m.found_count(), m.format()), (0, None));
        // The same bytes in an executable are found, even when its first bytes come one by one.
        let mut scan = s.scan();
        for b in b"\x7fELF\x02\x01\x01\x00" {
            scan.feed(std::slice::from_ref(b));
        }
        scan.feed(b"holding claude-code");
        assert_eq!(scan.finish().found_count(), 1);
    }

    #[test]
    fn a_signature_split_across_every_possible_boundary_is_found() {
        let s = searcher(&["\\x00\\x01needle\\xff"]);
        let mut file = b"\x7fELF\x02\x01\x01\x00".to_vec();
        file.extend_from_slice(&[b'a'; 40]);
        file.splice(25..25, [0u8, 1, b'n', b'e', b'e', b'd', b'l', b'e', 0xff]);
        for cut in 0..file.len() {
            let mut scan = s.scan();
            scan.feed(&file[..cut]);
            scan.feed(&file[cut..]);
            assert_eq!(scan.finish().found_count(), 1, "cut at {cut}");
        }
        let mut scan = s.scan();
        for b in &file {
            scan.feed(std::slice::from_ref(b));
        }
        assert!(scan.complete());
    }

    #[test]
    fn formats_from_magic_bytes() {
        let s = searcher(&["abcdefgh"]);
        for (head, want) in [
            (&b"\x7fELF\x02\x01"[..], Some(FileFormat::Elf)),
            (b"#!/usr/bin/env node\n", Some(FileFormat::Script)),
            (b"MZ\x90\x00", Some(FileFormat::Pe)),
            (b"\xcf\xfa\xed\xfe\x0c\x00\x00\x01", Some(FileFormat::MachO)),
            (b"\xca\xfe\xba\xbe\x00\x00\x00\x02", Some(FileFormat::MachO)),
            // A Java class file (version 52) shares the universal binary's magic.
            (b"\xca\xfe\xba\xbe\x00\x00\x00\x34", None),
            (b"plain text", None),
            (b"", None),
        ] {
            let mut scan = s.scan();
            for b in head {
                scan.feed(std::slice::from_ref(b));
            }
            assert_eq!(scan.finish().format(), want, "{head:?}");
        }
    }

    #[test]
    fn signature_escapes() {
        assert_eq!(
            Signature::parse("\\x7fELF\\\\x and \\x00").unwrap().bytes,
            b"\x7fELF\\x and \x00"
        );
        assert!(Signature::parse("\\q and more").is_err());
        assert!(Signature::parse("\\x7 and more").is_err());
        assert!(Signature::parse("short").is_err());
        assert!(Signature::parse(&"x".repeat(257)).is_err());
    }
}

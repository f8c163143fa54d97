//! Evidence that holds: re-deriving each host's hash chain from the records as they are stored,
//! and the statements the collector signs so that a reviewer can check the log later against
//! something kept outside its database.
//!
//! - [`HostWalk`] takes one host's stored records (their bytes, exactly as the agent sent them)
//!   and recomputes every record hash and every `prev_hash` link itself; [`HostWalk::finish`]
//!   names each problem by host, chain (epoch) and sequence number. The collector runs it over
//!   its database (`/v1/verify`, `interdict-collector verify`) and `interdict logs verify` runs it
//!   over what the API returns, taking nothing the server says on trust but using it only to say
//!   who is to blame.
//! - [`Signed`] statements (ed25519): a **checkpoint** (a Merkle tree head over every host's chain
//!   head, in the spirit of Certificate Transparency, RFC 6962 hashing) that reviewers export and
//!   check later, and a **cut** (where retention pruned a chain, or an administrator deleted a
//!   host), so that pruning cannot be faked by someone who can write the database but does not
//!   hold the collector's key.
//! - [`printable`] and [`safe_json_line`]: everything a host sent, shown on a terminal with its
//!   control characters made visible instead of interpreted.
#![deny(missing_docs)]

pub mod remote;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// `prev_hash` of a chain's first record: 64 zeros.
pub const GENESIS: Hash = [0; 32];

/// What went wrong reading a record or a signed statement.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// The record is not a JSON event with the chain fields.
    #[error("not a chained event: {0}")]
    Record(String),
    /// A signed statement that does not verify.
    #[error("signature: {0}")]
    Signature(String),
    /// A signed statement whose body is not what it should be.
    #[error("statement: {0}")]
    Statement(String),
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

/// A digest from exactly 64 lower-case hex digits.
pub fn unhex(s: &str) -> Option<Hash> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = nib(b[2 * i])? << 4 | nib(b[2 * i + 1])?;
    }
    Some(out)
}

/// The fields of one record that the chain needs, read from its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Event id.
    pub id: String,
    /// The host the record says it is from.
    pub host_id: String,
    /// Its sequence number.
    pub seq: u64,
    /// The hash of the record before it, as it says.
    pub prev: Hash,
    /// SHA-256 of its bytes: what the next record must link to.
    pub hash: Hash,
    /// For a heartbeat: the sequence number and hash of the last record the collector had
    /// acknowledged to the agent when it wrote the heartbeat.
    pub acked: Option<(u64, Hash)>,
}

#[derive(Deserialize)]
struct RawLink<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    host_id: Cow<'a, str>,
    seq: Option<u64>,
    #[serde(borrow, default)]
    prev_hash: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Acked {
    seq: u64,
    hash: String,
}

#[derive(Deserialize)]
struct HeartbeatMessage {
    #[serde(default)]
    acked: Option<Acked>,
}

/// Read the chain fields of one stored record (one JSON event line) and hash its bytes.
pub fn link(raw: &str) -> Result<Link, ChainError> {
    let r: RawLink<'_> =
        serde_json::from_str(raw).map_err(|e| ChainError::Record(e.to_string()))?;
    let seq = r
        .seq
        .filter(|s| *s > 0)
        .ok_or_else(|| ChainError::Record("no seq".into()))?;
    let prev = r
        .prev_hash
        .as_deref()
        .and_then(unhex)
        .ok_or_else(|| ChainError::Record("no valid prev_hash".into()))?;
    let acked = if r.kind == "heartbeat" {
        r.message
            .as_deref()
            .and_then(|m| serde_json::from_str::<HeartbeatMessage>(m).ok())
            .and_then(|m| m.acked)
            .and_then(|a| Some((a.seq, unhex(&a.hash)?)))
            .filter(|(s, _)| *s > 0)
    } else {
        None
    };
    Ok(Link {
        id: r.id.into_owned(),
        host_id: r.host_id.into_owned(),
        seq,
        prev,
        hash: sha256(raw.as_bytes()),
        acked,
    })
}

#[derive(Deserialize)]
struct RawCheck<'a> {
    #[serde(borrow)]
    host_id: Cow<'a, str>,
    seq: Option<u64>,
    #[serde(borrow, default)]
    prev_hash: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

/// What a walk needs of one record, read from its bytes (which need not be kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Its sequence number.
    pub seq: u64,
    /// The `prev_hash` it says.
    pub prev: Hash,
    /// SHA-256 of its bytes.
    pub hash: Hash,
    /// A heartbeat's acknowledged (seq, hash).
    pub acked: Option<(u64, Hash)>,
    /// The host it says it is from, when that is not the host expected.
    pub other_host: Option<String>,
}

/// Read the chain fields of one record of `host` (cheaper than [`link`]: nothing is copied
/// unless the record names another host).
pub fn check(raw: &str, host: &str) -> Result<Checked, ChainError> {
    let r: RawCheck<'_> =
        serde_json::from_str(raw).map_err(|e| ChainError::Record(e.to_string()))?;
    let seq = r
        .seq
        .filter(|s| *s > 0)
        .ok_or_else(|| ChainError::Record("no seq".into()))?;
    let prev = r
        .prev_hash
        .as_deref()
        .and_then(unhex)
        .ok_or_else(|| ChainError::Record("no valid prev_hash".into()))?;
    let acked = if r.kind == "heartbeat" {
        r.message
            .as_deref()
            .and_then(|m| serde_json::from_str::<HeartbeatMessage>(m).ok())
            .and_then(|m| m.acked)
            .and_then(|a| Some((a.seq, unhex(&a.hash)?)))
            .filter(|(s, _)| *s > 0)
    } else {
        None
    };
    Ok(Checked {
        seq,
        prev,
        hash: sha256(raw.as_bytes()),
        acked,
        other_host: (r.host_id != host).then(|| r.host_id.into_owned()),
    })
}

/// A problem found re-deriving a chain: what, where, and who is to blame when that is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The host.
    pub host_id: String,
    /// The chain: 1 for the host's first, one more each time its chain started over; 0 for
    /// records kept outside any chain (a sequence number used twice).
    pub epoch: u64,
    /// First sequence number concerned.
    pub from_seq: u64,
    /// Last sequence number concerned.
    pub to_seq: u64,
    /// `gap` (records missing from the chain), `break` (a record does not link to the one
    /// before), `altered` (a record's bytes are not what was acknowledged, or not a valid record
    /// for its place), `removed` (a record the collector acknowledged is not stored), `reused`
    /// (records outside the chain), `cut` (a retention or deletion statement that does not
    /// verify or does not link).
    pub kind: String,
    /// What was expected and what was found.
    pub detail: String,
}

/// One chain's state at the end of a walk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochReport {
    /// The chain.
    pub epoch: u64,
    /// Records stored.
    pub records: u64,
    /// Where retention (or an older cut) starts it: records up to here were pruned.
    pub cut_seq: u64,
    /// Last sequence number stored (or the cut when nothing is left).
    pub head_seq: u64,
    /// The hash of that record, re-derived.
    pub head_hash: String,
}

/// Everything found about one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    /// The host.
    pub host_id: String,
    /// Records read.
    pub records: u64,
    /// Its chains, oldest first.
    pub epochs: Vec<EpochReport>,
    /// Problems; none means intact.
    pub problems: Vec<Problem>,
    /// Things a reviewer should know that are not problems (pruning, restarts, checks that
    /// could not be made).
    pub notes: Vec<String>,
}

impl HostReport {
    /// No problems.
    pub fn intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A head the collector says it acknowledged, or a checkpoint leaf, to check against the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The chain.
    pub epoch: u64,
    /// Sequence number.
    pub seq: u64,
    /// The record's hash.
    pub hash: Hash,
    /// For a checkpoint: where the chain was cut and how many records were missing between the
    /// cut and `seq` then (fewer may be missing now, never more).
    pub missing: Option<(u64, u64)>,
    /// Where the claim comes from, for the report.
    pub source: String,
}

/// What is known about a host besides its records: the verified cuts, the heads the collector
/// acknowledged, checkpoint leaves, and the breaks already seen on arrival (those were the
/// host's doing, not the store's).
#[derive(Debug, Clone, Default)]
pub struct HostContext {
    /// Per chain: where it was cut (sequence number, the hash of that record).
    pub cuts: BTreeMap<u64, (u64, Hash)>,
    /// Heads and checkpoint leaves to check.
    pub expected: Vec<Expected>,
    /// (epoch, seq) of records that broke the chain when they arrived.
    pub arrival_breaks: HashSet<(u64, u64)>,
}

/// A head to check: sequence number, hash, where the claim comes from, and for a checkpoint
/// its cut and missing count.
type Check = (u64, Hash, String, Option<(u64, u64)>);

struct Entry {
    seq: u64,
    hash: Hash,
    prev: Hash,
}

/// One host's records, fed in any order (each with the chain and position the store filed it
/// under), then checked as a whole by [`HostWalk::finish`].
pub struct HostWalk {
    host_id: String,
    epochs: BTreeMap<u64, Vec<Entry>>,
    claims: Vec<(u64, u64, u64, Hash)>,
    outside: Vec<u64>,
    problems: Vec<Problem>,
    records: u64,
}

impl HostWalk {
    /// Start on `host_id`.
    pub fn new(host_id: &str) -> HostWalk {
        HostWalk {
            host_id: host_id.to_string(),
            epochs: BTreeMap::new(),
            claims: Vec::new(),
            outside: Vec::new(),
            problems: Vec::new(),
            records: 0,
        }
    }

    fn problem(&mut self, epoch: u64, from: u64, to: u64, kind: &str, detail: String) {
        self.problems.push(Problem {
            host_id: self.host_id.clone(),
            epoch,
            from_seq: from,
            to_seq: to,
            kind: kind.into(),
            detail,
        });
    }

    /// One stored record: the chain (`epoch`, 0 = outside) and sequence number the store filed
    /// it under, and its bytes.
    pub fn add(&mut self, epoch: u64, seq: u64, raw: &str) {
        let c = check(raw, &self.host_id);
        self.add_checked(epoch, seq, c)
    }

    /// The host being walked.
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// One stored record, already read with [`check`] (which may run on other threads: records
    /// may come in any order).
    pub fn add_checked(&mut self, epoch: u64, seq: u64, l: Result<Checked, ChainError>) {
        self.records += 1;
        let l = match l {
            Ok(l) => l,
            Err(e) => {
                return self.problem(
                    epoch,
                    seq,
                    seq,
                    "altered",
                    format!("the record stored as {seq} is not a valid chained event ({e})"),
                )
            }
        };
        if l.other_host.is_some() || l.seq != seq {
            let host = l.other_host.unwrap_or_else(|| self.host_id.clone());
            return self.problem(
                epoch,
                seq,
                seq,
                "altered",
                format!(
                    "the record stored as host {} record {seq} says it is host {host} record {}",
                    self.host_id, l.seq
                ),
            );
        }
        if epoch == 0 {
            self.outside.push(seq);
            return;
        }
        if let Some((s, h)) = l.acked {
            self.claims.push((epoch, seq, s, h));
        }
        self.epochs.entry(epoch).or_default().push(Entry {
            seq,
            hash: l.hash,
            prev: l.prev,
        });
    }

    /// Check everything: links, gaps, cuts, acknowledged heads, heartbeat claims, checkpoint
    /// leaves.
    pub fn finish(mut self, ctx: &HostContext) -> HostReport {
        let mut notes = Vec::new();
        let mut reports = Vec::new();
        let mut epochs = std::mem::take(&mut self.epochs);
        for (&e, _) in ctx.cuts.iter() {
            epochs.entry(e).or_default();
        }
        for x in &ctx.expected {
            epochs.entry(x.epoch).or_default();
        }
        for (&epoch, entries) in epochs.iter_mut() {
            entries.sort_by_key(|e| e.seq);
            let (cut, cut_hash) = ctx.cuts.get(&epoch).copied().unwrap_or((0, GENESIS));
            if cut > 0 {
                notes.push(format!(
                    "chain {epoch}: records 1 to {cut} pruned (signed cut); checked from the hash of record {cut}"
                ));
            }
            let (mut prev_seq, mut prev_hash) = (cut, cut_hash);
            for (i, en) in entries.iter().enumerate() {
                if en.seq <= prev_seq {
                    let what = if en.seq <= cut && i == 0 {
                        format!(
                            "record {} is stored although the chain was cut at {cut}",
                            en.seq
                        )
                    } else {
                        format!("record {} is stored twice", en.seq)
                    };
                    let s = en.seq;
                    self.problem(epoch, s, s, "altered", what);
                    continue;
                }
                if en.seq > prev_seq + 1 {
                    let (a, b) = (prev_seq + 1, en.seq - 1);
                    self.problem(
                        epoch,
                        a,
                        b,
                        "gap",
                        format!("records {a} to {b} are not stored (never arrived, or removed)"),
                    );
                } else if en.prev != prev_hash {
                    let s = en.seq;
                    let why = if ctx.arrival_breaks.contains(&(epoch, s)) {
                        "it arrived so (the host broke its chain)".to_string()
                    } else if prev_seq == cut && cut > 0 {
                        format!("it does not link to the signed cut at {cut}")
                    } else {
                        format!("record {} or {s} was altered after it was stored", s - 1)
                    };
                    self.problem(
                        epoch,
                        s,
                        s,
                        "break",
                        format!(
                            "record {s} links to {} but record {} hashes to {}: {why}",
                            hex(&en.prev),
                            s - 1,
                            hex(&prev_hash)
                        ),
                    );
                }
                prev_seq = en.seq;
                prev_hash = en.hash;
            }
            let find = |seq: u64| -> Option<Hash> {
                if seq == cut {
                    return Some(cut_hash);
                }
                entries
                    .binary_search_by_key(&seq, |e| e.seq)
                    .ok()
                    .map(|i| entries[i].hash)
            };
            let claims: Vec<_> = self
                .claims
                .iter()
                .filter(|c| c.0 == epoch)
                .map(|&(_, by, s, h)| (by, s, h))
                .collect();
            let mut checks: Vec<Check> = claims
                .into_iter()
                .map(|(by, s, h)| {
                    (
                        s,
                        h,
                        format!("heartbeat record {by} says the collector acknowledged it"),
                        None,
                    )
                })
                .collect();
            checks.extend(
                ctx.expected
                    .iter()
                    .filter(|x| x.epoch == epoch)
                    .map(|x| (x.seq, x.hash, x.source.clone(), x.missing)),
            );
            for (s, h, source, missing) in checks {
                if s < cut {
                    notes.push(format!(
                        "chain {epoch}: {source} (record {s}), which retention has pruned since: not checkable"
                    ));
                    continue;
                }
                match find(s) {
                    None => self.problem(
                        epoch,
                        s,
                        s,
                        "removed",
                        format!("record {s} is not stored, but {source}: removed at the collector"),
                    ),
                    Some(have) if have != h => self.problem(
                        epoch,
                        s,
                        s,
                        "altered",
                        format!(
                            "record {s} hashes to {} but {source} as {}: altered at the collector",
                            hex(&have),
                            hex(&h)
                        ),
                    ),
                    Some(_) => {}
                }
                if let Some((cp_cut, cp_missing)) = missing {
                    let from = cut.max(cp_cut);
                    let stored = entries
                        .iter()
                        .filter(|e| e.seq > from && e.seq <= s)
                        .count() as u64;
                    let now_missing = s.saturating_sub(from).saturating_sub(stored);
                    if now_missing > cp_missing {
                        self.problem(
                            epoch,
                            from + 1,
                            s,
                            "removed",
                            format!(
                                "{} record(s) up to {s} are missing now, {cp_missing} were when {source}: removed at the collector since",
                                now_missing
                            ),
                        );
                    }
                }
            }
            let (head_seq, head_hash) = entries.last().map_or((cut, cut_hash), |e| (e.seq, e.hash));
            reports.push(EpochReport {
                epoch,
                records: entries.len() as u64,
                cut_seq: cut,
                head_seq,
                head_hash: hex(&head_hash),
            });
        }
        if reports.len() > 1 {
            notes.push(format!(
                "the host's chain started over {} time(s) (its spool was wiped or the host reinstalled)",
                reports.len() - 1
            ));
        }
        if !self.outside.is_empty() {
            self.outside.sort_unstable();
            let (a, b) = (self.outside[0], self.outside[self.outside.len() - 1]);
            let n = self.outside.len();
            self.problem(
                0,
                a,
                b,
                "reused",
                format!("{n} record(s) came under sequence numbers already used; kept outside the chain"),
            );
        }
        HostReport {
            host_id: self.host_id,
            records: self.records,
            epochs: reports,
            problems: self.problems,
            notes,
        }
    }
}

/// A statement signed by the collector: the body (JSON text, signed as it is), the ed25519
/// signature and the public key, both hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    /// The statement, JSON text.
    pub body: String,
    /// ed25519 signature over `interdict-collector/v1\n` + body.
    pub signature: String,
    /// The signer's public key.
    pub key: String,
}

const DOMAIN: &[u8] = b"interdict-collector/v1\n";

fn message(body: &str) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    m.extend_from_slice(body.as_bytes());
    m
}

/// Sign `body` with `key`.
pub fn sign(key: &ed25519_dalek::SigningKey, body: String) -> Signed {
    let sig = key.sign(&message(&body));
    Signed {
        signature: hex(&sig.to_bytes()),
        key: hex(key.verifying_key().as_bytes()),
        body,
    }
}

impl Signed {
    /// Check the signature, with `pinned` (hex public key) when given: a statement signed by
    /// any other key is refused.
    pub fn verify(&self, pinned: Option<&str>) -> Result<(), ChainError> {
        if let Some(p) = pinned {
            if p != self.key {
                return Err(ChainError::Signature(format!(
                    "signed by key {}, not by the pinned key {p}",
                    self.key
                )));
            }
        }
        let key = unhex(&self.key)
            .and_then(|k| ed25519_dalek::VerifyingKey::from_bytes(&k).ok())
            .ok_or_else(|| ChainError::Signature("not an ed25519 public key".into()))?;
        let sig: [u8; 64] = (self.signature.len() == 128)
            .then(|| {
                let mut s = [0u8; 64];
                for (i, o) in s.iter_mut().enumerate() {
                    *o = u8::from_str_radix(self.signature.get(2 * i..2 * i + 2)?, 16).ok()?;
                }
                Some(s)
            })
            .flatten()
            .ok_or_else(|| ChainError::Signature("not an ed25519 signature".into()))?;
        key.verify(
            &message(&self.body),
            &ed25519_dalek::Signature::from_bytes(&sig),
        )
        .map_err(|_| ChainError::Signature("does not verify: the statement was altered".into()))
    }
}

/// One host chain's head in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaf {
    /// The host.
    pub host_id: String,
    /// The chain.
    pub epoch: u64,
    /// Its last acknowledged sequence number.
    pub seq: u64,
    /// That record's hash.
    pub hash: String,
    /// Where it was cut by retention then (0 = not cut).
    pub cut: u64,
    /// How many records between the cut and `seq` were missing then (never arrived).
    pub missing: u64,
}

impl Leaf {
    fn bytes(&self) -> Vec<u8> {
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            self.host_id, self.epoch, self.seq, self.hash, self.cut, self.missing
        )
        .into_bytes()
    }
}

/// The Merkle tree hash (RFC 6962, section 2.1) over `leaves`, in the order given.
pub fn merkle_root(leaves: &[Leaf]) -> Hash {
    fn mth(items: &[Vec<u8>]) -> Hash {
        match items.len() {
            0 => sha256(b""),
            1 => {
                let mut m = vec![0u8];
                m.extend_from_slice(&items[0]);
                sha256(&m)
            }
            n => {
                let k = n.next_power_of_two() / 2;
                let mut m = vec![1u8];
                m.extend_from_slice(&mth(&items[..k]));
                m.extend_from_slice(&mth(&items[k..]));
                sha256(&m)
            }
        }
    }
    let items: Vec<Vec<u8>> = leaves.iter().map(Leaf::bytes).collect();
    mth(&items)
}

/// A checkpoint: every host chain's head at one moment, and their Merkle tree head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Always `checkpoint`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When, ms since the epoch.
    pub time_ms: i64,
    /// Number of leaves.
    pub tree_size: u64,
    /// Merkle tree head, hex.
    pub root: String,
    /// The leaves, sorted by host and chain.
    pub leaves: Vec<Leaf>,
}

/// Make and sign a checkpoint over `leaves`.
pub fn checkpoint(key: &ed25519_dalek::SigningKey, time_ms: i64, mut leaves: Vec<Leaf>) -> Signed {
    leaves.sort_by(|a, b| (&a.host_id, a.epoch).cmp(&(&b.host_id, b.epoch)));
    let body = Checkpoint {
        kind: "checkpoint".into(),
        time_ms,
        tree_size: leaves.len() as u64,
        root: hex(&merkle_root(&leaves)),
        leaves,
    };
    sign(
        key,
        serde_json::to_string(&body).expect("checkpoints serialize"),
    )
}

/// Verify a signed checkpoint (with the pinned key when given) and its tree head.
pub fn open_checkpoint(s: &Signed, pinned: Option<&str>) -> Result<Checkpoint, ChainError> {
    s.verify(pinned)?;
    let c: Checkpoint =
        serde_json::from_str(&s.body).map_err(|e| ChainError::Statement(e.to_string()))?;
    if c.kind != "checkpoint" {
        return Err(ChainError::Statement(format!(
            "a {}, not a checkpoint",
            c.kind
        )));
    }
    if c.tree_size != c.leaves.len() as u64 || hex(&merkle_root(&c.leaves)) != c.root {
        return Err(ChainError::Statement(
            "the tree head does not match its leaves".into(),
        ));
    }
    Ok(c)
}

/// Where a chain was cut: by retention (records up to `seq` pruned) or because an administrator
/// deleted the host (every record up to `seq`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cut {
    /// Always `cut`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The host.
    pub host_id: String,
    /// The chain.
    pub epoch: u64,
    /// Records up to and including this one are gone.
    pub seq: u64,
    /// The hash of record `seq`: the next record must link to it.
    pub hash: String,
    /// Records deleted by this cut.
    pub pruned: u64,
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// `retention` or `deleted`.
    pub reason: String,
}

/// Sign a cut.
pub fn sign_cut(key: &ed25519_dalek::SigningKey, cut: &Cut) -> Signed {
    sign(key, serde_json::to_string(cut).expect("cuts serialize"))
}

/// Verify a signed cut (with the pinned key when given).
pub fn open_cut(s: &Signed, pinned: Option<&str>) -> Result<Cut, ChainError> {
    s.verify(pinned)?;
    let c: Cut = serde_json::from_str(&s.body).map_err(|e| ChainError::Statement(e.to_string()))?;
    if c.kind != "cut" || unhex(&c.hash).is_none() {
        return Err(ChainError::Statement("not a cut".into()));
    }
    Ok(c)
}

/// Characters never to send raw to a terminal: control characters (C0, DEL, C1), bidirectional
/// overrides and isolates, line and paragraph separators, the byte-order mark.
fn dangerous(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}' | '\u{FEFF}')
}

/// `s` with every dangerous character shown as `\u{..}`, and backslashes doubled so that what
/// is shown cannot be mistaken for an escape: for terminal text.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| dangerous(c) || c == '\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if dangerous(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A JSON line with every dangerous character written as a JSON `\uXXXX` escape: the same JSON
/// value, safe on a terminal. (Such characters can only stand inside strings; a raw tab can
/// only be whitespace and becomes a space.)
pub fn safe_json_line(s: &str) -> Cow<'_, str> {
    if !s.chars().any(dangerous) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if c == '\t' {
            out.push(' ');
        } else if dangerous(c) {
            let mut buf = [0u16; 2];
            for u in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(host: &str, seq: u64, prev: &Hash, extra: &str) -> String {
        format!(
            "{{\"id\":\"e{seq}{extra}\",\"time\":\"2026-01-01T00:00:00.000Z\",\"host_id\":\"{host}\",\"hostname\":\"x\",\"kind\":\"exec_denied\",\"seq\":{seq},\"prev_hash\":\"{}\"}}",
            hex(prev)
        )
    }

    fn chain(host: &str, n: u64) -> Vec<String> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|s| {
                let r = rec(host, s, &prev, "");
                prev = sha256(r.as_bytes());
                r
            })
            .collect()
    }

    fn walk(recs: &[String], ctx: &HostContext) -> HostReport {
        let mut w = HostWalk::new("h");
        for (i, r) in recs.iter().enumerate() {
            w.add(1, i as u64 + 1, r);
        }
        w.finish(ctx)
    }

    #[test]
    fn an_intact_chain_and_every_kind_of_edit() {
        let c = chain("h", 5);
        assert!(walk(&c, &HostContext::default()).intact());
        // One byte of a middle record changed: the next link breaks, naming both.
        let mut e = c.clone();
        e[2] = e[2].replace("exec_denied", "exec_reported");
        let r = walk(&e, &HostContext::default());
        assert_eq!(r.problems.len(), 1, "{r:?}");
        assert_eq!(
            (r.problems[0].kind.as_str(), r.problems[0].from_seq),
            ("break", 4)
        );
        // The last record changed: only the acknowledged head shows it.
        let mut e = c.clone();
        e[4] = e[4].replace("exec_denied", "exec_reported");
        assert!(walk(&e, &HostContext::default()).intact());
        let ctx = HostContext {
            expected: vec![Expected {
                epoch: 1,
                seq: 5,
                hash: sha256(c[4].as_bytes()),
                missing: None,
                source: "the collector acknowledged it".into(),
            }],
            ..Default::default()
        };
        let r = walk(&e, &ctx);
        assert_eq!(
            (r.problems[0].kind.as_str(), r.problems[0].from_seq),
            ("altered", 5)
        );
        // The tail deleted: removed, not a gap.
        let r = walk(&c[..3], &ctx);
        assert_eq!(
            (r.problems[0].kind.as_str(), r.problems[0].from_seq),
            ("removed", 5)
        );
    }

    #[test]
    fn signatures_and_tree_heads() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let leaves = vec![Leaf {
            host_id: "h".into(),
            epoch: 1,
            seq: 3,
            hash: hex(&[1; 32]),
            cut: 0,
            missing: 0,
        }];
        let s = checkpoint(&key, 1, leaves);
        assert!(open_checkpoint(&s, None).is_ok());
        assert!(open_checkpoint(&s, Some(&s.key)).is_ok());
        let mut forged = s.clone();
        forged.body = forged.body.replace("\"seq\":3", "\"seq\":2");
        assert!(open_checkpoint(&forged, None).is_err());
        let other = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
        let resigned = sign(&other, forged.body.clone());
        assert!(open_checkpoint(&resigned, Some(&s.key)).is_err());
        // RFC 6962: the empty tree hashes the empty string.
        assert_eq!(
            hex(&merkle_root(&[])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn terminal_output_shows_control_characters() {
        assert_eq!(printable("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(printable("ok"), "ok");
        assert_eq!(printable("\u{9b}x\u{202e}"), "\\u{9b}x\\u{202e}");
        let line = "{\"h\":\"\u{9b}31m\u{7f}\"}";
        let safe = safe_json_line(line);
        assert!(!safe.chars().any(dangerous));
        let a: serde_json::Value = serde_json::from_str(line).unwrap();
        let b: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(a, b, "the same JSON value");
    }
}

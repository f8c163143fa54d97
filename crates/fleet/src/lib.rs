//! The fleet control plane's signed documents.
//!
//! Three keys, three documents, each with its own format name inside the signed bytes (so that
//! a signature over one kind of document can never be presented as another):
//!
//! | document | format | signed by | what an agent accepts it for |
//! |---|---|---|---|
//! | [`BundleBody`] | `interdict-policy-bundle/1` | IT's **policy key** (offline); agents pin its public key in their configuration | replacing the policy in force, when its version is higher |
//! | [`HashList`] | `interdict-hash-list/1` | the collector's **hash-list key**, named by the signed policy (`hash_list_keys`) | *adding* `sha256` entries to existing block, kill and quarantine rules; nothing else |
//! | [`ExceptionGrant`] | `interdict-exception/1` | the collector's **exception key**, named by the signed policy (`exception_keys`) | letting one user run what one rule bans, on one host, for no longer than the policy's `max_exception_days` |
//!
//! A signed document travels as an [`Envelope`]: the body (JSON text, signed as it is: the
//! canonical bytes are the bytes that were signed), the format, the signer's public key and the
//! ed25519 signature over `interdict-fleet/1`, the format and the body. Verification checks the
//! format, that the key is one of the pinned ones, the signature, and only then parses the body.
//!
//! This crate is pure: no clock (times are given), no randomness (keys are made from a seed the
//! caller reads), no I/O.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;

use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    /// Not an envelope, or a body that does not parse.
    #[error("not a valid {what}: {why}")]
    Malformed {
        /// What it should have been.
        what: &'static str,
        /// The parser's complaint.
        why: String,
    },
    /// Another kind of document.
    #[error("a `{got}` document where a `{want}` is expected")]
    Format {
        /// The expected format.
        want: &'static str,
        /// The document's format.
        got: String,
    },
    /// Signed by a key that is not pinned.
    #[error("signed by key {key}, which is not one of the pinned keys ({})", pinned_list(.pinned))]
    UnknownKey {
        /// The signer's key, as the document says.
        key: String,
        /// The pinned keys.
        pinned: Vec<String>,
    },
    /// The signature does not verify: the document was altered after it was signed, or was
    /// never signed by that key.
    #[error("the signature does not verify (the document was altered, or not signed by the key it names)")]
    BadSignature,
    /// The signature holds, but the content is not acceptable.
    #[error("{0}")]
    Invalid(String),
}

fn pinned_list(p: &[String]) -> String {
    if p.is_empty() {
        "none is configured".into()
    } else {
        p.join(", ")
    }
}

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parse 64 hexadecimal digits naming a valid ed25519 point.
    pub fn from_hex(s: &str) -> Option<PublicKey> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut b).ok()?;
        ed25519_dalek::VerifyingKey::from_bytes(&b).ok()?;
        Some(PublicKey(b))
    }

    fn verifying(&self) -> Option<ed25519_dalek::VerifyingKey> {
        ed25519_dalek::VerifyingKey::from_bytes(&self.0).ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// An ed25519 signing key. Its file form is the 32-byte seed as 64 hex digits on one line.
pub struct SecretKey(ed25519_dalek::SigningKey);

impl SecretKey {
    /// The key of a 32-byte seed (read from the operating system's random generator by the
    /// caller).
    pub fn from_seed(seed: [u8; 32]) -> SecretKey {
        SecretKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// The key in a key file's text (64 hex digits; surrounding white space ignored).
    pub fn from_file_text(text: &str) -> Option<SecretKey> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut b).ok()?;
        Some(SecretKey::from_seed(b))
    }

    /// The key file's text: the seed as hex and a newline.
    pub fn to_file_text(&self) -> String {
        format!("{}\n", hex::encode(self.0.as_bytes()))
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }
}

impl From<ed25519_dalek::SigningKey> for SecretKey {
    fn from(k: ed25519_dalek::SigningKey) -> SecretKey {
        SecretKey(k)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public())
    }
}

/// A signed document: what travels and what is kept on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The kind of document (`interdict-policy-bundle/1`, ...), part of the signed bytes.
    pub format: String,
    /// The signer's public key, hex.
    pub key: String,
    /// The ed25519 signature, hex, over `interdict-fleet/1\n` + format + `\n` + body.
    pub signature: String,
    /// The document: JSON text, signed exactly as it is.
    pub body: String,
}

fn message(format: &str, body: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(20 + format.len() + body.len());
    m.extend_from_slice(b"interdict-fleet/1\n");
    m.extend_from_slice(format.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(body.as_bytes());
    m
}

impl Envelope {
    /// Sign `body` as a document of `format`.
    pub fn sign(key: &SecretKey, format: &str, body: String) -> Envelope {
        let sig = key.0.sign(&message(format, &body));
        Envelope {
            format: format.to_string(),
            key: key.public().to_string(),
            signature: hex::encode(sig.to_bytes()),
            body,
        }
    }

    /// Parse an envelope from its JSON text.
    pub fn parse(text: &str, what: &'static str) -> Result<Envelope, FleetError> {
        serde_json::from_str(text).map_err(|e| FleetError::Malformed {
            what,
            why: e.to_string(),
        })
    }

    /// The envelope as JSON text (pretty, with a final newline: the file form).
    pub fn to_text(&self) -> String {
        serde_json::to_string_pretty(self).expect("envelopes serialize") + "\n"
    }

    /// Check the format, that the signer is one of `pinned`, and the signature; the signer's
    /// key when all hold.
    pub fn verify(
        &self,
        format: &'static str,
        pinned: &[PublicKey],
    ) -> Result<PublicKey, FleetError> {
        if self.format != format {
            return Err(FleetError::Format {
                want: format,
                got: self.format.chars().take(80).collect(),
            });
        }
        let key = PublicKey::from_hex(&self.key)
            .filter(|k| pinned.contains(k))
            .ok_or_else(|| FleetError::UnknownKey {
                key: self.key.chars().take(80).collect(),
                pinned: pinned.iter().map(ToString::to_string).collect(),
            })?;
        let mut sig = [0u8; 64];
        hex::decode_to_slice(&self.signature, &mut sig).map_err(|_| FleetError::BadSignature)?;
        key.verifying()
            .ok_or(FleetError::BadSignature)?
            .verify(
                &message(&self.format, &self.body),
                &ed25519_dalek::Signature::from_bytes(&sig),
            )
            .map_err(|_| FleetError::BadSignature)?;
        Ok(key)
    }

    /// Verify, then parse the body as `T`.
    pub fn open<T: for<'de> Deserialize<'de>>(
        &self,
        format: &'static str,
        what: &'static str,
        pinned: &[PublicKey],
    ) -> Result<(T, PublicKey), FleetError> {
        let key = self.verify(format, pinned)?;
        let body = serde_json::from_str(&self.body).map_err(|e| FleetError::Malformed {
            what,
            why: e.to_string(),
        })?;
        Ok((body, key))
    }
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The format name of policy bundles.
pub const BUNDLE_FORMAT: &str = "interdict-policy-bundle/1";
/// The format name of approved-hash lists.
pub const HASH_LIST_FORMAT: &str = "interdict-hash-list/1";
/// The format name of exceptions.
pub const EXCEPTION_FORMAT: &str = "interdict-exception/1";

/// The most files a bundle may carry (`sha256_files`).
pub const MAX_BUNDLE_FILES: usize = 1000;

/// A policy bundle: the policy text, the contents of the `sha256_files` it names, a version that
/// only grows, and when it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleBody {
    /// The bundle version: an agent applies a bundle only when this is higher than the
    /// version in force.
    pub version: u64,
    /// When it was signed (RFC 3339, UTC).
    pub created: String,
    /// The policy file's text.
    pub policy: String,
    /// SHA-256 of `policy`, hex.
    pub policy_sha256: String,
    /// The files the policy names in `sha256_files`, by the name it gives them.
    pub files: BTreeMap<String, String>,
}

impl BundleBody {
    /// Check what the signature cannot: a version, the policy's digest, sane file names.
    pub fn check(&self) -> Result<(), FleetError> {
        if self.version == 0 {
            return Err(FleetError::Invalid(
                "bundle version 0: versions start at 1".into(),
            ));
        }
        if sha256_hex(self.policy.as_bytes()) != self.policy_sha256 {
            return Err(FleetError::Invalid(
                "the policy's SHA-256 does not match the bundle's".into(),
            ));
        }
        if self.files.len() > MAX_BUNDLE_FILES {
            return Err(FleetError::Invalid(format!(
                "{} files; a bundle carries at most {MAX_BUNDLE_FILES}",
                self.files.len()
            )));
        }
        for name in self.files.keys() {
            if name.is_empty()
                || name.starts_with('/')
                || name.split('/').any(|c| c == "..")
                || name.contains('\0')
            {
                return Err(FleetError::Invalid(format!(
                    "file name `{}` is not a relative path inside the bundle",
                    name.escape_debug()
                )));
            }
        }
        Ok(())
    }

    /// Sign the bundle with IT's policy key.
    pub fn sign(&self, key: &SecretKey) -> Envelope {
        Envelope::sign(
            key,
            BUNDLE_FORMAT,
            serde_json::to_string(self).expect("bundles serialize"),
        )
    }
}

/// Parse a bundle file and verify it against the pinned policy keys: the body and its signer.
pub fn open_bundle(
    text: &str,
    pinned: &[PublicKey],
) -> Result<(BundleBody, PublicKey), FleetError> {
    let env = Envelope::parse(text, "policy bundle")?;
    let (body, key): (BundleBody, _) = env.open(BUNDLE_FORMAT, "policy bundle", pinned)?;
    body.check()?;
    Ok((body, key))
}

/// A bundle's body read *without* checking its signature (the collector, which distributes
/// bundles and does not hold IT's public key, reads the version this way). Never enforce what
/// this returns.
pub fn peek_bundle(text: &str) -> Result<(BundleBody, Envelope), FleetError> {
    let env = Envelope::parse(text, "policy bundle")?;
    if env.format != BUNDLE_FORMAT {
        return Err(FleetError::Format {
            want: BUNDLE_FORMAT,
            got: env.format.chars().take(80).collect(),
        });
    }
    let body: BundleBody = serde_json::from_str(&env.body).map_err(|e| FleetError::Malformed {
        what: "policy bundle",
        why: e.to_string(),
    })?;
    body.check()?;
    Ok((body, env))
}

/// One approved digest: a file one host learned for `rule`, approved by a reviewer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashEntry {
    /// The rule it belongs to.
    pub rule: String,
    /// The digest, 64 lower-case hex digits.
    pub sha256: String,
    /// The file's size, bytes.
    pub size: u64,
    /// Where it was first seen (informational).
    pub path: String,
    /// The host that learned it first (informational).
    pub host: String,
    /// The reviewer who approved it.
    pub approved_by: String,
}

/// Every digest reviewers approved, as one list with a sequence number that only grows.
/// Agents only ever *add* what it holds to the rules it names; a digest missing from a later
/// list stays where it was added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashList {
    /// Grows with every change.
    pub seq: u64,
    /// When it was signed (RFC 3339, UTC).
    pub created: String,
    /// The approved digests.
    pub entries: Vec<HashEntry>,
}

impl HashList {
    /// Sign with the collector's hash-list key.
    pub fn sign(&self, key: &SecretKey) -> Envelope {
        Envelope::sign(
            key,
            HASH_LIST_FORMAT,
            serde_json::to_string(self).expect("lists serialize"),
        )
    }

    /// Verify a signed list against the keys the policy names.
    pub fn open(env: &Envelope, pinned: &[PublicKey]) -> Result<(HashList, PublicKey), FleetError> {
        let (l, k): (HashList, _) = env.open(HASH_LIST_FORMAT, "hash list", pinned)?;
        for e in &l.entries {
            if e.sha256.len() != 64
                || !e
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(FleetError::Invalid(format!(
                    "`{}` is not a SHA-256 (64 lower-case hex digits)",
                    e.sha256.escape_debug()
                )));
            }
        }
        Ok((l, k))
    }
}

/// An exception a reviewer approved: `user` may run what `rule` bans, on host `host_id`, from
/// `from` until `until` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExceptionGrant {
    /// The request's id (made by the agent that forwarded it).
    pub id: String,
    /// The one host it is for.
    pub host_id: String,
    /// The one user it is for (the name the agent saw through the socket's peer credentials).
    pub user: String,
    /// That user's id on the host, for display.
    pub uid: Option<u32>,
    /// The one rule it suspends for that user.
    pub rule: String,
    /// Start, Unix seconds.
    pub from: i64,
    /// End (excluded), Unix seconds.
    pub until: i64,
    /// The employee's reason.
    pub reason: String,
    /// The reviewer who approved it.
    pub approved_by: String,
}

impl ExceptionGrant {
    /// Sign with the collector's exception key.
    pub fn sign(&self, key: &SecretKey) -> Envelope {
        Envelope::sign(
            key,
            EXCEPTION_FORMAT,
            serde_json::to_string(self).expect("exceptions serialize"),
        )
    }

    /// Verify a signed exception against the keys the policy names.
    pub fn open(
        env: &Envelope,
        pinned: &[PublicKey],
    ) -> Result<(ExceptionGrant, PublicKey), FleetError> {
        env.open(EXCEPTION_FORMAT, "exception", pinned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32])
    }

    fn bundle() -> BundleBody {
        let policy = "[policy]\nname = \"t\"\n".to_string();
        BundleBody {
            version: 2,
            created: "2026-12-01T00:00:00Z".into(),
            policy_sha256: sha256_hex(policy.as_bytes()),
            policy,
            files: [("hashes/a.sha256".to_string(), "ab  x\n".to_string())].into(),
        }
    }

    #[test]
    fn a_signed_bundle_opens_with_its_key_only() {
        let k = key(1);
        let text = bundle().sign(&k).to_text();
        let (b, signer) = open_bundle(&text, &[key(9).public(), k.public()]).unwrap();
        assert_eq!(b, bundle());
        assert_eq!(signer, k.public());
        let e = open_bundle(&text, &[key(2).public()]).unwrap_err();
        assert!(matches!(e, FleetError::UnknownKey { .. }), "{e}");
        assert!(e.to_string().contains(&key(2).public().to_string()), "{e}");
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let k = key(1);
        let text = bundle().sign(&k).to_text();
        let bytes = text.as_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] ^= 0x01;
            let Ok(t) = String::from_utf8(b) else {
                continue;
            };
            if let Ok((body, _)) = open_bundle(&t, &[k.public()]) {
                // Only JSON white space or an equivalent escape can change without changing
                // what was signed.
                assert_eq!(body, bundle(), "byte {i} changed the content yet verified");
            }
        }
    }

    #[test]
    fn a_signature_of_one_kind_is_not_valid_for_another() {
        let k = key(3);
        let list = HashList {
            seq: 1,
            created: "x".into(),
            entries: vec![],
        };
        let mut env = list.sign(&k);
        assert!(HashList::open(&env, &[k.public()]).is_ok());
        // The same bytes presented as an exception: the format is part of what was signed.
        let e = ExceptionGrant::open(&env, &[k.public()]).unwrap_err();
        assert!(matches!(e, FleetError::Format { .. }), "{e}");
        env.format = EXCEPTION_FORMAT.into();
        assert_eq!(
            ExceptionGrant::open(&env, &[k.public()]).unwrap_err(),
            FleetError::BadSignature
        );
    }

    #[test]
    fn bundle_content_checks() {
        let k = key(1);
        let mut b = bundle();
        b.version = 0;
        assert!(open_bundle(&b.sign(&k).to_text(), &[k.public()]).is_err());
        let mut b = bundle();
        b.policy.push('x');
        assert!(open_bundle(&b.sign(&k).to_text(), &[k.public()])
            .unwrap_err()
            .to_string()
            .contains("SHA-256"));
        let mut b = bundle();
        b.files.insert("../etc/shadow".into(), String::new());
        assert!(open_bundle(&b.sign(&k).to_text(), &[k.public()]).is_err());
        assert!(peek_bundle(&bundle().sign(&k).to_text()).is_ok());
    }

    #[test]
    fn key_files_round_trip() {
        let k = key(7);
        let back = SecretKey::from_file_text(&k.to_file_text()).unwrap();
        assert_eq!(back.public(), k.public());
        assert_eq!(
            PublicKey::from_hex(&k.public().to_string()),
            Some(k.public())
        );
        assert_eq!(PublicKey::from_hex("zz"), None);
    }
}

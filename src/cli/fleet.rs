//! `interdict policy keygen|sign|verify` (IT's side of signed policy bundles) and
//! `interdict exception request` (an employee's side of exceptions).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use interdict_fleet::{PublicKey, SecretKey};

use super::exit;

/// `interdict policy keygen --out KEY`: a new ed25519 key, written 0600 (never over an existing
/// file); the public key is printed.
pub fn keygen(out: &Path) -> anyhow::Result<u8> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no random numbers: {e}"))?;
    let key = SecretKey::from_seed(seed);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| {
            format!(
                "cannot create {} (an existing key is never overwritten)",
                out.display()
            )
        })?;
    f.write_all(key.to_file_text().as_bytes())?;
    f.sync_all()?;
    println!("{}", key.public());
    eprintln!(
        "private key written to {} (0600): keep it offline; agents pin the public key above ([collector] policy_public_key)",
        out.display()
    );
    Ok(exit::OK)
}

fn read_key(path: &Path) -> anyhow::Result<SecretKey> {
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the key {}", path.display()))?;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "interdict: warning: {} is readable by others than its owner (mode {:o}): a policy key belongs to IT alone",
                path.display(),
                m.permissions().mode() & 0o777
            );
        }
    }
    SecretKey::from_file_text(&text).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: not a key (64 hex digits, as `interdict policy keygen` writes it)",
            path.display()
        )
    })
}

/// `interdict policy sign --key KEY POLICY --out BUNDLE [--version N]`.
pub fn sign(key: &Path, policy: &Path, out: &Path, version: Option<u64>) -> anyhow::Result<u8> {
    let key = read_key(key)?;
    let now = std::time::SystemTime::now();
    let version = version.unwrap_or_else(|| {
        now.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    if version == 0 {
        anyhow::bail!("--version starts at 1");
    }
    let (body, loaded) =
        match crate::policy::bundle::body_of(policy, version, interdict_event::rfc3339(now)) {
            Ok(x) => x,
            Err(e) => {
                let text = e.to_string();
                eprint!("{text}");
                if !text.ends_with('\n') {
                    eprintln!();
                }
                eprintln!("{}: not signed", policy.display());
                return Ok(exit::ERROR);
            }
        };
    for w in &loaded.warnings.0 {
        eprintln!("{w}");
    }
    // What the agents will read: the policy from the bundle's own files.
    if let Err(d) = crate::policy::bundle::to_loaded(&body) {
        eprint!("{d}");
        anyhow::bail!("the bundle does not read back as the policy; not signed");
    }
    let env = body.sign(&key);
    crate::fsutil::write_atomic(out, env.to_text().as_bytes(), 0o644)
        .with_context(|| format!("cannot write {}", out.display()))?;
    let info = loaded.policy.info();
    println!(
        "{}: bundle version {version} of policy {} {} (sha256 {}), {} file(s), signed by {}",
        out.display(),
        info.name,
        info.version,
        body.policy_sha256,
        body.files.len(),
        key.public()
    );
    Ok(exit::OK)
}

/// A public key given as hex or as a file holding it.
fn public_key(arg: &str) -> anyhow::Result<PublicKey> {
    if let Some(k) = PublicKey::from_hex(arg) {
        return Ok(k);
    }
    let text = std::fs::read_to_string(arg).with_context(|| {
        format!("`{arg}` is neither a public key (64 hex digits) nor a readable file")
    })?;
    PublicKey::from_hex(text.trim())
        .ok_or_else(|| anyhow::anyhow!("{arg}: not a public key (64 hex digits)"))
}

/// `interdict policy verify --public-key PUB BUNDLE`: exit 0 when it is signed by one of the
/// keys and its policy is valid, 2 otherwise (with why).
pub fn verify(keys: &[String], bundle: &PathBuf) -> anyhow::Result<u8> {
    let pinned = keys
        .iter()
        .map(|k| public_key(k))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let text = std::fs::read_to_string(bundle)
        .with_context(|| format!("cannot read {}", bundle.display()))?;
    let (body, key) = match interdict_fleet::open_bundle(&text, &pinned) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{}: refused: {e}", bundle.display());
            return Ok(exit::ERROR);
        }
    };
    let loaded = match crate::policy::bundle::to_loaded(&body) {
        Ok(l) => l,
        Err(d) => {
            eprint!("{d}");
            eprintln!(
                "{}: refused: the signature holds but the policy is invalid",
                bundle.display()
            );
            return Ok(exit::ERROR);
        }
    };
    let info = loaded.policy.info();
    println!(
        "{}: valid: bundle version {}, signed {} by {key}, policy {} {} (sha256 {}), {} file(s)",
        bundle.display(),
        body.version,
        body.created,
        info.name,
        info.version,
        body.policy_sha256,
        body.files.len()
    );
    Ok(exit::OK)
}

/// `interdict exception request --rule RULE --days N --reason TEXT`: through the agent's
/// control socket, as whoever runs it.
#[cfg(target_os = "linux")]
pub fn request(socket: &Path, rule: &str, days: u64, reason: &str) -> anyhow::Result<u8> {
    let req = serde_json::json!({ "rule": rule, "days": days, "reason": reason });
    let line = crate::agent::control::request(socket, &format!("exception-request {req}"))?;
    let v: serde_json::Value = serde_json::from_str(&line).context("the agent's answer")?;
    println!("{}", v["message"].as_str().unwrap_or(line.trim()));
    Ok(exit::OK)
}

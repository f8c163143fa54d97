//! Installed software: walk install roots and evaluate every executable, interpreter script,
//! symlink and package marker against the policy.
//!
//! The walk never follows symlinks into other trees (a symlink is resolved once, to evaluate its
//! target), never opens FIFOs or devices, streams files of any size through SHA-256, and records
//! what it could not read instead of stopping. Hashing runs in parallel across cores.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use interdict_policy::{Ecosystem, Facts, PackageRef, Policy};
use rayon::prelude::*;
use serde::Serialize;
use walkdir::WalkDir;

use crate::inventory::hash::{open_regular, HashMemo};
use crate::inventory::host::Accounts;

/// The largest `package.json` read to learn a package's name.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// Something the scan could not look at, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The path (lossy for names that are not UTF-8).
    pub path: String,
    /// Why it was skipped.
    pub reason: String,
}

/// Counters shared with a progress display.
#[derive(Debug, Default)]
pub struct Progress {
    /// Entries listed so far.
    pub files: AtomicU64,
    /// Bytes hashed so far.
    pub hashed_bytes: AtomicU64,
}

/// A package marker found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFound {
    /// The package.
    pub package: PackageRef,
    /// Its version, when the marker says.
    pub version: Option<String>,
}

/// One thing found on disk that the policy matched.
#[derive(Debug, Clone)]
pub struct Found {
    /// Where it was found (a symlink, an executable, a package folder).
    pub path: PathBuf,
    /// The canonical file a symlink points to, or the file itself.
    pub canonical: PathBuf,
    /// The facts the policy saw.
    pub facts: Facts,
    /// The package and version, for package markers.
    pub package: Option<PackageFound>,
    /// The policy's decision.
    pub decision: interdict_policy::Decision,
}

/// The result of walking the install roots.
#[derive(Debug, Default)]
pub struct InstalledScan {
    /// Matches, one per rule and canonical file.
    pub found: Vec<Found>,
    /// What could not be read.
    pub skipped: Vec<Skipped>,
    /// Entries looked at.
    pub scanned_files: u64,
    /// Bytes hashed.
    pub hashed_bytes: u64,
}

enum Item {
    Exe(PathBuf, std::fs::Metadata),
    Script(PathBuf, std::fs::Metadata),
    Symlink(PathBuf),
    NpmManifest(PathBuf),
    Package(PathBuf, PackageFound),
}

/// The install roots scanned when none are given: PATH folders, /usr/local, /opt, the npm global
/// prefix and, in every home, the folders where AI coding agents and editor extensions install.
pub fn default_roots(accounts: &Accounts) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        roots.extend(std::env::split_paths(&path).filter(|p| p.is_absolute()));
    }
    roots.push("/usr/local".into());
    roots.push("/opt".into());
    roots.push("/usr/lib/node_modules".into());
    // The npm global prefix: beside any `node` on PATH.
    for dir in roots.clone() {
        if dir.join("node").exists() {
            if let Some(prefix) = dir.parent() {
                roots.push(prefix.join("lib/node_modules"));
            }
        }
    }
    for home in accounts.homes() {
        for rel in [
            ".local/bin",
            ".local/share",
            ".npm-global",
            ".cursor/extensions",
            ".windsurf/extensions",
            ".claude/local",
            ".opencode/bin",
            ".codex/packages",
            ".npm/_npx",
        ] {
            roots.push(home.join(rel));
        }
        if let Ok(rd) = std::fs::read_dir(&home) {
            for e in rd.flatten() {
                let name = e.file_name();
                if name.to_string_lossy().starts_with(".vscode") {
                    roots.push(e.path().join("extensions"));
                }
            }
        }
    }
    roots
}

/// Canonicalize roots and drop those inside another root. With `explicit`, a root that cannot be
/// read is reported as skipped; default roots that do not exist are simply left out.
pub fn normalize_roots(roots: &[PathBuf], explicit: bool) -> (Vec<PathBuf>, Vec<Skipped>) {
    let mut skipped = Vec::new();
    let mut canon: Vec<PathBuf> = Vec::new();
    for r in roots {
        match std::fs::canonicalize(r) {
            Ok(c) => canon.push(c),
            Err(e) if explicit || e.kind() != io::ErrorKind::NotFound => skipped.push(Skipped {
                path: r.display().to_string(),
                reason: format!("root: {}", describe(&e)),
            }),
            Err(_) => {}
        }
    }
    canon.sort();
    canon.dedup();
    let mut out: Vec<PathBuf> = Vec::new();
    for c in canon {
        if !out.iter().any(|o| c.starts_with(o)) {
            out.push(c);
        }
    }
    (out, skipped)
}

/// Why a listed entry could not be read: a file that is gone was there when the walk listed it.
fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => "vanished during the scan".to_string(),
        _ => crate::io_reason(e),
    }
}

fn lossy(p: &Path) -> String {
    crate::path_text(p)
}

fn name_of(p: &Path) -> Option<String> {
    p.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// `publisher.name-1.2.3[-platform]` -> (`publisher.name`, `1.2.3[-platform]`).
pub fn parse_extension_dir(name: &str) -> Option<(String, String)> {
    let b = name.as_bytes();
    let i = (0..b.len().saturating_sub(1)).find(|&i| b[i] == b'-' && b[i + 1].is_ascii_digit())?;
    let id = &name[..i];
    let (publisher, ext) = id.split_once('.')?;
    if publisher.is_empty() || ext.is_empty() {
        return None;
    }
    Some((id.to_string(), name[i + 1..].to_string()))
}

/// `aider_chat-0.86.1.dist-info` -> (`aider_chat`, `0.86.1`).
pub fn parse_dist_info_dir(name: &str) -> Option<(String, String)> {
    let stem = name
        .strip_suffix(".dist-info")
        .or_else(|| name.strip_suffix(".egg-info"))?;
    let (pkg, version) = stem.split_once('-')?;
    if pkg.is_empty() {
        return None;
    }
    Some((pkg.to_string(), version.to_string()))
}

fn is_npm_manifest(path: &Path) -> bool {
    let Some(pkg_dir) = path.parent() else {
        return false;
    };
    let Some(up) = pkg_dir.parent() else {
        return false;
    };
    let up_name = up.file_name().unwrap_or_default();
    if up_name == "node_modules" {
        return true;
    }
    up_name.to_string_lossy().starts_with('@')
        && up.parent().and_then(Path::file_name) == Some(OsStr::new("node_modules"))
}

/// The package a `package.json` declares.
pub fn read_npm_manifest(path: &Path) -> io::Result<PackageFound> {
    use std::io::Read;
    let (f, meta) = open_regular(path, false)?;
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(io::Error::other("package.json larger than 1 MiB"));
    }
    let mut buf = Vec::new();
    f.take(MAX_MANIFEST_BYTES).read_to_end(&mut buf)?;
    #[derive(serde::Deserialize)]
    struct Manifest {
        name: Option<String>,
        version: Option<String>,
    }
    let m: Manifest = serde_json::from_slice(&buf)
        .map_err(|e| io::Error::other(format!("unreadable package.json: {e}")))?;
    let name = m
        .name
        .ok_or_else(|| io::Error::other("package.json without a name"))?;
    Ok(PackageFound {
        package: PackageRef::new(Ecosystem::Npm, &name),
        version: m.version,
    })
}

/// Walk `roots` (already normalized) and evaluate everything found against `policy`.
pub fn scan(
    policy: &Policy,
    roots: &[PathBuf],
    accounts: &Accounts,
    host: &str,
    memo: &HashMemo,
    progress: &Progress,
) -> InstalledScan {
    let mut out = InstalledScan::default();
    let mut items = Vec::new();
    for root in roots {
        // Roots are canonical; a root that is a symlink is a changed path handed in by the
        // install watcher, and is looked at as the link it is, never walked through.
        for entry in WalkDir::new(root)
            .follow_links(false)
            .follow_root_links(false)
        {
            progress.files.fetch_add(1, Ordering::Relaxed);
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    let path = e.path().map(lossy).unwrap_or_else(|| lossy(root));
                    let reason = match e.io_error() {
                        Some(io) => describe(io),
                        None => e.to_string(),
                    };
                    out.skipped.push(Skipped { path, reason });
                    continue;
                }
            };
            out.scanned_files += 1;
            let ft = entry.file_type();
            let path = entry.path();
            if ft.is_dir() {
                let name = entry.file_name().to_string_lossy();
                if let Some((pkg, version)) = parse_dist_info_dir(&name) {
                    items.push(Item::Package(
                        path.to_path_buf(),
                        PackageFound {
                            package: PackageRef::new(Ecosystem::Pypi, &pkg),
                            version: Some(version),
                        },
                    ));
                } else if path.parent().and_then(Path::file_name) == Some(OsStr::new("extensions"))
                {
                    if let Some((id, version)) = parse_extension_dir(&name) {
                        items.push(Item::Package(
                            path.to_path_buf(),
                            PackageFound {
                                package: PackageRef::new(Ecosystem::Vscode, &id),
                                version: Some(version),
                            },
                        ));
                    }
                }
            } else if ft.is_symlink() {
                items.push(Item::Symlink(path.to_path_buf()));
            } else if ft.is_file() {
                if entry.file_name() == "package.json" && is_npm_manifest(path) {
                    items.push(Item::NpmManifest(path.to_path_buf()));
                }
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) => {
                        out.skipped.push(Skipped {
                            path: lossy(path),
                            reason: e.io_error().map(describe).unwrap_or_else(|| e.to_string()),
                        });
                        continue;
                    }
                };
                if meta.mode() & 0o111 != 0 {
                    items.push(Item::Exe(path.to_path_buf(), meta));
                } else if policy.is_script_path(path) {
                    items.push(Item::Script(path.to_path_buf(), meta));
                }
            } else {
                let kind = if ft.is_fifo() {
                    "fifo"
                } else if ft.is_socket() {
                    "socket"
                } else if ft.is_block_device() {
                    "block device"
                } else if ft.is_char_device() {
                    "character device"
                } else {
                    "special file"
                };
                out.skipped.push(Skipped {
                    path: lossy(path),
                    reason: format!("not a regular file ({kind}); never opened"),
                });
            }
        }
    }

    let hash = policy.needs_sha256();
    let results: Vec<Result<Option<Found>, Skipped>> = items
        .into_par_iter()
        .map(|item| evaluate(policy, item, accounts, host, memo, progress, hash))
        .collect();
    // Report a file where it lies rather than through a symlink to it.
    let (direct, rest): (Vec<_>, Vec<_>) = results
        .into_iter()
        .partition(|r| matches!(r, Ok(Some(f)) if f.path == f.canonical));
    let mut seen = HashSet::new();
    for r in direct.into_iter().chain(rest) {
        match r {
            Ok(Some(f)) => {
                let rule = policy.rule(&f.decision).id.clone();
                let key = (
                    rule,
                    f.canonical.clone(),
                    f.package.as_ref().map(|p| p.package.clone()),
                );
                if seen.insert(key) {
                    out.found.push(f);
                }
            }
            Ok(None) => {}
            Err(s) => out.skipped.push(s),
        }
    }
    out.hashed_bytes = progress.hashed_bytes.load(Ordering::Relaxed);
    out
}

fn owner_facts(facts: &mut Facts, uid: u32, accounts: &Accounts, host: &str) {
    facts.user = Some(accounts.user_name(uid));
    facts.groups = accounts.groups_of(uid);
    facts.host = Some(host.to_string());
}

/// Fill in the executable and script facts of a regular file, hashing it when the policy needs
/// digests. False when the file is neither an executable nor a script the policy names.
fn file_facts(
    policy: &Policy,
    facts: &mut Facts,
    file: &Path,
    meta: &std::fs::Metadata,
    memo: &HashMemo,
    progress: &Progress,
    hash: bool,
) -> Result<bool, Skipped> {
    let is_exe = meta.mode() & 0o111 != 0;
    let is_script = policy.is_script_path(file);
    if !is_exe && !is_script {
        return Ok(false);
    }
    let sha = if hash {
        let skip = |e: io::Error| Skipped {
            path: lossy(file),
            reason: describe(&e),
        };
        // A file whose identity (dev, inode, size, mtime, ctime) is known needs no open: the
        // walk's lstat already says it has not changed since it was hashed.
        if let Some(d) = memo.get(&crate::inventory::hash::FileKey::of(meta)) {
            Some(d)
        } else {
            let (f, m) = open_regular(file, false).map_err(skip)?;
            let (d, cached) = memo.hash_file(&f, &m).map_err(skip)?;
            if !cached {
                progress.hashed_bytes.fetch_add(m.len(), Ordering::Relaxed);
            }
            Some(d)
        }
    } else {
        None
    };
    if is_exe {
        facts.exe_path = Some(file.to_path_buf());
        facts.exe_sha256 = sha;
    }
    if is_script {
        facts.script_path = Some(file.to_path_buf());
        facts.script_sha256 = sha;
    }
    Ok(true)
}

fn evaluate(
    policy: &Policy,
    item: Item,
    accounts: &Accounts,
    host: &str,
    memo: &HashMemo,
    progress: &Progress,
    hash: bool,
) -> Result<Option<Found>, Skipped> {
    let skip = |p: &Path, e: &io::Error| Skipped {
        path: lossy(p),
        reason: describe(e),
    };
    let mut facts = Facts::default();
    let mut package = None;
    let (path, canonical, meta_uid) = match item {
        Item::Exe(path, meta) | Item::Script(path, meta) => {
            facts.add_name(name_of(&path));
            if !file_facts(policy, &mut facts, &path, &meta, memo, progress, hash)? {
                return Ok(None);
            }
            (path.clone(), path, meta.uid())
        }
        Item::Symlink(path) => {
            let target = match std::fs::canonicalize(&path) {
                Ok(t) => t,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    return Err(Skipped {
                        path: lossy(&path),
                        reason: "dangling symlink".into(),
                    })
                }
                Err(e) => return Err(skip(&path, &e)),
            };
            let meta = match std::fs::metadata(&target) {
                Ok(m) if m.is_file() => m,
                Ok(_) => return Ok(None),
                Err(e) => return Err(skip(&path, &e)),
            };
            facts.add_name(name_of(&path));
            facts.add_name(name_of(&target));
            if !file_facts(policy, &mut facts, &target, &meta, memo, progress, hash)? {
                return Ok(None);
            }
            (path, target, meta.uid())
        }
        Item::NpmManifest(manifest) => {
            let found = read_npm_manifest(&manifest).map_err(|e| Skipped {
                path: lossy(&manifest),
                reason: e.to_string(),
            })?;
            let dir = manifest.parent().unwrap_or(&manifest).to_path_buf();
            let uid = std::fs::symlink_metadata(&dir)
                .map(|m| m.uid())
                .unwrap_or(0);
            facts.packages.push(found.package.clone());
            package = Some(found);
            (dir.clone(), dir, uid)
        }
        Item::Package(dir, found) => {
            let uid = std::fs::symlink_metadata(&dir)
                .map_err(|e| skip(&dir, &e))?
                .uid();
            facts.packages.push(found.package.clone());
            package = Some(found);
            (dir.clone(), dir, uid)
        }
    };
    owner_facts(&mut facts, meta_uid, accounts, host);
    let Some(decision) = policy.evaluate(&facts) else {
        return Ok(None);
    };
    Ok(Some(Found {
        path,
        canonical,
        facts,
        package,
        decision,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_vanishes_after_listing_is_skipped_not_fatal() {
        let text = format!(
            "[policy]\nname = \"t\"\nversion = \"1\"\nmode = \"enforce\"\n[[rule]]\nid = \"r\"\nname = \"r\"\nrisk = \"low\"\nreason = \"r\"\naction = \"report\"\n[rule.match]\nsha256 = [\"{}\"]\n",
            "0".repeat(64)
        );
        let (policy, _) = Policy::load("t.toml", &text, &interdict_policy::NoIncludes).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tool");
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        let r = evaluate(
            &policy,
            Item::Exe(p.clone(), meta),
            &Accounts::default(),
            "h",
            &HashMemo::default(),
            &Progress::default(),
            true,
        );
        let skipped = r.expect_err("skipped");
        assert_eq!(skipped.reason, "vanished during the scan");
        assert_eq!(skipped.path, p.to_string_lossy());
    }

    #[test]
    fn extension_dirs() {
        assert_eq!(
            parse_extension_dir("anthropic.claude-code-2.0.1-linux-x64"),
            Some(("anthropic.claude-code".into(), "2.0.1-linux-x64".into()))
        );
        assert_eq!(parse_extension_dir("no-version"), None);
        assert_eq!(parse_extension_dir("nodot-1.0"), None);
    }

    #[test]
    fn dist_info_dirs() {
        assert_eq!(
            parse_dist_info_dir("aider_chat-0.86.1.dist-info"),
            Some(("aider_chat".into(), "0.86.1".into()))
        );
        assert_eq!(parse_dist_info_dir("foo.txt"), None);
    }

    #[test]
    fn npm_manifest_layout() {
        assert!(is_npm_manifest(Path::new("/p/node_modules/x/package.json")));
        assert!(is_npm_manifest(Path::new(
            "/p/node_modules/@a/x/package.json"
        )));
        assert!(!is_npm_manifest(Path::new(
            "/p/node_modules/x/lib/package.json"
        )));
        assert!(!is_npm_manifest(Path::new("/p/src/package.json")));
    }
}

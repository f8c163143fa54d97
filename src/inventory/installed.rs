//! Installed software: walk install roots and evaluate every executable, interpreter script,
//! symlink and package marker against the policy.
//!
//! The walk never follows symlinks into other trees (a symlink is resolved once, to evaluate its
//! target), never opens FIFOs or devices, streams files of any size through SHA-256, and records
//! what it could not read instead of stopping. Hashing runs in parallel across cores.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use interdict_policy::{Ecosystem, Facts, PackageRef, Policy};
use rayon::prelude::*;
use serde::Serialize;
use walkdir::WalkDir;

use crate::inventory::facts::FactsBuilder;
use crate::inventory::hash::{open_regular, HashMemo};
use crate::inventory::host::Accounts;
use crate::inventory::walk_state::{DirKey, DirState, WalkState, RACY_NS};

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

/// An AI-agent configuration file that a `configs` selector names, with what it declares.
/// Configuration files are reported only: never blocked, deleted or quarantined.
#[derive(Debug, Clone)]
pub struct ConfigFound {
    /// Where it was found (a symlink or the file).
    pub path: PathBuf,
    /// The file read (the symlink's target, or the file itself).
    pub canonical: PathBuf,
    /// The facts the policy saw (`config_path`, `config_home_path`, owner).
    pub facts: Facts,
    /// The policy's decision (selector `config`).
    pub decision: interdict_policy::Decision,
    /// The MCP servers it declares.
    pub config: crate::inventory::footprint::ConfigFile,
}

/// The result of walking the install roots.
#[derive(Debug, Default)]
pub struct InstalledScan {
    /// Matches, one per rule and canonical file.
    pub found: Vec<Found>,
    /// AI-agent configuration files, one per file (only from [`scan_with`]; [`scan`] leaves
    /// configuration files out).
    pub configs: Vec<ConfigFound>,
    /// What could not be read.
    pub skipped: Vec<Skipped>,
    /// Entries looked at.
    pub scanned_files: u64,
    /// Bytes hashed.
    pub hashed_bytes: u64,
}

enum Item {
    Config(PathBuf),
    Exe(PathBuf, std::fs::Metadata),
    Script(PathBuf, std::fs::Metadata),
    Symlink(PathBuf),
    NpmManifest(PathBuf),
    Package(PathBuf, PackageFound),
}

impl Item {
    /// The entry it was made from.
    fn path(&self) -> &Path {
        match self {
            Item::Config(p)
            | Item::Exe(p, _)
            | Item::Script(p, _)
            | Item::Symlink(p)
            | Item::NpmManifest(p)
            | Item::Package(p, _) => p,
        }
    }
}

/// The install roots scanned when none are given: the system-wide ones
/// ([`system_roots`]) and, in every home, [`home_roots`].
pub fn default_roots(accounts: &Accounts) -> Vec<PathBuf> {
    let mut roots = system_roots();
    for home in accounts.homes() {
        roots.extend(home_roots(&home));
    }
    roots
}

/// System-wide install roots: PATH folders, `/usr/local`, `/opt`, the npm global prefix beside
/// any `node` on PATH, `/usr/lib/node_modules`, and Homebrew on Linux
/// (`/home/linuxbrew/.linuxbrew`: `Cellar`, `Caskroom`, `bin`).
pub fn system_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        roots.extend(std::env::split_paths(&path).filter(|p| p.is_absolute()));
    }
    roots.push("/usr/local".into());
    roots.push("/opt".into());
    roots.push("/usr/lib/node_modules".into());
    roots.push("/home/linuxbrew/.linuxbrew".into());
    // The npm global prefix: beside any `node` on PATH.
    for dir in roots.clone() {
        if dir.join("node").exists() {
            if let Some(prefix) = dir.parent() {
                roots.push(prefix.join("lib/node_modules"));
            }
        }
    }
    roots
}

/// Folders in a home where AI coding agents are installed or cached, one per channel:
///
/// | channel | folder |
/// |---|---|
/// | native installers, pipx, uv tools, fnm, mise, code-server extensions | `.local/share`, `.local/bin` |
/// | `pip install --user` | `.local/lib` |
/// | `npm -g` with a user prefix | `.npm-global` |
/// | `npx` | `.npm/_npx` |
/// | `pnpm dlx`, pnpm's global store | `.cache/pnpm`, `.local/share/pnpm` |
/// | `bunx`, `bun add -g` | `.bun/install`, `.bun/bin` |
/// | `yarn global add` (v1: packages under `.local/share/yarn/global`), Yarn's cache | `.yarn/bin`, `.cache/yarn` |
/// | `cargo install` | `.cargo/bin` |
/// | `uvx` | `.cache/uv` |
/// | legacy pipx | `.local/pipx` |
/// | nvm, volta, asdf, legacy fnm, pyenv | `.nvm/versions`, `.volta/tools`, `.asdf/installs`, `.fnm/node-versions`, `.pyenv/versions` |
/// | VS Code, VSCodium, Remote SSH, Cursor, Windsurf (and their servers) | `.vscode*/extensions`, `.cursor*/extensions`, `.windsurf*/extensions` |
/// | Claude Code's legacy local install, OpenCode, Codex | `.claude/local`, `.opencode/bin`, `.codex/packages` |
/// | Homebrew in a home | `.linuxbrew` |
pub fn home_roots(home: &Path) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = [
        ".local/bin",
        ".local/share",
        ".local/lib",
        ".local/pipx",
        ".npm-global",
        ".npm/_npx",
        ".cache/pnpm",
        ".bun/install",
        ".bun/bin",
        ".yarn/bin",
        ".cache/yarn",
        ".cargo/bin",
        ".cache/uv",
        ".nvm/versions",
        ".volta/tools",
        ".volta/bin",
        ".asdf/installs",
        ".fnm/node-versions",
        ".pyenv/versions",
        ".linuxbrew",
        ".claude/local",
        ".opencode/bin",
        ".codex/packages",
    ]
    .iter()
    .map(|rel| home.join(rel))
    .collect();
    // Editor extension folders: .vscode, .vscode-server, .vscode-oss (VSCodium),
    // .vscode-insiders, .cursor, .cursor-server, .windsurf, .windsurf-server...
    if let Ok(rd) = std::fs::read_dir(home) {
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if [".vscode", ".cursor", ".windsurf", ".kiro", ".trae"]
                .iter()
                .any(|p| name.starts_with(p))
            {
                roots.push(e.path().join("extensions"));
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
    // Bun's package cache: `.bun/install/cache/[@scope/]NAME@VERSION@@@N/package.json`.
    if pkg_dir
        .file_name()
        .is_some_and(|n| n.to_string_lossy().contains("@@@"))
    {
        let cache = if up_name.to_string_lossy().starts_with('@') {
            up.parent()
        } else {
            Some(up)
        };
        if cache.is_some_and(|c| {
            c.file_name() == Some(OsStr::new("cache"))
                && c.parent().and_then(Path::file_name) == Some(OsStr::new("install"))
        }) {
            return true;
        }
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
/// Configuration files are left out (see [`scan_with`]).
pub fn scan(
    policy: &Policy,
    roots: &[PathBuf],
    accounts: &Accounts,
    host: &str,
    memo: &HashMemo,
    progress: &Progress,
) -> InstalledScan {
    scan_with(policy, roots, None, accounts, host, memo, progress)
}

/// Where to look for AI-agent configuration files, beside the install roots.
#[derive(Debug, Clone, Default)]
pub struct ConfigScope {
    /// Users' homes: a `~/` glob matches a file under one of them.
    pub homes: Vec<PathBuf>,
    /// Homes searched for configuration files (see [`config_candidates`]).
    pub search: Vec<PathBuf>,
    /// Also look up the absolute globs (`/etc/claude-code/...`).
    pub absolute: bool,
}

/// Like [`scan`]; with a `config` scope, also the AI-agent configuration files the policy's
/// `configs` name: those under the roots, and those [`config_candidates`] finds.
pub fn scan_with(
    policy: &Policy,
    roots: &[PathBuf],
    config: Option<&ConfigScope>,
    accounts: &Accounts,
    host: &str,
    memo: &HashMemo,
    progress: &Progress,
) -> InstalledScan {
    Scanner::new(policy, accounts, host, memo, progress).scan(roots, config, None)
}

/// How a walk uses what the walk before it recorded in a [`WalkState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Read every folder and look at every entry (one `lstat` each): notices a file rewritten in
    /// place. Records what it saw.
    Full,
    /// Read again only the folders whose identity or times changed since the state was recorded
    /// (one `stat` per folder); in the others, look only at the entries kept (findings,
    /// unreadable entries, symlinks). Never notices a file rewritten in place in an unchanged
    /// folder: for the agent, whose watcher reports such writes (and has the folder read again)
    /// between full passes. Folders on another filesystem than their parent (mounted inside a
    /// root, where the watcher may be blind) and the roots named in `full_under` are walked as
    /// in a full pass. With a state made under another policy (`fingerprint`), a full pass.
    Quick,
}

/// Walk `roots` like [`scan`], using and then replacing what the last walk recorded in `state`
/// (see [`Pass`] and [`WalkRequest`]).
pub fn scan_walk(
    policy: &Policy,
    roots: &[PathBuf],
    walk: WalkRequest<'_>,
    accounts: &Accounts,
    host: &str,
    memo: &HashMemo,
    progress: &Progress,
) -> InstalledScan {
    Scanner::new(policy, accounts, host, memo, progress).scan(roots, None, Some(walk))
}

/// A walk that uses and records a [`WalkState`] (see [`scan_walk`]).
#[derive(Debug)]
pub struct WalkRequest<'a> {
    /// What the last walk recorded; replaced by what this one saw.
    pub state: &'a mut WalkState,
    /// Quick or full.
    pub pass: Pass,
    /// Identifies the policy: a quick pass over a state made under another is a full one.
    pub fingerprint: [u8; 32],
    /// Roots a quick pass walks in full anyway.
    pub full_under: &'a [PathBuf],
}

/// A folder to visit: the device of its parent, and whether a quick pass may trust it.
struct DirWork {
    dir: PathBuf,
    parent_dev: u64,
    quick: bool,
}

/// What visiting one folder found.
#[derive(Default)]
struct Visited {
    items: Vec<Item>,
    skipped: Vec<Skipped>,
    scanned: u64,
    /// The folder as recorded for the next walk.
    state: Option<(PathBuf, DirState)>,
    /// Its subfolders, to visit next.
    next: Vec<DirWork>,
}

impl Visited {
    fn count(&mut self, progress: &Progress) {
        progress.files.fetch_add(1, Ordering::Relaxed);
        self.scanned += 1;
    }
}

/// What every part of one scan needs.
struct Scanner<'a> {
    policy: &'a Policy,
    accounts: &'a Accounts,
    host: &'a str,
    memo: &'a HashMemo,
    progress: &'a Progress,
}

impl<'a> Scanner<'a> {
    fn new(
        policy: &'a Policy,
        accounts: &'a Accounts,
        host: &'a str,
        memo: &'a HashMemo,
        progress: &'a Progress,
    ) -> Scanner<'a> {
        Scanner {
            policy,
            accounts,
            host,
            memo,
            progress,
        }
    }

    fn scan(
        &self,
        roots: &[PathBuf],
        config: Option<&ConfigScope>,
        mut walk: Option<WalkRequest<'_>>,
    ) -> InstalledScan {
        let policy = self.policy;
        let mut out = InstalledScan::default();
        let config = config.filter(|_| policy.has_configs());
        let configs = config.map(|c| c.homes.as_slice());
        // Family signatures are looked for in the read that hashes each file.
        self.memo.set_searcher(policy.content_searcher().cloned());
        let mut items = self.walk(roots, configs, walk.as_mut(), &mut out);
        if let Some(c) = config {
            let (found, skipped) = config_candidates(policy, c);
            items.extend(found.into_iter().map(Item::Config));
            out.skipped.extend(skipped);
        }
        // What to look at again in an unchanged folder: whatever was not plainly clean.
        let kept: Option<Vec<(PathBuf, bool)>> = walk.as_ref().map(|_| {
            items
                .iter()
                .map(|i| (i.path().to_path_buf(), matches!(i, Item::Symlink(_))))
                .collect()
        });
        // Read files when a digest or a family signature can decide; one read does both.
        let hash = policy.needs_sha256() || policy.needs_content();
        let empty: &[PathBuf] = &[];
        let homes = configs.unwrap_or(empty);
        let configs_found = std::sync::Mutex::new(Vec::new());
        let results: Vec<Result<Option<Found>, Skipped>> = items
            .into_par_iter()
            .map(|item| match item {
                Item::Config(p) => match config_item(policy, &p, homes, self.accounts, self.host) {
                    Ok(Some(c)) => {
                        configs_found.lock().expect("config list poisoned").push(c);
                        Ok(None)
                    }
                    Ok(None) => Ok(None),
                    Err(s) => Err(s),
                },
                item => evaluate(
                    policy,
                    item,
                    self.accounts,
                    self.host,
                    self.memo,
                    self.progress,
                    hash,
                ),
            })
            .collect();
        if let (Some(w), Some(kept)) = (walk, kept) {
            for ((path, always), r) in kept.into_iter().zip(&results) {
                if always || !matches!(r, Ok(None)) {
                    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
                        continue;
                    };
                    if let Some(d) = w.state.dirs.get_mut(dir) {
                        d.keep.push(name.to_os_string());
                    }
                }
            }
        }
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
        let mut configs_found = configs_found.into_inner().expect("config list poisoned");
        configs_found.sort_by(|a, b| a.path.cmp(&b.path));
        let mut seen_configs = HashSet::new();
        configs_found.retain(|c| seen_configs.insert(c.path.clone()));
        out.configs = configs_found;
        out.hashed_bytes = self.progress.hashed_bytes.load(Ordering::Relaxed);
        out
    }

    /// Walk the roots (never through a symlink; across filesystems) and list what to evaluate.
    /// With a walk state, a quick pass skips unchanged folders (see [`Pass`]), and every pass
    /// records the folders it saw in the state, replacing what was there. The folders of each
    /// depth are visited in parallel.
    fn walk(
        &self,
        roots: &[PathBuf],
        configs: Option<&[PathBuf]>,
        walk: Option<&mut WalkRequest<'_>>,
        out: &mut InstalledScan,
    ) -> Vec<Item> {
        let mut items = Vec::new();
        let mut walk = walk;
        let (old, quick, full_under) = match walk.as_deref_mut() {
            Some(w) => {
                let trusted = w.pass == Pass::Quick && w.state.fingerprint == w.fingerprint;
                (std::mem::take(&mut w.state.dirs), trusted, w.full_under)
            }
            None => (HashMap::new(), false, &[][..]),
        };
        let record = walk.is_some();
        let mut seen: HashMap<PathBuf, DirState> = HashMap::new();
        let mut level = Vec::new();
        for root in roots {
            self.progress.files.fetch_add(1, Ordering::Relaxed);
            out.scanned_files += 1;
            // Roots are canonical; a root that is a symlink is a changed path handed in by the
            // install watcher, and is looked at as the link it is, never walked through.
            let meta = match std::fs::symlink_metadata(root) {
                Ok(m) => m,
                Err(e) => {
                    out.skipped.push(Skipped {
                        path: lossy(root),
                        reason: describe(&e),
                    });
                    continue;
                }
            };
            let mut v = Visited::default();
            self.entry(root, meta.file_type(), || Ok(meta.clone()), configs, &mut v);
            items.append(&mut v.items);
            out.skipped.append(&mut v.skipped);
            if meta.is_dir() {
                level.push(DirWork {
                    dir: root.clone(),
                    parent_dev: meta.dev(),
                    quick: quick && !full_under.contains(root),
                });
            }
        }
        while !level.is_empty() {
            let visited: Vec<Visited> = std::mem::take(&mut level)
                .into_par_iter()
                .map(|w| {
                    let before = old.get(&w.dir);
                    self.visit(w, before, configs, record)
                })
                .collect();
            for mut v in visited {
                items.append(&mut v.items);
                out.skipped.append(&mut v.skipped);
                out.scanned_files += v.scanned;
                if let Some((p, d)) = v.state {
                    seen.insert(p, d);
                }
                level.append(&mut v.next);
            }
        }
        if let Some(w) = walk {
            w.state.dirs = seen;
            w.state.fingerprint = w.fingerprint;
        }
        items
    }

    /// One folder: unchanged since `before` (in a quick pass), only its kept entries; else every
    /// entry. Its subfolders are returned to be visited next.
    fn visit(
        &self,
        w: DirWork,
        before: Option<&DirState>,
        configs: Option<&[PathBuf]>,
        record: bool,
    ) -> Visited {
        let mut v = Visited::default();
        let DirWork {
            dir,
            parent_dev,
            quick,
        } = w;
        let meta = match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => m,
            Ok(_) => return v,
            Err(e) => {
                v.skipped.push(Skipped {
                    path: lossy(&dir),
                    reason: describe(&e),
                });
                return v;
            }
        };
        let key = DirKey::of(&meta);
        // Below a filesystem mounted inside a root, the watcher may be blind.
        let quick = quick && key.dev == parent_dev;
        if let Some(d) = before.filter(|d| quick && d.key == key && !d.racy) {
            for name in &d.keep {
                let p = dir.join(name);
                match std::fs::symlink_metadata(&p) {
                    Ok(m) => {
                        v.count(self.progress);
                        self.entry(&p, m.file_type(), || Ok(m.clone()), configs, &mut v);
                    }
                    // Gone since the folder was read: then the folder would have changed.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => v.skipped.push(Skipped {
                        path: lossy(&p),
                        reason: describe(&e),
                    }),
                }
            }
            v.next = d
                .subdirs
                .iter()
                .map(|sub| DirWork {
                    dir: dir.join(sub),
                    parent_dev: key.dev,
                    quick: true,
                })
                .collect();
            v.state = Some((
                dir,
                DirState {
                    keep: Vec::new(),
                    ..d.clone()
                },
            ));
            return v;
        }
        let read_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                v.skipped.push(Skipped {
                    path: lossy(&dir),
                    reason: describe(&e),
                });
                return v;
            }
        };
        let mut subdirs = Vec::new();
        for e in rd {
            let e = match e {
                Ok(e) => e,
                Err(err) => {
                    v.skipped.push(Skipped {
                        path: lossy(&dir),
                        reason: describe(&err),
                    });
                    continue;
                }
            };
            v.count(self.progress);
            let path = e.path();
            let ft = match e.file_type() {
                Ok(ft) => ft,
                Err(err) => {
                    v.skipped.push(Skipped {
                        path: lossy(&path),
                        reason: describe(&err),
                    });
                    continue;
                }
            };
            self.entry(&path, ft, || e.metadata(), configs, &mut v);
            if ft.is_dir() {
                subdirs.push(e.file_name());
                v.next.push(DirWork {
                    dir: path,
                    parent_dev: key.dev,
                    quick,
                });
            }
        }
        if record {
            v.state = Some((
                dir,
                DirState {
                    key,
                    racy: read_at - key.ctime_ns < RACY_NS,
                    subdirs,
                    keep: Vec::new(),
                },
            ));
        }
        v
    }

    /// One entry of a folder (or a root): what to evaluate, by its type. `meta` is its `lstat`,
    /// asked for only for regular files.
    fn entry(
        &self,
        path: &Path,
        ft: std::fs::FileType,
        meta: impl FnOnce() -> io::Result<std::fs::Metadata>,
        configs: Option<&[PathBuf]>,
        v: &mut Visited,
    ) {
        let (items, policy) = (&mut v.items, self.policy);
        let is_config = |p: &Path| {
            configs.is_some_and(|homes| {
                policy.is_config_path(p, home_path(p, homes).as_deref()) && !in_dependency_tree(p)
            })
        };
        if ft.is_dir() {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if let Some((pkg, version)) = parse_dist_info_dir(&name) {
                items.push(Item::Package(
                    path.to_path_buf(),
                    PackageFound {
                        package: PackageRef::new(Ecosystem::Pypi, &pkg),
                        version: Some(version),
                    },
                ));
            } else if path.parent().and_then(Path::file_name) == Some(OsStr::new("extensions")) {
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
            if is_config(path) {
                items.push(Item::Config(path.to_path_buf()));
            }
            items.push(Item::Symlink(path.to_path_buf()));
        } else if ft.is_file() {
            if is_config(path) {
                items.push(Item::Config(path.to_path_buf()));
            }
            if path.file_name() == Some(OsStr::new("package.json")) && is_npm_manifest(path) {
                items.push(Item::NpmManifest(path.to_path_buf()));
            }
            let meta = match meta() {
                Ok(m) => m,
                Err(e) => {
                    v.skipped.push(Skipped {
                        path: lossy(path),
                        reason: describe(&e),
                    });
                    return;
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
            v.skipped.push(Skipped {
                path: lossy(path),
                reason: format!("not a regular file ({kind}); never opened"),
            });
        }
    }
}

/// `~/REST` for a path under one of `homes`.
pub fn home_path(path: &Path, homes: &[PathBuf]) -> Option<PathBuf> {
    homes
        .iter()
        .filter_map(|h| path.strip_prefix(h).ok())
        .min_by_key(|rest| rest.components().count())
        .map(|rest| Path::new("~").join(rest))
}

/// How deep below a home the search for project configuration files (`**/.mcp.json`) goes.
pub const CONFIG_SEARCH_DEPTH: usize = 6;
/// At most this many entries are looked at per home in that search; the rest is listed as
/// skipped.
pub const CONFIG_SEARCH_ENTRIES: usize = 200_000;

/// Folders the search for project configuration files never enters: dependency trees, caches
/// and version control, which hold no agent's configuration of their own.
const CONFIG_PRUNE: &[&str] = &[
    "node_modules",
    ".git",
    ".hg",
    ".svn",
    "target",
    "__pycache__",
    ".venv",
    "venv",
    "site-packages",
    ".tox",
    ".gradle",
    ".m2",
];

/// The AI-agent configuration files the policy's `configs` name in the homes of `scope.search`:
/// for each `~/` glob, the folder (or file) before its first wildcard; for `**/` globs, a search
/// of each home (at most [`CONFIG_SEARCH_DEPTH`] deep and [`CONFIG_SEARCH_ENTRIES`] entries, not
/// entering the home's own dot-folders, which the `~/` globs cover, nor [`CONFIG_PRUNE`]); with
/// `scope.absolute`, the absolute globs. Symlinks are not followed; a symlink that a glob names
/// is returned as it is.
pub fn config_candidates(policy: &Policy, scope: &ConfigScope) -> (Vec<PathBuf>, Vec<Skipped>) {
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    let homes = scope.homes.as_slice();
    let is_config = |p: &Path| policy.is_config_path(p, home_path(p, homes).as_deref());
    // The literal part of a glob, up to its first wildcard.
    let literal = |g: &str| -> PathBuf {
        let lit: Vec<&str> = g
            .split('/')
            .take_while(|c| !c.contains(['*', '?', '[', '{', '\\']))
            .collect();
        PathBuf::from(lit.join("/"))
    };
    let mut prefixes: Vec<PathBuf> = policy
        .config_globs()
        .filter_map(|g| g.strip_prefix("~/"))
        .map(literal)
        .collect();
    prefixes.sort();
    prefixes.dedup();
    // Absolute globs (`/etc/claude-code/managed-settings.json`) are looked up once.
    let mut absolute: Vec<PathBuf> = policy
        .config_globs()
        .filter(|g| g.starts_with('/'))
        .map(literal)
        .filter(|p| p.as_os_str().len() > 1)
        .collect();
    absolute.sort();
    absolute.dedup();
    if !scope.absolute {
        absolute.clear();
    }
    for start in &absolute {
        for e in WalkDir::new(start)
            .follow_links(false)
            .max_depth(CONFIG_SEARCH_DEPTH)
            .into_iter()
            .filter_map(Result::ok)
        {
            if !e.file_type().is_dir() && is_config(e.path()) {
                found.push(e.path().to_path_buf());
            }
        }
    }
    let deep = policy.config_globs().any(|g| g.starts_with("**"));
    for home in &scope.search {
        for rel in &prefixes {
            let start = home.join(rel);
            for e in WalkDir::new(&start)
                .follow_links(false)
                .max_depth(CONFIG_SEARCH_DEPTH)
                .into_iter()
                .filter_map(Result::ok)
            {
                if !e.file_type().is_dir() && is_config(e.path()) {
                    found.push(e.path().to_path_buf());
                }
            }
        }
        if !deep {
            continue;
        }
        let mut seen = 0usize;
        let mut walk = WalkDir::new(home)
            .follow_links(false)
            .max_depth(CONFIG_SEARCH_DEPTH)
            .into_iter();
        while let Some(e) = walk.next() {
            let e = match e {
                Ok(e) => e,
                Err(_) => continue,
            };
            seen += 1;
            if seen > CONFIG_SEARCH_ENTRIES {
                skipped.push(Skipped {
                    path: lossy(home),
                    reason: format!(
                        "search for project configuration files stopped after {CONFIG_SEARCH_ENTRIES} entries"
                    ),
                });
                break;
            }
            let name = e.file_name().to_string_lossy();
            if e.file_type().is_dir() {
                let home_dot = e.depth() == 1 && name.starts_with('.');
                if e.depth() > 0 && (home_dot || CONFIG_PRUNE.contains(&name.as_ref())) {
                    walk.skip_current_dir();
                }
                continue;
            }
            if is_config(e.path()) {
                found.push(e.path().to_path_buf());
            }
        }
    }
    found.sort();
    found.dedup();
    (found, skipped)
}

/// True for a path inside a dependency tree, cache or version control folder
/// ([`CONFIG_PRUNE`]): a `.mcp.json` shipped in `node_modules` is a package's, not a user's.
fn in_dependency_tree(path: &Path) -> bool {
    path.components()
        .any(|c| CONFIG_PRUNE.contains(&c.as_os_str().to_string_lossy().as_ref()))
}

/// One file, if it is an AI-agent configuration file the policy's `configs` name (outside any
/// dependency tree): its decision and what it declares. For the install watcher, when a
/// configuration file it watches changes.
pub fn config_file(
    policy: &Policy,
    path: &Path,
    scope: &ConfigScope,
    accounts: &Accounts,
    host: &str,
) -> Result<Option<ConfigFound>, Skipped> {
    let homes = scope.homes.as_slice();
    if !policy.is_config_path(path, home_path(path, homes).as_deref()) || in_dependency_tree(path) {
        return Ok(None);
    }
    config_item(policy, path, homes, accounts, host)
}

/// Evaluate one configuration file: the policy's decision and the servers it declares.
fn config_item(
    policy: &Policy,
    path: &Path,
    homes: &[PathBuf],
    accounts: &Accounts,
    host: &str,
) -> Result<Option<ConfigFound>, Skipped> {
    let skip = |e: &io::Error| Skipped {
        path: lossy(path),
        reason: describe(e),
    };
    let canonical = std::fs::canonicalize(path).map_err(|e| skip(&e))?;
    let meta = std::fs::metadata(&canonical).map_err(|e| skip(&e))?;
    if !meta.is_file() {
        return Ok(None);
    }
    let facts = FactsBuilder::new(host)
        .config(path, home_path(path, homes))
        .user(Some(meta.uid()), accounts)
        .build();
    let Some(decision) = policy.evaluate(&facts) else {
        return Ok(None);
    };
    let config = crate::inventory::footprint::read_config(&canonical).map_err(|e| skip(&e))?;
    Ok(Some(ConfigFound {
        path: path.to_path_buf(),
        canonical,
        facts,
        decision,
        config,
    }))
}

/// The executable and script facts of a regular file, hashing it when the policy needs
/// digests. `None` when the file is neither an executable nor a script the policy names.
fn file_facts(
    policy: &Policy,
    b: FactsBuilder,
    file: &Path,
    meta: &std::fs::Metadata,
    memo: &HashMemo,
    progress: &Progress,
    hash: bool,
) -> Result<Option<FactsBuilder>, Skipped> {
    let is_exe = meta.mode() & 0o111 != 0;
    let is_script = policy.is_script_path(file);
    if !is_exe && !is_script {
        return Ok(None);
    }
    let digest = if hash {
        let skip = |e: io::Error| Skipped {
            path: lossy(file),
            reason: describe(&e),
        };
        // A file whose identity (dev, inode, size, mtime, ctime) is known needs no open: the
        // walk's lstat already says it has not changed since it was read.
        if let Some(d) = memo.get_digest(&crate::inventory::hash::FileKey::of(meta)) {
            Some(d)
        } else {
            let (f, m) = open_regular(file, false).map_err(skip)?;
            let (d, cached) = memo.digest_file(&f, &m).map_err(skip)?;
            if !cached {
                progress.hashed_bytes.fetch_add(m.len(), Ordering::Relaxed);
            }
            Some(d)
        }
    } else {
        None
    };
    let (sha, content) = match digest {
        Some(d) => (Some(d.sha256), d.content),
        None => (None, None),
    };
    let mut b = b;
    if is_exe {
        b = b.exe(file).exe_digest(sha).exe_content(content.clone());
    }
    if is_script {
        b = b.script(file).script_digest(sha).script_content(content);
    }
    Ok(Some(b))
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
    let mut b = FactsBuilder::new(host);
    let mut package = None;
    let (path, canonical, meta_uid) = match item {
        Item::Config(_) => return Ok(None),
        Item::Exe(path, meta) | Item::Script(path, meta) => {
            let Some(f) = file_facts(policy, b, &path, &meta, memo, progress, hash)? else {
                return Ok(None);
            };
            b = f;
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
            // The link's own name first, then its target's.
            let Some(f) = file_facts(
                policy,
                b.name_of(&path),
                &target,
                &meta,
                memo,
                progress,
                hash,
            )?
            else {
                return Ok(None);
            };
            b = f;
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
            b = b.package(found.package.clone());
            package = Some(found);
            (dir.clone(), dir, uid)
        }
        Item::Package(dir, found) => {
            let uid = std::fs::symlink_metadata(&dir)
                .map_err(|e| skip(&dir, &e))?
                .uid();
            b = b.package(found.package.clone());
            package = Some(found);
            (dir.clone(), dir, uid)
        }
    };
    let facts = b.user(Some(meta_uid), accounts).build();
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

    /// A policy banning the SHA-256 of `bytes` (as an executable).
    fn banning(bytes: &[u8]) -> Policy {
        use sha2::Digest as _;
        let text = format!(
            "[policy]\nname = \"t\"\nversion = \"1\"\nmode = \"enforce\"\n[[rule]]\nid = \"r\"\nname = \"r\"\nrisk = \"low\"\nreason = \"r\"\naction = \"report\"\n[rule.match]\nsha256 = [\"{}\"]\n",
            hex::encode(sha2::Sha256::digest(bytes))
        );
        Policy::load("t.toml", &text, &interdict_policy::NoIncludes)
            .unwrap()
            .0
    }

    fn exe(p: &Path, bytes: &[u8]) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn pass(
        policy: &Policy,
        root: &Path,
        state: &mut WalkState,
        pass: Pass,
        fingerprint: [u8; 32],
    ) -> Vec<PathBuf> {
        let request = WalkRequest {
            state,
            pass,
            fingerprint,
            full_under: &[],
        };
        let mut found: Vec<PathBuf> = scan_walk(
            policy,
            &[root.to_path_buf()],
            request,
            &Accounts::default(),
            "h",
            &HashMemo::default(),
            &Progress::default(),
        )
        .found
        .into_iter()
        .map(|f| f.path)
        .collect();
        found.sort();
        found
    }

    #[test]
    fn a_quick_pass_reads_again_only_the_folders_that_changed() {
        let policy = banning(b"banned");
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        exe(&r.join("a/x"), b"clean x");
        exe(&r.join("b/y"), b"clean y");
        exe(&r.join("c/z"), b"banned");
        let mut state = WalkState::default();
        let fp = [1; 32];
        assert_eq!(
            pass(&policy, r, &mut state, Pass::Full, fp),
            [r.join("c/z")]
        );
        // Folders read within 2 s of their last change are not trusted unchanged.
        assert!(state.dirs.values().all(|d| d.racy), "{state:#?}");
        assert_eq!(state.dirs[&r.join("c")].keep, ["z"]);
        for d in state.dirs.values_mut() {
            d.racy = false;
        }
        // A new file in `a` (its folder changes) and `y` rewritten in place (`b` does not).
        exe(&r.join("a/new"), b"banned");
        std::fs::write(r.join("b/y"), b"banned").unwrap();
        assert_eq!(
            pass(&policy, r, &mut state, Pass::Quick, fp),
            [r.join("a/new"), r.join("c/z")],
            "the quick pass sees the new file and keeps the finding of the unchanged folder"
        );
        let mut again = state.clone();
        for d in again.dirs.values_mut() {
            d.racy = false;
        }
        // A full pass, or a quick one under another policy, sees the rewrite too.
        let all = [r.join("a/new"), r.join("b/y"), r.join("c/z")];
        assert_eq!(pass(&policy, r, &mut again, Pass::Quick, [2; 32]), all);
        assert_eq!(pass(&policy, r, &mut state, Pass::Full, fp), all);
        // A folder that is gone is forgotten.
        std::fs::remove_dir_all(r.join("a")).unwrap();
        pass(&policy, r, &mut state, Pass::Quick, fp);
        assert!(!state.dirs.contains_key(&r.join("a")), "{state:#?}");
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
        assert!(is_npm_manifest(Path::new(
            "/h/.bun/install/cache/@anthropic-ai/claude-code@2.0.0@@@1/package.json"
        )));
        assert!(is_npm_manifest(Path::new(
            "/h/.bun/install/cache/left-pad@1.3.0@@@1/package.json"
        )));
        assert!(!is_npm_manifest(Path::new(
            "/h/.bun/install/cache/left-pad@1.3.0@@@1/lib/package.json"
        )));
    }
}

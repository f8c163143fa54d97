//! Issue 14: sizes in the hash lists. `interdict hashes sizes` reads only the beginning of each
//! release's tarball (a Range request, or a transfer cut short) for the tar header that gives the
//! file's size; the shipped Claude Code list carries sizes that equal the real files'.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::support::fixtures::*;
use crate::support::*;

/// The shipped Claude Code hash list.
fn shipped_list() -> PathBuf {
    repo().join("policies/hashes/claude-code.sha256")
}

/// A digest line: (digest, name, size).
fn parse_line(l: &str) -> Option<(String, String, Option<u64>)> {
    let l = l.trim();
    if l.is_empty() || l.starts_with('#') {
        return None;
    }
    let mut t = l.split_whitespace();
    let hex = t.next()?.to_string();
    let name = t.next()?.to_string();
    let size = t
        .next()
        .map(|s| s.strip_prefix("size=").expect("size=N").parse().unwrap());
    Some((hex, name, size))
}

/// One Claude Code release in the test cache: its list name and the real binary.
struct Cached {
    name: String,
    version: String,
    file: PathBuf,
}

/// Every Claude Code platform package the test cache holds unpacked (the `npm pack` fixtures
/// and the npm-installed prefix), after making sure the first native release on npm of the
/// list's range is one of them.
fn cached_releases() -> Vec<Cached> {
    npm_package("@anthropic-ai/claude-code-linux-arm64-musl@2.1.160");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(cache_root())
        .unwrap()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("npm-_anthropic-ai_claude-code-") && e.path().join(".complete").exists()
        })
        .map(|e| e.path().join("package"))
        .collect();
    let installed = crate::npm_packages::prefix().join("node_modules/@anthropic-ai");
    for e in std::fs::read_dir(&installed).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("claude-code-") {
            dirs.push(e.path());
        }
    }
    let mut out = Vec::new();
    for d in dirs {
        let Ok(pj) = std::fs::read_to_string(d.join("package.json")) else {
            continue;
        };
        let pj: serde_json::Value = serde_json::from_str(&pj).unwrap();
        let (name, version) = (
            pj["name"].as_str().unwrap().to_string(),
            pj["version"].as_str().unwrap().to_string(),
        );
        for bin in ["claude", "claude.exe"] {
            if d.join(bin).is_file() {
                out.push(Cached {
                    name: format!("npm:{name}@{version}:package/{bin}"),
                    version: version.clone(),
                    file: d.join(bin),
                });
            }
        }
    }
    out
}

fn version_key(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

#[test]
fn issue_14_shipped_list_sizes_equal_every_cached_release_and_codex_build() {
    let text = std::fs::read_to_string(shipped_list()).unwrap();
    let lines: Vec<_> = text.lines().filter_map(parse_line).collect();
    assert!(lines.len() >= 900, "{} digest lines", lines.len());
    let no_size: Vec<_> = lines.iter().filter(|l| l.2.is_none()).collect();
    assert!(
        no_size.is_empty(),
        "every digest of the shipped list has a size; these do not: {no_size:?}"
    );
    let by_name: std::collections::HashMap<&str, (&str, u64)> = lines
        .iter()
        .map(|(h, n, s)| (n.as_str(), (h.as_str(), s.unwrap())))
        .collect();
    let mut checked = Vec::new();
    for c in cached_releases() {
        let Some((digest, size)) = by_name.get(c.name.as_str()) else {
            // The list holds every release since 2.1.160 (its header says so).
            assert!(
                version_key(&c.version) < version_key("2.1.160"),
                "{} is cached but missing from the shipped list",
                c.name
            );
            continue;
        };
        let real = std::fs::metadata(&c.file).unwrap().len();
        assert_eq!(
            *size,
            real,
            "{}: the shipped list says size={size}, the real file {} has {real} bytes",
            c.name,
            c.file.display()
        );
        assert_eq!(*digest, sha256sum(&c.file), "{}", c.name);
        checked.push(c.name);
    }
    // The binary the PyPI Agent SDK bundles is one of the npm builds: found by its digest.
    let sdk = crate::channels::pypi_sdk_binary();
    let sdk_digest = sha256sum(&sdk);
    let (_, name, size) = lines
        .iter()
        .find(|l| l.0 == sdk_digest)
        .expect("the PyPI SDK's bundled binary is in the shipped list");
    assert_eq!(
        size.unwrap(),
        std::fs::metadata(&sdk).unwrap().len(),
        "{name} (the PyPI SDK's bundled binary)"
    );
    checked.push(format!("{name} (PyPI SDK)"));
    // The Codex list: its one build, installed from npm.
    let codex = crate::npm_packages::prefix()
        .join("node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex");
    let codex_list = std::fs::read_to_string(repo().join("policies/hashes/codex.sha256")).unwrap();
    let codex_lines: Vec<_> = codex_list.lines().filter_map(parse_line).collect();
    let digest = sha256sum(&codex);
    let (_, name, size) = codex_lines
        .iter()
        .find(|l| l.0 == digest)
        .expect("the installed Codex build is in codex.sha256");
    assert_eq!(
        *size,
        Some(std::fs::metadata(&codex).unwrap().len()),
        "{name}"
    );
    assert!(codex_lines.iter().all(|l| l.2.is_some()), "{codex_lines:?}");
    assert!(
        checked.len() >= 3,
        "at least two cached npm releases and the SDK's binary are checked: {checked:?}"
    );
    eprintln!("sizes checked against real files: {checked:?}");

    // The pack loaded: a file of another size need not be hashed, one of a listed size must.
    let loaded = interdict::policy::load(&shipped_pack()).expect("the pack loads");
    let p = &loaded.policy;
    let real = std::fs::metadata(&sdk).unwrap().len();
    assert!(p.may_match_size(real));
    assert!(
        !p.may_match_size(1234),
        "the sized list spares hashing programs of other sizes"
    );
}

/// A registry on loopback serving a packument and one tarball of `total` bytes, of which it has
/// the beginning `body`; with `ranges = Some((at, extra))`, a `Range: bytes=0-N` request gets
/// `206` and N+1 bytes from `at` and `extra` more (0 and 0 for an honest server), else the whole
/// tarball is announced and `body` sent. Each request's path, Range header and bytes sent are
/// recorded.
#[allow(clippy::type_complexity)]
fn registry(
    (body, total): (Vec<u8>, u64),
    ranges: Option<(usize, usize)>,
) -> (String, Arc<Mutex<Vec<(String, Option<String>, usize)>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    let packument = serde_json::json!({
        "name": "@anthropic-ai/claude-code-linux-arm64-musl",
        "dist-tags": {"latest": "2.1.160"},
        "versions": {"2.1.160": {"dist": {
            "tarball": "/t/claude.tgz",
            "integrity": "sha512-AAAA"
        }}}
    })
    .to_string()
    .into_bytes();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            if r.read_line(&mut first).is_err() {
                continue;
            }
            let mut range = None;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("range") {
                        range = Some(v.trim().to_string());
                    }
                }
            }
            let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
            let (head, data, len): (String, &[u8], u64) =
                if path.ends_with("claude-code-linux-arm64-musl") {
                    ("200 OK".into(), &packument, packument.len() as u64)
                } else if path == "/t/claude.tgz" {
                    match range
                        .as_deref()
                        .and_then(|r| r.strip_prefix("bytes=0-"))
                        .and_then(|e| e.parse::<usize>().ok())
                        .zip(ranges)
                    {
                        Some((end, (at, extra))) => {
                            let end = (at + end).min(body.len() - 1);
                            let sent = (end + extra).min(body.len() - 1);
                            (
                                format!(
                                "206 Partial Content\r\nContent-Range: bytes {at}-{end}/{total}"
                            ),
                                &body[at..=sent],
                                (sent - at) as u64 + 1,
                            )
                        }
                        None => ("200 OK".into(), &body[..], total),
                    }
                } else {
                    ("404 Not Found".into(), &[][..], 0)
                };
            // A client that stops reading early closes the connection: what was written is
            // counted as sent.
            let mut sent = 0;
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.1 {head}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .and_then(|_| {
                    for c in data.chunks(16 * 1024) {
                        s.write_all(c)?;
                        sent += c.len();
                    }
                    Ok(())
                });
            seen.lock().unwrap().push((path, range, sent));
        }
    });
    (base, log)
}

fn sizes(list: &Path, registry: &str) -> Run {
    let mut c = interdict();
    c.args(["hashes", "sizes"])
        .arg(list)
        .args(["--npm-registry", registry]);
    run(&mut c)
}

const MUSL: &str = "npm:@anthropic-ai/claude-code-linux-arm64-musl@2.1.160";

#[test]
fn issue_14_sizes_come_from_a_real_tarball_prefix() {
    use interdict::cli::hashes::sizes::{tar_gz_entry_size, PrefixFind};
    let tarball = npm_tarball_head("@anthropic-ai/claude-code-linux-arm64-musl@2.1.160");
    let head = tarball.0.clone();
    assert!(
        tarball.1 > head.len() as u64,
        "the cache keeps only the head"
    );
    let bin =
        npm_package("@anthropic-ai/claude-code-linux-arm64-musl@2.1.160").join("package/claude");
    let real = std::fs::metadata(&bin).unwrap().len();
    // The parser on the registry's own bytes: the first 4 KiB hold the binary's header.
    assert_eq!(
        tar_gz_entry_size(&head[..4096], false, "package/claude"),
        PrefixFind::Size(real)
    );
    // What follows the binary lies beyond any prefix: never guessed, never called absent.
    assert!(matches!(
        tar_gz_entry_size(&head, false, "package/README.md"),
        PrefixFind::NeedMore { .. }
    ));
    assert!(matches!(
        tar_gz_entry_size(&head[..4096], false, "package/nothing"),
        PrefixFind::NeedMore { .. }
    ));

    let digest = sha256sum(&bin);
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("h.sha256");
    let b = "b".repeat(64);
    let text = format!(
        "# header\n# {MUSL} (sha512 integrity verified)\n{digest}  {MUSL}:package/claude\n{b}  {MUSL}:package/claude  size=7\n\n"
    );
    std::fs::write(&list, &text).unwrap();
    let want = text.replacen(
        &format!("{MUSL}:package/claude\n"),
        &format!("{MUSL}:package/claude  size={real}\n"),
        1,
    );
    for ranges in [true, false] {
        let (base, log) = registry(tarball.clone(), ranges.then_some((0, 0)));
        let r = sizes(&list, &base);
        r.expect_code(0);
        assert_eq!(r.stdout, want, "ranges {ranges}\n{}", r.stderr);
        let log = log.lock().unwrap().clone();
        let tarball: Vec<_> = log.iter().filter(|l| l.0 == "/t/claude.tgz").collect();
        assert_eq!(
            tarball.len(),
            1,
            "one request for the one unsized line: {log:?}"
        );
        assert_eq!(tarball[0].1.as_deref(), Some("bytes=0-4095"), "{log:?}");
        if ranges {
            assert_eq!(tarball[0].2, 4096, "{log:?}");
            assert!(
                r.stderr.contains("(1 answered with a range)"),
                "{}",
                r.stderr
            );
        } else {
            assert!(
                r.stderr.contains("(0 answered with a range)"),
                "{}",
                r.stderr
            );
        }
    }
    // The sized list is what the policy loader reads: `interdict policy check` accepts it and
    // the loaded policy hashes only files of the listed sizes.
    std::fs::write(&list, &want).unwrap();
    let policy = one_rule_policy(tmp.path(), "block", r#"sha256_files = ["h.sha256"]"#);
    run(interdict().args(["policy", "check"]).arg(&policy)).expect_code(0);
    let p = interdict::policy::load(&policy).unwrap().policy;
    assert!(p.may_match_size(real) && p.may_match_size(7));
    assert!(!p.may_match_size(real + 1));

    // A file that follows the 70 MB binary cannot be sized from a prefix: a warning, exit 1,
    // the line as it was; the other lines are still sized.
    let text = format!(
        "{digest}  {MUSL}:package/README.md\n{digest}  {MUSL}:package/claude\n{b}  npm:@anthropic-ai/claude-code-linux-arm64-musl@9.9.9:package/claude\n"
    );
    std::fs::write(&list, &text).unwrap();
    for ranges in [true, false] {
        let (base, log) = registry(tarball.clone(), ranges.then_some((0, 0)));
        let r = sizes(&list, &base);
        r.expect_code(1);
        assert_eq!(
            r.stdout,
            text.replacen(
                "package/claude\n",
                &format!("package/claude  size={real}\n"),
                1
            ),
            "{}",
            r.stderr
        );
        assert!(
            r.stderr.contains("h.sha256:1: warning:")
                && r.stderr
                    .contains("`package/README.md` is not among the entries in the first 1024 KiB")
                && r.stderr.contains("h.sha256:3: warning:")
                && r.stderr.contains("no version 9.9.9")
                && r.stderr.contains("2 left without a size"),
            "{}",
            r.stderr
        );
        // Each larger prefix was asked for in turn, none beyond 1 MiB; the packument once.
        let log = log.lock().unwrap().clone();
        let mut ranges_asked: Vec<_> = log
            .iter()
            .filter(|l| l.0 == "/t/claude.tgz")
            .map(|l| l.1.clone().unwrap())
            .collect();
        ranges_asked.sort();
        assert_eq!(
            ranges_asked,
            [
                "bytes=0-1048575",
                "bytes=0-4095",
                "bytes=0-4095",
                "bytes=0-65535",
            ],
            "{log:?}"
        );
        assert_eq!(log.iter().filter(|l| l.0 != "/t/claude.tgz").count(), 1);
    }
}

#[test]
fn issue_14_sizes_refuses_bytes_that_are_not_the_tarball_start() {
    // A server (or a cache in between) that answers the Range request with other bytes of the
    // tarball: nothing read from them is taken as a size.
    let tarball = npm_tarball_head("@anthropic-ai/claude-code-linux-arm64-musl@2.1.160");
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("h.sha256");
    let text = format!("{}  {MUSL}:package/claude\n", "c".repeat(64));
    std::fs::write(&list, &text).unwrap();
    let (base, _) = registry(tarball.clone(), Some((512, 0)));
    let r = sizes(&list, &base);
    r.expect_code(1);
    assert_eq!(r.stdout, text, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("asked for the first 4096 bytes, the server sent `bytes 512-4607/")
            && r.stderr.contains("h.sha256:1: warning:"),
        "{}",
        r.stderr
    );
    // One that says it sends the range asked for and sends more.
    let (base, _) = registry(tarball, Some((0, 100)));
    let r = sizes(&list, &base);
    r.expect_code(1);
    assert_eq!(r.stdout, text, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("asked for the first 4096 bytes, the server sent more"),
        "{}",
        r.stderr
    );
}

#[test]
fn issue_14_sizes_from_the_real_registry_equal_the_real_files() {
    // The shipped list's lines for the cached releases, without their sizes.
    let cached = cached_releases();
    let text: String = std::fs::read_to_string(shipped_list())
        .unwrap()
        .lines()
        .filter_map(parse_line)
        .filter(|l| cached.iter().any(|c| c.name == l.1))
        .map(|(h, n, _)| format!("{h}  {n}\n"))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("h.sha256");
    std::fs::write(&list, &text).unwrap();
    let r = sizes(&list, "https://registry.npmjs.org");
    r.expect_code(0);
    let got: Vec<_> = r.stdout.lines().filter_map(parse_line).collect();
    assert!(got.len() >= 2, "{}", r.stdout);
    for (_, name, size) in got {
        let c = cached.iter().find(|c| c.name == name).unwrap();
        assert_eq!(
            size,
            Some(std::fs::metadata(&c.file).unwrap().len()),
            "{name}"
        );
    }
}

#[test]
fn issue_14_the_exec_guard_refuses_a_renamed_release_by_the_sized_shipped_list() {
    use crate::support::agent::*;
    // The pack without its family rule: only the sized digests can identify the copy, so a
    // wrong size in the shipped list would let it run unhashed.
    let text = pack_without_family_rule().replace(
        "hashes/",
        &format!("{}/hashes/", repo().join("policies").display()),
    );
    let mnt = TmpMount::new();
    let m = mnt.path();
    let real = crate::npm_packages::prefix()
        .join("node_modules/@anthropic-ai/claude-code-linux-x64/claude");
    let copy = m.join("opt/tools/assistant");
    place(&real, &copy);
    let other = m.join("bin/true-copy");
    place(Path::new("/bin/true"), &other);
    let mut agent = Agent::start(&text, &marks(m));
    assert_denied(&copy);
    let e = agent.wait_event("exec_denied by sha256", |e| {
        e["kind"] == "exec_denied" && e["rule"]["id"] == "claude-code"
    });
    assert_eq!(e["rule"]["selector"], "sha256", "{e:#}");
    // A program of a size no listed digest has runs.
    let st = exec(&other, &[]).expect("a program of another size runs");
    assert!(st.success(), "{st}");
    agent.stop();
}

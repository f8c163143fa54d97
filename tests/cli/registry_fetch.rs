//! Issue 14: `interdict hashes fetch` against the real npm registry and PyPI, and against a
//! registry on loopback that serves a download whose integrity value does not match.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;

use crate::support::fixtures::*;
use crate::support::*;

fn fetch(args: &[&str]) -> Run {
    let mut c = interdict();
    c.args(["hashes", "fetch"]).args(args);
    run(&mut c)
}

/// The digest lines of a run: (sha256, label); each ends in `  size=BYTES`.
fn lines(r: &Run) -> Vec<(String, String)> {
    sized_lines(r).into_iter().map(|(h, n, _)| (h, n)).collect()
}

/// The digest lines of a run: (sha256, label, size).
fn sized_lines(r: &Run) -> Vec<(String, String, u64)> {
    r.stdout
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (h, rest) = l.split_once("  ").expect("sha256sum format");
            let (name, size) = rest
                .rsplit_once("  size=")
                .unwrap_or_else(|| panic!("no size: {l}"));
            (h.to_string(), name.to_string(), size.parse().unwrap())
        })
        .collect()
}

#[test]
fn issue_14_npm_release_digests_match_the_files_npm_installs() {
    // The old cli.js release: the file digest equals that of the file `npm pack` unpacked.
    let r = fetch(&[
        "npm:@anthropic-ai/claude-code@1.0.0",
        "--entry",
        "package/cli.js",
        "--policy",
        shipped_pack().to_str().unwrap(),
    ]);
    r.expect_code(0);
    let cli_js = npm_package("@anthropic-ai/claude-code@1.0.0").join("package/cli.js");
    let want = sha256sum(&cli_js);
    let size = std::fs::metadata(&cli_js).unwrap().len();
    assert_eq!(
        sized_lines(&r),
        [(
            want,
            "npm:@anthropic-ai/claude-code@1.0.0:package/cli.js".to_string(),
            size
        )]
    );
    assert!(
        r.stderr.contains("sha512 integrity verified")
            && r.stderr.contains("identified by family rule `claude-code`"),
        "{}",
        r.stderr
    );
    // The lines are a valid sha256 file for a policy.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("h.sha256"), &r.stdout).unwrap();
    let policy = one_rule_policy(tmp.path(), "block", r#"sha256_files = ["h.sha256"]"#);
    run(interdict().args(["policy", "check"]).arg(&policy)).expect_code(0);
    // ... whose digests carry their sizes: only a file of that size may match.
    let p = interdict::policy::load(&policy).unwrap().policy;
    assert!(p.may_match_size(size));
    assert!(!p.may_match_size(size + 1), "issue 14: fetch prints sizes");
}

#[test]
fn issue_14_pypi_wheel_digests_match_the_bundled_binary_pip_installs() {
    let r = fetch(&[
        &format!("pypi:{}", crate::channels::PYPI_SDK.replace("==", "@")),
        "--wheel",
        "*manylinux*x86_64*",
    ]);
    r.expect_code(0);
    let got = lines(&r);
    assert_eq!(got.len(), 1, "{}", r.stdout);
    let sdk = crate::channels::pypi_sdk_binary();
    assert_eq!(got[0].0, sha256sum(&sdk));
    assert_eq!(sized_lines(&r)[0].2, std::fs::metadata(&sdk).unwrap().len());
    assert!(
        got[0].1.ends_with(":claude_agent_sdk/_bundled/claude"),
        "{:?}",
        got[0]
    );
    assert!(r.stderr.contains("sha256 verified"), "{}", r.stderr);
}

#[test]
fn issue_14_latest_and_all_since_follow_the_registry() {
    // A small package with a known history: left-pad 1.2.0 and 1.3.0 are its last releases.
    let r = fetch(&[
        "npm:left-pad@all-since:1.2.0",
        "--entry",
        "package/index.js",
    ]);
    r.expect_code(0);
    let names: Vec<String> = lines(&r).into_iter().map(|(_, n)| n).collect();
    assert_eq!(
        names,
        [
            "npm:left-pad@1.2.0:package/index.js",
            "npm:left-pad@1.3.0:package/index.js"
        ]
    );
    let latest = fetch(&["npm:left-pad@latest", "--entry", "package/index.js"]);
    latest.expect_code(0);
    assert_eq!(lines(&latest), lines(&r)[1..]);
    // Nothing executable and no --entry: a comment, no digest.
    let none = fetch(&["npm:left-pad@1.3.0"]);
    none.expect_code(0);
    assert!(lines(&none).is_empty(), "{}", none.stdout);
}

#[test]
fn issue_14_bad_specs_and_unknown_versions_are_errors() {
    let r = fetch(&["cargo:serde@1.0.0"]);
    r.expect_code(2);
    assert!(
        r.stderr.contains("unknown registry `cargo`"),
        "{}",
        r.stderr
    );
    let r = fetch(&["npm:left-pad@9.9.9"]);
    r.expect_code(2);
    assert!(r.stderr.contains("no version 9.9.9"), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
}

/// A registry on loopback: answers each path with the given body, counts requests.
fn serve(routes: Vec<(String, Vec<u8>)>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            if r.read_line(&mut first).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                    break;
                }
            }
            let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
            let body = routes
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, b)| b.clone());
            let _ = match body {
                Some(b) => s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            b.len()
                        )
                        .as_bytes(),
                    )
                    .and_then(|_| s.write_all(&b)),
                None => s.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
            };
        }
    });
    format!("http://{addr}")
}

/// A real tarball: `tar czf` of one executable file.
fn tarball(dir: &Path) -> Vec<u8> {
    write(&dir.join("package/claude"), b"\x7fELF not really", 0o755);
    sh(std::process::Command::new("tar")
        .arg("czf")
        .arg(dir.join("t.tgz"))
        .arg("-C")
        .arg(dir)
        .arg("package"));
    std::fs::read(dir.join("t.tgz")).unwrap()
}

#[test]
fn issue_14_a_download_that_does_not_match_its_integrity_value_yields_nothing() {
    use base64::Engine as _;
    use sha2::Digest as _;
    let tmp = tempfile::tempdir().unwrap();
    let tgz = tarball(tmp.path());
    let good = base64::engine::general_purpose::STANDARD.encode(sha2::Sha512::digest(&tgz));
    let mut tampered = tgz.clone();
    let n = tampered.len();
    tampered[n - 1] ^= 1; // the registry's file changed after its integrity was published
    let packument = |integrity: &str| {
        serde_json::json!({
            "name": "evil",
            "dist-tags": {"latest": "1.0.0"},
            "versions": {"1.0.0": {"dist": {"tarball": "/evil/-/evil-1.0.0.tgz", "integrity": format!("sha512-{integrity}")}}}
        })
        .to_string()
        .into_bytes()
    };
    // Honest registry first: the same server shape works, so the failure below is the check.
    let ok = serve(vec![
        ("/evil".into(), packument(&good)),
        ("/evil/-/evil-1.0.0.tgz".into(), tgz.clone()),
    ]);
    let r = fetch(&["npm:evil@latest", "--npm-registry", &ok]);
    r.expect_code(0);
    assert_eq!(lines(&r).len(), 1, "{}", r.stdout);
    let bad = serve(vec![
        ("/evil".into(), packument(&good)),
        ("/evil/-/evil-1.0.0.tgz".into(), tampered),
    ]);
    let r = fetch(&["npm:evil@latest", "--npm-registry", &bad]);
    r.expect_code(2);
    assert!(
        lines(&r).is_empty(),
        "nothing may be printed:\n{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("integrity check failed") && r.stderr.contains("nothing from it is used"),
        "{}",
        r.stderr
    );
    // PyPI: a wheel whose sha256 differs from the JSON API's.
    let zip = b"PK\x05\x06\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0".to_vec();
    let project = serde_json::json!({
        "info": {"version": "1.0"},
        "releases": {"1.0": [{
            "filename": "evil-1.0-py3-none-any.whl",
            "url": "../../files/evil-1.0-py3-none-any.whl",
            "digests": {"sha256": "0".repeat(64)},
            "packagetype": "bdist_wheel"
        }]}
    })
    .to_string()
    .into_bytes();
    let pypi = serve(vec![
        ("/pypi/evil/json".into(), project),
        ("/files/evil-1.0-py3-none-any.whl".into(), zip),
    ]);
    let r = fetch(&["pypi:evil@latest", "--pypi", &pypi]);
    r.expect_code(2);
    assert!(r.stderr.contains("integrity check failed"), "{}", r.stderr);
}

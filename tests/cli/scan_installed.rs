//! `interdict scan --root`: installed software on real temporary trees.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use crate::support::*;

const TOOL: &[u8] = b"#!/bin/sh\necho banned tool ran\n";

#[test]
fn compliant_tree_exits_zero() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("bin/harmless"), b"#!/bin/sh\n", 0o755);
    let policy = one_rule_policy(tmp.path(), "block", r#"paths = ["**/bin/banned"]"#);
    let r = scan_json(&policy, &[&tmp.path().join("bin")]);
    r.expect_code(0);
    let j = r.json();
    assert_eq!(violations(&j).len(), 0, "{j:#}");
    assert!(j["scanned_files"].as_u64().unwrap() >= 2, "{j:#}");
    assert_eq!(j["policy"]["name"], "test");
    assert_eq!(j["policy"]["sha256"], sha256sum(&policy));
}

#[test]
fn path_glob_matches_the_canonical_path_through_a_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("home");
    let real = root.join(".local/share/claude/versions/2.1.0");
    write(&real, TOOL, 0o755);
    std::fs::create_dir_all(root.join(".local/bin")).unwrap();
    symlink(&real, root.join(".local/bin/claude")).unwrap();
    let policy = one_rule_policy(
        tmp.path(),
        "block",
        r#"paths = ["**/.local/share/claude/versions/*"]"#,
    );
    // Only the bin folder is a root: the symlink must be resolved to find the real file.
    let r = scan_json(&policy, &[&root.join(".local/bin")]);
    r.expect_code(1);
    let j = r.json();
    let v = violation_at(&j, &root.join(".local/bin/claude"));
    assert_eq!(v["selector"], "path");
    assert_eq!(
        v["target"],
        std::fs::canonicalize(&real)
            .unwrap()
            .to_string_lossy()
            .as_ref()
    );
    assert_eq!(v["kind"], "installed");
    assert_eq!(v["action"], "block");
    assert_eq!(v["user"], "root");
}

#[test]
fn sha256_catches_renamed_copies_hardlinks_and_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let original = tmp.path().join("orig/claude");
    write(&original, b"\x7fELF pretend this is claude 2.1.332", 0o755);
    let digest = sha256sum(&original);
    let root = tmp.path().join("elsewhere");
    let copy = root.join("bin/totally-innocent");
    write(&copy, &std::fs::read(&original).unwrap(), 0o755);
    std::fs::hard_link(&copy, root.join("bin/hardlinked")).unwrap();
    std::fs::create_dir_all(root.join("links")).unwrap();
    symlink(&original, root.join("links/via-symlink")).unwrap();
    // A file with the same name but other contents is not matched by hash.
    write(&root.join("bin/claude"), b"something else", 0o755);
    let policy = one_rule_policy(tmp.path(), "block", &format!(r#"sha256 = ["{digest}"]"#));
    let r = scan_json(&policy, &[&root]);
    r.expect_code(1);
    let j = r.json();
    for p in [
        "bin/totally-innocent",
        "bin/hardlinked",
        "links/via-symlink",
    ] {
        let v = violation_at(&j, &root.join(p));
        assert_eq!(v["selector"], "sha256", "{p}: {v:#}");
        assert_eq!(v["sha256"], digest, "{p}");
    }
    assert_eq!(violations(&j).len(), 3, "{j:#}");
}

#[test]
fn sha256_files_are_read_relative_to_the_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("root/tool");
    write(&exe, b"binary bytes", 0o755);
    let pol_dir = tmp.path().join("pol");
    std::fs::create_dir_all(pol_dir.join("hashes")).unwrap();
    std::fs::write(
        pol_dir.join("hashes/t.sha256"),
        format!("{}  tool\n", sha256sum(&exe)),
    )
    .unwrap();
    let policy = one_rule_policy(&pol_dir, "report", r#"sha256_files = ["hashes/t.sha256"]"#);
    let r = scan_json(&policy, &[&tmp.path().join("root")]);
    r.expect_code(1);
    assert_eq!(violation_at(&r.json(), &exe)["selector"], "sha256");
}

#[test]
fn package_markers_npm_pypi_and_editor_extensions() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("r");
    write(
        &root.join("lib/node_modules/@scope/agent/package.json"),
        br#"{"name": "@scope/agent", "version": "1.2.3"}"#,
        0o644,
    );
    // A package.json deeper inside a package is not a marker.
    write(
        &root.join("lib/node_modules/@scope/agent/lib/package.json"),
        br#"{"name": "@scope/agent"}"#,
        0o644,
    );
    std::fs::create_dir_all(
        root.join("venv/lib/python3.11/site-packages/Aider_Chat-0.86.1.dist-info"),
    )
    .unwrap();
    std::fs::create_dir_all(
        root.join("home/.vscode/extensions/Anthropic.claude-code-2.0.1-linux-x64/resources"),
    )
    .unwrap();
    let policy = one_rule_policy(
        tmp.path(),
        "report",
        r#"packages = ["npm:@scope/agent", "pypi:aider-chat", "vscode:anthropic.claude-code"]"#,
    );
    let r = scan_json(&policy, &[&root]);
    r.expect_code(1);
    let j = r.json();
    let npm = violation_at(&j, &root.join("lib/node_modules/@scope/agent"));
    assert_eq!(
        (npm["package"].as_str(), npm["version"].as_str()),
        (Some("npm:@scope/agent"), Some("1.2.3"))
    );
    let py = violation_at(
        &j,
        &root.join("venv/lib/python3.11/site-packages/Aider_Chat-0.86.1.dist-info"),
    );
    assert_eq!(py["package"], "pypi:aider-chat");
    assert_eq!(py["version"], "0.86.1");
    let ext = violation_at(
        &j,
        &root.join("home/.vscode/extensions/Anthropic.claude-code-2.0.1-linux-x64"),
    );
    assert_eq!(ext["package"], "vscode:anthropic.claude-code");
    assert_eq!(violations(&j).len(), 3, "{j:#}");
}

#[test]
fn interpreter_script_files_match_script_globs() {
    let tmp = tempfile::tempdir().unwrap();
    let cli = tmp
        .path()
        .join("p/node_modules/@anthropic-ai/claude-code/cli.js");
    write(&cli, b"console.log('hi')", 0o644);
    let policy = one_rule_policy(
        tmp.path(),
        "block",
        r#"scripts = ["**/node_modules/@anthropic-ai/claude-code/cli.js"]"#,
    );
    let r = scan_json(&policy, &[&tmp.path().join("p")]);
    r.expect_code(1);
    assert_eq!(violation_at(&r.json(), &cli)["selector"], "script");
}

#[test]
fn monitor_mode_and_future_enforce_from_are_reported_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("r/banned");
    write(&exe, TOOL, 0o755);
    let p = tmp.path().join("p.toml");
    std::fs::write(
        &p,
        r#"[policy]
name = "t"
version = "1"
mode = "enforce"

[[rule]]
id = "later"
name = "Later"
risk = "low"
reason = "phased in"
action = "block"
enforce_from = 2999-01-01
[rule.match]
paths = ["**/r/banned"]
"#,
    )
    .unwrap();
    let r = scan_json(&p, &[&tmp.path().join("r")]);
    r.expect_code(1);
    let v = violation_at(&r.json(), &exe);
    assert_eq!(v["enforcement"]["state"], "not_yet");
    assert_eq!(v["enforcement"]["since"], "2999-01-01");

    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("mode = \"enforce\"", "mode = \"monitor\"");
    std::fs::write(&p, text).unwrap();
    let v = violation_at(&scan_json(&p, &[&tmp.path().join("r")]).json(), &exe);
    assert_eq!(v["enforcement"]["state"], "monitor");
}

#[test]
fn allow_rule_wins_at_equal_specificity_and_is_no_violation() {
    let tmp = tempfile::tempdir().unwrap();
    let approved = tmp.path().join("r/approved/claude");
    let other = tmp.path().join("r/other/claude");
    write(&approved, TOOL, 0o755);
    write(&other, TOOL, 0o755);
    let p = tmp.path().join("p.toml");
    std::fs::write(
        &p,
        r#"[policy]
name = "t"
version = "1"
mode = "enforce"

[[rule]]
id = "ban"
name = "Ban"
risk = "high"
reason = "r"
action = "block"
[rule.match]
paths = ["**/claude"]

[[rule]]
id = "approved-build"
name = "Approved build"
risk = "low"
reason = "pilot"
action = "allow"
[rule.match]
paths = ["**/approved/claude"]
"#,
    )
    .unwrap();
    let r = scan_json(&p, &[&tmp.path().join("r")]);
    r.expect_code(1);
    let j = r.json();
    assert_eq!(violations(&j).len(), 1, "{j:#}");
    assert_eq!(violation_at(&j, &other)["rule_id"], "ban");
}

#[test]
fn odd_entries_are_skipped_and_listed_never_opened() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("r");
    let digest_src = tmp.path().join("banned");
    write(&digest_src, TOOL, 0o755);
    // A FIFO: opening it for reading would block forever.
    std::fs::create_dir_all(&root).unwrap();
    let fifo = root.join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o755),
        0,
    )
    .unwrap();
    // A symlink loop and a dangling symlink.
    symlink(root.join("loop-b"), root.join("loop-a")).unwrap();
    symlink(root.join("loop-a"), root.join("loop-b")).unwrap();
    symlink(root.join("nowhere"), root.join("dangling")).unwrap();
    // A name that is not UTF-8, holding a banned binary.
    let odd = root.join(std::ffi::OsStr::from_bytes(b"claude-\xff\xfe"));
    write(&odd, TOOL, 0o755);
    let policy = one_rule_policy(
        tmp.path(),
        "block",
        &format!(r#"sha256 = ["{}"]"#, sha256sum(&digest_src)),
    );
    let mut cmd = std::process::Command::new("timeout");
    cmd.args([
        "60",
        env!("CARGO_BIN_EXE_interdict"),
        "scan",
        "--no-processes",
        "--format",
        "json",
        "--policy",
    ])
    .arg(&policy)
    .arg("--root")
    .arg(&root);
    let r = run(&mut cmd);
    r.expect_code(1);
    let j = r.json();
    let skipped = j["skipped"].as_array().unwrap();
    let reason_of = |name: &str| {
        let p = root.join(name).to_string_lossy().into_owned();
        skipped
            .iter()
            .find(|s| s["path"] == *p)
            .map(|s| s["reason"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{name} not in skipped: {j:#}"))
    };
    assert!(reason_of("fifo").contains("fifo"), "{}", reason_of("fifo"));
    assert_eq!(reason_of("loop-a"), "symlink loop");
    assert_eq!(reason_of("dangling"), "dangling symlink");
    let v = violations(&j);
    assert_eq!(v.len(), 1, "{j:#}");
    // Not lossy: the bytes that are not UTF-8 are escaped, so the path names one file.
    assert_eq!(
        v[0]["path"],
        format!("{}/claude-\\xFF\\xFE", root.display())
    );
    assert_ne!(v[0]["path"], odd.to_string_lossy().as_ref());
    assert_eq!(v[0]["selector"], "sha256");
}

#[test]
fn unreadable_folders_are_listed_and_the_scan_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("r");
    write(&root.join("locked/inside/banned"), TOOL, 0o755);
    write(&root.join("open/banned"), TOOL, 0o755);
    std::fs::set_permissions(root.join("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
    // Everything else must be readable by the unprivileged user the scan runs as.
    for p in [tmp.path(), &root, &root.join("open")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let policy = one_rule_policy(tmp.path(), "block", r#"paths = ["**/banned"]"#);
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = run(std::process::Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            env!("CARGO_BIN_EXE_interdict"),
        ])
        .args(["scan", "--no-processes", "--format", "json", "--policy"])
        .arg(&policy)
        .arg("--root")
        .arg(&root));
    r.expect_code(1);
    let j = r.json();
    violation_at(&j, &root.join("open/banned"));
    let locked = root.join("locked").to_string_lossy().into_owned();
    assert!(
        j["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["path"] == *locked && s["reason"] == "permission denied"),
        "{j:#}"
    );
    std::fs::set_permissions(root.join("locked"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn huge_files_are_streamed_and_hashed_correctly() {
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("r/big");
    std::fs::create_dir_all(big.parent().unwrap()).unwrap();
    // A 1.5 GiB sparse file, hashed under a 1 GiB address-space limit: only streaming works.
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(3 << 29).unwrap();
    drop(f);
    std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o755)).unwrap();
    let digest = sha256sum(&big);
    let policy = one_rule_policy(tmp.path(), "report", &format!(r#"sha256 = ["{digest}"]"#));
    let r = run(std::process::Command::new("prlimit")
        .arg(format!("--as={}", 1u64 << 30))
        .arg(env!("CARGO_BIN_EXE_interdict"))
        .args(["scan", "--no-processes", "--format", "json", "--policy"])
        .arg(&policy)
        .arg("--root")
        .arg(tmp.path().join("r")));
    r.expect_code(1);
    let j = r.json();
    assert_eq!(violation_at(&j, &big)["sha256"], digest);
    assert!(j["hashed_bytes"].as_u64().unwrap() >= 3 << 29, "{j:#}");
}

#[test]
fn text_report_names_rule_path_and_alternative() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("r/banned");
    write(&exe, TOOL, 0o755);
    let policy = one_rule_policy(tmp.path(), "block", r#"paths = ["**/r/banned"]"#);
    let r = run(interdict()
        .args(["scan", "--no-processes", "--policy"])
        .arg(&policy)
        .arg("--root")
        .arg(tmp.path().join("r")));
    r.expect_code(1);
    r.expect_stdout(
        "VIOLATION banned-tool [installed] Banned tool (high risk, action block, enforced)",
    );
    r.expect_stdout(&format!("path:     {}", exe.display()));
    r.expect_stdout("instead:  use the approved tool");
    r.expect_stdout("NOT COMPLIANT: 1 violation(s)");
}

#[test]
fn issue_10_a_root_that_does_not_exist_is_an_error_not_a_compliant_machine() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = one_rule_policy(tmp.path(), "block", r#"names = ["x"]"#);
    let missing = tmp.path().join("does-not-exist");
    let r = scan_json(&policy, &[tmp.path(), Path::new(&missing)]);
    r.expect_code(2);
    assert!(r.stdout.is_empty(), "no report on an error: {}", r.stdout);
    assert!(
        r.stderr.contains(&format!(
            "--root {}: no such file or folder",
            missing.display()
        )),
        "{}",
        r.stderr
    );
}

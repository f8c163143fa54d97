//! `interdict policy check`: snapshot tests of the diagnostics for broken policies.
//!
//! Each `tests/snapshots/policy_check/NAME.toml` is checked from inside that folder; the exit code,
//! stdout and stderr must equal `NAME.expected`. Run with `INTERDICT_BLESS=1` to rewrite the
//! snapshots after an intended change, then review the diff.

use crate::support::{interdict, repo, run, shipped_pack};

#[test]
fn snapshots_of_diagnostics() {
    let dir = repo().join("tests/snapshots/policy_check");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            n.strip_suffix(".toml").map(str::to_string)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 8, "snapshot inputs missing: {names:?}");
    let bless = std::env::var_os("INTERDICT_BLESS").is_some();
    let mut failures = Vec::new();
    for name in names {
        let r =
            run(interdict()
                .current_dir(&dir)
                .args(["policy", "check", &format!("{name}.toml")]));
        let got = format!(
            "exit: {}\n--- stdout\n{}--- stderr\n{}",
            r.code, r.stdout, r.stderr
        );
        let expected_path = dir.join(format!("{name}.expected"));
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != want {
            failures.push(format!(
                "=== {name}.toml\n--- expected\n{want}--- got\n{got}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "snapshot mismatch (INTERDICT_BLESS=1 to update):\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_error_code_in_the_snapshots_is_documented() {
    let dir = repo().join("tests/snapshots/policy_check");
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "expected") {
            let text = std::fs::read_to_string(&p).unwrap();
            for part in text
                .split("error[")
                .skip(1)
                .chain(text.split("warning[").skip(1))
            {
                let code = part.split(']').next().unwrap();
                assert!(
                    readme.contains(&format!("`{code}`")),
                    "code {code} (in {}) is not in the README",
                    p.display()
                );
            }
        }
    }
}

#[test]
fn shipped_pack_is_valid_without_warnings() {
    let r = run(interdict().arg("policy").arg("check").arg(shipped_pack()));
    r.expect_code(0);
    assert!(r.stderr.is_empty(), "warnings: {}", r.stderr);
    r.expect_stdout("ok: policy ai-coding-agents");
}

#[test]
fn several_files_report_each_and_fail_if_any_fails() {
    let dir = repo().join("tests/snapshots/policy_check");
    let r = run(interdict().current_dir(&dir).args([
        "policy",
        "check",
        "valid.toml",
        "no-rules.toml",
        "missing.toml",
    ]));
    r.expect_code(2);
    r.expect_stdout("valid.toml: ok");
    assert!(
        r.stderr.contains("no-rules.toml:1:1: error[no-rules]"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("missing.toml: cannot read policy: no such file"),
        "{}",
        r.stderr
    );
}

#[test]
fn scan_refuses_an_invalid_policy_with_every_diagnostic() {
    let dir = repo().join("tests/snapshots/policy_check");
    let tmp = tempfile::tempdir().unwrap();
    let r = run(interdict()
        .current_dir(&dir)
        .args([
            "scan",
            "--no-processes",
            "--policy",
            "bad-values.toml",
            "--root",
        ])
        .arg(tmp.path()));
    r.expect_code(2);
    assert!(
        r.stdout.is_empty(),
        "a rejected policy must not produce a report: {}",
        r.stdout
    );
    assert_eq!(r.stderr.matches("error[").count(), 18, "{}", r.stderr);
}

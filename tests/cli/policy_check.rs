//! `interdict policy check`: snapshot tests of the diagnostics for broken policies.
//!
//! Each `tests/snapshots/policy_check/NAME.toml` is checked from inside that folder; the exit code,
//! stdout and stderr must equal the `insta` snapshot `NAME.snap` beside it. After an intended
//! change, `cargo insta review` (or `INSTA_UPDATE=always`) writes new snapshots for review; a
//! mismatch is never accepted silently (in CI, insta writes nothing).

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
    insta::with_settings!({
        snapshot_path => &dir,
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        for name in names {
            let r = run(interdict()
                .current_dir(&dir)
                .args(["policy", "check", &format!("{name}.toml")]));
            let got = format!(
                "exit: {}\n--- stdout\n{}--- stderr\n{}",
                r.code, r.stdout, r.stderr
            );
            insta::assert_snapshot!(name.as_str(), got);
        }
    });
}

#[test]
fn every_error_code_in_the_snapshots_is_documented() {
    let dir = repo().join("tests/snapshots/policy_check");
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "snap") {
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

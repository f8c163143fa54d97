//! Behaviour of the policy engine: loading, specificity, exemptions, enforcement, evidence.

use std::path::PathBuf;

use interdict_policy::*;
use proptest::prelude::*;

const HASH_A: &str = "a2df1f41bb00250992926420d0063f89b127cb81abdd284dbefb80c50ff1d026";

fn policy(rules: &str) -> Policy {
    let text = format!(
        "[policy]\nname = \"t\"\nversion = \"1\"\nmode = \"enforce\"\nmessage = \"default message\"\n{rules}"
    );
    match Policy::load("t.toml", &text, &NoIncludes) {
        Ok((p, _)) => p,
        Err(d) => panic!("policy rejected:\n{d}"),
    }
}

fn rule(id: &str, action: &str, matcher: &str) -> String {
    format!(
        "\n[[rule]]\nid = \"{id}\"\nname = \"{id}\"\nrisk = \"high\"\nreason = \"r\"\naction = \"{action}\"\n[rule.match]\n{matcher}\n"
    )
}

fn exe(path: &str) -> Facts {
    Facts {
        exe_path: Some(PathBuf::from(path)),
        names: vec![path.rsplit('/').next().unwrap().to_string()],
        ..Facts::default()
    }
}

fn winner(p: &Policy, f: &Facts) -> Option<(String, SelectorKind)> {
    p.evaluate(f).map(|d| (p.rule(&d).id.clone(), d.selector))
}

#[test]
fn sha256_beats_path_beats_name() {
    let p = policy(&format!(
        "{}{}{}",
        rule("by-name", "report", r#"names = ["claude"]"#),
        rule("by-path", "report", r#"paths = ["/opt/**"]"#),
        rule("by-hash", "report", &format!(r#"sha256 = ["{HASH_A}"]"#)),
    ));
    let mut f = exe("/opt/x/claude");
    assert_eq!(winner(&p, &f), Some(("by-path".into(), SelectorKind::Path)));
    f.exe_sha256 = Sha256::from_hex(HASH_A);
    assert_eq!(
        winner(&p, &f),
        Some(("by-hash".into(), SelectorKind::Sha256))
    );
    assert_eq!(
        winner(&p, &exe("/usr/bin/claude")),
        Some(("by-name".into(), SelectorKind::Name))
    );
    assert_eq!(winner(&p, &exe("/usr/bin/other")), None);
}

#[test]
fn allow_wins_at_equal_specificity_but_not_over_a_more_specific_ban() {
    let p = policy(&format!(
        "{}{}{}",
        rule("ban", "block", r#"paths = ["**/claude"]"#),
        rule("approved", "allow", r#"paths = ["/opt/approved/claude"]"#),
        rule("ban-hash", "block", &format!(r#"sha256 = ["{HASH_A}"]"#)),
    ));
    assert_eq!(
        winner(&p, &exe("/opt/approved/claude")).unwrap().0,
        "approved"
    );
    assert_eq!(winner(&p, &exe("/opt/other/claude")).unwrap().0, "ban");
    let mut f = exe("/opt/approved/claude");
    f.exe_sha256 = Sha256::from_hex(HASH_A);
    assert_eq!(winner(&p, &f).unwrap().0, "ban-hash");
}

#[test]
fn stronger_action_then_file_order_break_ties() {
    let p = policy(&format!(
        "{}{}{}",
        rule("first-report", "report", r#"names = ["x"]"#),
        rule("block-one", "block", r#"names = ["x"]"#),
        rule("block-two", "block", r#"names = ["x"]"#),
    ));
    assert_eq!(winner(&p, &exe("/x")).unwrap().0, "block-one");
}

#[test]
fn globs_keep_star_within_a_component() {
    let p = policy(&rule(
        "r",
        "block",
        r#"paths = ["**/.local/share/claude/versions/*"]"#,
    ));
    assert!(p
        .evaluate(&exe("/home/a/.local/share/claude/versions/2.1.0"))
        .is_some());
    assert!(p
        .evaluate(&exe("/home/a/.local/share/claude/versions/2.1.0/inner"))
        .is_none());
    assert!(p
        .evaluate(&exe("/home/a/.local/share/claude/other/2.1.0"))
        .is_none());
}

#[test]
fn script_and_package_selectors() {
    let p = policy(&format!(
        "{}{}",
        rule(
            "s",
            "block",
            r#"scripts = ["**/node_modules/@anthropic-ai/claude-code/cli.js"]"#
        ),
        rule(
            "pkg",
            "report",
            r#"packages = ["pypi:Aider_Chat", "npm:@openai/codex"]"#
        ),
    ));
    let f = Facts {
        exe_path: Some("/usr/bin/node".into()),
        script_path: Some("/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js".into()),
        ..Facts::default()
    };
    let d = p.evaluate(&f).unwrap();
    assert_eq!(
        (p.rule(&d).id.as_str(), d.selector, d.subject),
        ("s", SelectorKind::Script, Subject::Script)
    );
    // PyPI names are normalized on both sides (PEP 503).
    let f = Facts {
        packages: vec![PackageRef::new(Ecosystem::Pypi, "aider.chat")],
        ..Facts::default()
    };
    let d = p.evaluate(&f).unwrap();
    let ev = p.evidence(&d, &f);
    assert_eq!(
        (ev.rule_id.as_str(), ev.pattern.as_str(), ev.value.as_str()),
        ("pkg", "pypi:aider-chat", "pypi:aider-chat")
    );
    // npm names are exact.
    let f = Facts {
        packages: vec![PackageRef::new(Ecosystem::Npm, "@openai/Codex")],
        ..Facts::default()
    };
    assert!(p.evaluate(&f).is_none());
}

#[test]
fn exemptions_by_user_group_and_host_glob() {
    let p = policy(&format!(
        "{}[rule.exempt]\nusers = [\"secops-lab\"]\ngroups = [\"ai-pilot\"]\nhosts = [\"build-*\"]\n",
        rule("r", "block", r#"names = ["claude"]"#)
    ));
    let base = Facts {
        names: vec!["claude".into()],
        user: Some("ann".into()),
        groups: vec!["staff".into()],
        host: Some("laptop-7".into()),
        ..Facts::default()
    };
    assert!(p.evaluate(&base).is_some());
    for f in [
        Facts {
            user: Some("secops-lab".into()),
            ..base.clone()
        },
        Facts {
            groups: vec!["staff".into(), "ai-pilot".into()],
            ..base.clone()
        },
        Facts {
            host: Some("BUILD-42".into()),
            ..base.clone()
        },
    ] {
        assert!(p.evaluate(&f).is_none(), "{f:?} should be exempt");
    }
}

#[test]
fn an_exempt_rule_lets_a_weaker_rule_win() {
    let p = policy(&format!(
        "{}[rule.exempt]\nusers = [\"ann\"]\n{}",
        rule("path-ban", "block", r#"paths = ["**/claude"]"#),
        rule("name-report", "report", r#"names = ["claude"]"#),
    ));
    let f = Facts {
        user: Some("ann".into()),
        ..exe("/opt/claude")
    };
    assert_eq!(winner(&p, &f).unwrap().0, "name-report");
}

#[test]
fn enforcement_follows_mode_and_enforce_from() {
    let text = r#"[policy]
name = "t"
version = "1"
mode = "enforce"

[[rule]]
id = "later"
name = "later"
risk = "low"
reason = "r"
action = "kill"
enforce_from = 2026-12-01
[rule.match]
names = ["x"]

[[rule]]
id = "reported"
name = "reported"
risk = "low"
reason = "r"
action = "report"
[rule.match]
names = ["y"]
"#;
    let (p, warnings) = Policy::load("t.toml", text, &NoIncludes).unwrap();
    assert_eq!(warnings.0.len(), 1, "name-only kill warns: {warnings}");
    assert_eq!(warnings.0[0].code, Code::NameOnlyBlock);
    let d = p.evaluate(&exe("/x")).unwrap();
    let nov30 = Date {
        year: 2026,
        month: 11,
        day: 30,
    };
    let dec1 = Date {
        year: 2026,
        month: 12,
        day: 1,
    };
    assert_eq!(p.enforcement(&d, nov30), Enforcement::NotYet(dec1));
    assert_eq!(p.enforcement(&d, dec1), Enforcement::Enforced);
    let d = p.evaluate(&exe("/y")).unwrap();
    assert_eq!(p.enforcement(&d, dec1), Enforcement::ReportOnly);

    let (p, _) = Policy::load(
        "t.toml",
        &text.replace("\"enforce\"", "\"monitor\""),
        &NoIncludes,
    )
    .unwrap();
    let d = p.evaluate(&exe("/x")).unwrap();
    assert_eq!(p.enforcement(&d, dec1), Enforcement::Monitor);
}

#[test]
fn messages_and_placeholders() {
    let p = policy(
        &format!(
            "{}message = \"rule text\"\n",
            rule("r", "block", r#"paths = ["/x"]"#)
        )
        .replace(
            "[rule.match]\npaths = [\"/x\"]\nmessage = \"rule text\"",
            "message = \"rule text\"\n[rule.match]\npaths = [\"/x\"]",
        ),
    );
    assert_eq!(p.message_for(&p.rules()[0]), Some("rule text"));
    let url = expand_placeholders(
        "https://it/x?rule=%rule_id%&p=%path%&u=%user%",
        &PlaceholderValues {
            rule_id: "claude-code",
            path: "/home/a b/claude",
            user: "ann",
            ..Default::default()
        },
        true,
    );
    assert_eq!(
        url,
        "https://it/x?rule=claude-code&p=%2Fhome%2Fa%20b%2Fclaude&u=ann"
    );
}

#[test]
fn sha256_files_go_through_the_callers_includes() {
    struct Files;
    impl Includes for Files {
        fn read(&self, rel: &str) -> Result<IncludedFile, String> {
            match rel {
                "h.sha256" => Ok(IncludedFile {
                    display_name: "dir/h.sha256".into(),
                    text: format!("{HASH_A}  claude\n\n# c\nBAD\n"),
                }),
                _ => Err("no such file".into()),
            }
        }
    }
    let text = format!(
        "[policy]\nname = \"t\"\nversion = \"1\"\nmode = \"enforce\"\n{}",
        rule(
            "r",
            "block",
            r#"sha256_files = ["h.sha256", "gone.sha256"]"#
        )
    );
    let err = Policy::load("p.toml", &text, &Files).unwrap_err();
    let lines: Vec<String> = err.0.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        lines,
        vec![
            "dir/h.sha256:4:1: error[bad-sha256]: `BAD` is not a SHA-256 (64 hexadecimal digits)".to_string(),
            "p.toml:13:29: error[missing-sha256-file]: cannot read sha256 file `gone.sha256`: no such file".to_string(),
        ]
    );
}

#[test]
fn codes_are_unique_kebab_case() {
    let mut seen = std::collections::HashSet::new();
    for c in Code::ALL {
        let s = c.as_str();
        assert!(seen.insert(s), "duplicate code {s}");
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{s}"
        );
    }
}

#[test]
fn columns_count_characters_not_bytes() {
    let text = "[policy]\nname = \"é\"\nversion = \"1\"\nmode = \"enforce\"\n\n[[rule]]\nid = \"r\"\nname = \"ü\"\nrisk = \"high\"\nreason = \"r\"\naction = \"bläh\"\n[rule.match]\nnames = [\"x\"]\n";
    let text = text.replace("action = \"bläh\"", "name2 = \"ü\"\naction = \"block\"");
    let err = Policy::load("p.toml", &text, &NoIncludes).unwrap_err();
    assert_eq!(
        err.0[0].to_string().split(": ").next().unwrap(),
        "p.toml:11:1"
    );
    let src = SourceText::new("x", "ab\nüüx");
    assert_eq!(src.locate(7), (2, 3));
}

#[test]
fn date_from_unix_seconds() {
    assert_eq!(Date::from_unix_seconds(0).to_string(), "1970-01-01");
    assert_eq!(
        Date::from_unix_seconds(951_782_400).to_string(),
        "2000-02-29"
    );
    assert_eq!(
        Date::from_unix_seconds(1_795_996_800).to_string(),
        "2026-11-30"
    );
}

proptest! {
    #[test]
    fn loading_never_panics_on_arbitrary_text(text in ".{0,400}") {
        let _ = Policy::load("fuzz.toml", &text, &NoIncludes);
    }

    #[test]
    fn loading_never_panics_on_mutated_policies(cut in 0usize..600, insert in "[\\[\\]=\"a-z0-9 \n.*-]{0,12}") {
        let base = format!("[policy]\nname = \"t\"\nversion = \"1\"\nmode = \"enforce\"\n{}", rule("r", "block", r#"paths = ["**/x"]"#));
        let mut cut = cut.min(base.len());
        while !base.is_char_boundary(cut) { cut -= 1; }
        let text = format!("{}{}{}", &base[..cut], insert, &base[cut..]);
        if let Err(d) = Policy::load("m.toml", &text, &NoIncludes) {
            prop_assert!(d.has_errors());
            for diag in &d.0 {
                prop_assert!(diag.line >= 1 && diag.col >= 1);
            }
        }
    }

    #[test]
    fn every_rule_matches_its_own_name(n in 1usize..40) {
        let rules: String = (0..n).map(|i| rule(&format!("r{i}"), "report", &format!("names = [\"tool{i}\"]"))).collect();
        let p = policy(&rules);
        for i in 0..n {
            let f = Facts { names: vec![format!("tool{i}")], ..Facts::default() };
            let d = p.evaluate(&f).unwrap();
            prop_assert_eq!(&p.rule(&d).id, &format!("r{i}"));
        }
    }
}

#[test]
fn learned_hashes_catch_renamed_copies() {
    let mut p = policy(&rule("by-path", "block", r#"paths = ["**/versions/*"]"#));
    let d = Sha256::from_hex(HASH_A).unwrap();
    let mut renamed = exe("/tmp/renamed");
    renamed.exe_sha256 = Some(d);
    assert!(p.evaluate(&renamed).is_none());
    assert!(p.learn("by-path", d, Some(4096)));
    assert!(!p.learn("by-path", d, Some(4096)), "learned once");
    assert!(!p.learn("no-such-rule", d, None));
    let dec = p.evaluate(&renamed).unwrap();
    assert_eq!(dec.selector, SelectorKind::Sha256);
    assert_eq!(p.evidence(&dec, &renamed).pattern, HASH_A);
    assert!(p.needs_sha256());
}

#[test]
fn sizes_in_hash_lists_spare_hashing_files_of_other_sizes() {
    use interdict_policy::{IncludedFile, Includes};
    struct One(&'static str);
    impl Includes for One {
        fn read(&self, _: &str) -> Result<IncludedFile, String> {
            Ok(IncludedFile {
                display_name: "h.sha256".into(),
                text: self.0.into(),
            })
        }
    }
    let policy = |list: &'static str| {
        let text = "[policy]\nname = \"t\"\nversion = \"1\"\nmode = \"enforce\"\n[[rule]]\nid = \"r\"\nname = \"R\"\nrisk = \"high\"\nreason = \"x\"\naction = \"block\"\n[rule.match]\nsha256_files = [\"h.sha256\"]\n";
        Policy::load("p.toml", text, &One(list))
    };
    let a = "a".repeat(64);
    let b = "b".repeat(64);
    let sized =
        format!("{a}  claude-2.1.332  size=245760000\n{b}  claude-2.1.333 size=245760512\n");
    let (p, _) = policy(Box::leak(sized.into_boxed_str())).unwrap();
    assert!(p.may_match_size(245_760_000));
    assert!(p.may_match_size(245_760_512));
    assert!(
        !p.may_match_size(1234),
        "no digest has that size: no hash needed"
    );
    // One digest without a size: every file may match.
    let mixed = format!("{a}  claude  size=245760000\n{b}  other\n");
    let (p, _) = policy(Box::leak(mixed.into_boxed_str())).unwrap();
    assert!(p.may_match_size(1234));
    // A learned digest with its size keeps the filter; a bad size is an error at its place.
    let (mut p, _) = policy(Box::leak(format!("{a}  c  size=10\n").into_boxed_str())).unwrap();
    assert!(!p.may_match_size(20));
    p.learn("r", Sha256::from_hex(&b).unwrap(), Some(20));
    assert!(p.may_match_size(20));
    let err = policy(Box::leak(format!("{a}  c  size=ten\n").into_boxed_str()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("h.sha256:1:70: error[bad-value]: `size=ten` is not a size in bytes"),
        "{err}"
    );
}

//! Family rules: the streaming search finds exactly what a search of the whole file finds,
//! however the file is cut into buffers, and the policy decides on it.

use std::path::PathBuf;

use interdict_policy::*;
use proptest::prelude::*;

fn policy_with(sigs: &[Vec<u8>]) -> Policy {
    let esc = |b: &[u8]| b.iter().map(|b| format!("\\x{b:02x}")).collect::<String>();
    let mut text = String::from("[policy]\nname = \"t\"\nversion = \"1\"\nmode = \"enforce\"\n");
    for (i, s) in sigs.iter().enumerate() {
        text.push_str(&format!(
            "[[rule]]\nid = \"r{i}\"\nname = \"r\"\nrisk = \"low\"\nreason = \"r\"\naction = \"report\"\n[rule.match]\ncontains_all = ['{}']\ncontains_in = [\"elf\", \"script\"]\n",
            esc(s)
        ));
    }
    Policy::load("t.toml", &text, &NoIncludes)
        .unwrap_or_else(|d| panic!("{d}"))
        .0
}

fn occurs(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Signatures from a two-letter alphabet overlap, nest and repeat; the file is cut at
    /// arbitrary points (down to one byte per buffer). Up to 23 signatures: both engines (one
    /// finder per signature up to `EACH_MAX`, the automaton beyond).
    #[test]
    fn streaming_finds_what_a_whole_file_search_finds(
        sigs in prop::collection::vec(prop::collection::vec(prop::sample::select(vec![b'a', b'b']), 8..12), 1..24),
        body in prop::collection::vec(prop::sample::select(vec![b'a', b'b', b'c']), 0..600),
        cuts in prop::collection::vec(0usize..600, 0..12),
        plant in prop::collection::vec((0usize..24, 0usize..600), 0..6),
    ) {
        let mut sigs = sigs;
        sigs.sort();
        sigs.dedup();
        let mut file = b"\x7fELF".to_vec();
        file.extend(&body);
        for (which, at) in plant {
            let s = &sigs[which % sigs.len()];
            let at = 4 + at % (file.len() - 3);
            file.splice(at..at, s.iter().copied());
        }
        let policy = policy_with(&sigs);
        let searcher = policy.content_searcher().unwrap();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (file.len() + 1)).collect();
        cuts.push(0);
        cuts.push(file.len());
        cuts.sort();
        let mut scan = searcher.scan();
        for w in cuts.windows(2) {
            scan.feed(&file[w[0]..w[1]]);
        }
        let m = scan.finish();
        prop_assert_eq!(m.format(), Some(FileFormat::Elf));
        let mut got: Vec<Vec<u8>> = searcher.found_signatures(&m).into_iter().map(<[u8]>::to_vec).collect();
        got.sort();
        let want: Vec<Vec<u8>> = sigs.iter().filter(|s| occurs(&file, s)).cloned().collect();
        prop_assert_eq!(&got, &want);
        // Each one-signature rule matches exactly when its signature occurs.
        let facts = Facts { exe_content: Some(m), exe_path: Some(PathBuf::from("/x")), ..Facts::default() };
        let d = policy.evaluate(&facts);
        prop_assert_eq!(d.is_some(), !want.is_empty());
        if let Some(d) = d {
            prop_assert_eq!(d.selector, SelectorKind::Contains);
        }
    }
}

fn family(extra: &str) -> String {
    format!(
        r#"[policy]
name = "t"
version = "1"
mode = "enforce"

[[rule]]
id = "fam"
name = "Family"
risk = "high"
reason = "r"
action = "block"
[rule.match]
contains_all = ["first signature", 'second \x00 one']
{extra}
"#
    )
}

fn facts_for(policy: &Policy, bytes: &[u8]) -> Facts {
    Facts {
        exe_path: Some(PathBuf::from("/home/a/Downloads/x")),
        exe_content: Some(policy.content_searcher().unwrap().scan_bytes(bytes)),
        ..Facts::default()
    }
}

#[test]
fn all_signatures_and_the_format_are_needed() {
    let (p, _) = Policy::load("t.toml", &family(""), &NoIncludes).unwrap();
    let both = b"\x7fELF...first signature...second \x00 one";
    let d = p
        .evaluate(&facts_for(&p, both))
        .expect("both signatures in an ELF file");
    assert_eq!(d.selector, SelectorKind::Contains);
    assert_eq!(d.subject, Subject::Exe);
    let ev = p.evidence(&d, &facts_for(&p, both));
    assert_eq!(
        ev.pattern,
        r#"contains_all ["first signature", "second \x00 one"] in elf/mach-o/pe"#
    );
    assert!(p
        .evaluate(&facts_for(&p, b"\x7fELF...first signature..."))
        .is_none());
    // Not an executable format: a text file holding both is not the program.
    assert!(p
        .evaluate(&facts_for(&p, b"notes: first signature, second \x00 one"))
        .is_none());
    // Scripts only when the rule says so.
    let script = b"#!/usr/bin/env node\nfirst signature; second \x00 one";
    assert!(p.evaluate(&facts_for(&p, script)).is_none());
    let (p, _) = Policy::load(
        "t.toml",
        &family(r#"contains_in = ["script"]"#),
        &NoIncludes,
    )
    .unwrap();
    assert!(p.evaluate(&facts_for(&p, script)).is_some());
    assert!(p.evaluate(&facts_for(&p, both)).is_none());
}

#[test]
fn a_match_made_by_another_policy_is_ignored() {
    let (p, _) = Policy::load("t.toml", &family(""), &NoIncludes).unwrap();
    let other = family("").replace("first signature", "other signature");
    let (q, _) = Policy::load("t.toml", &other, &NoIncludes).unwrap();
    let bytes = b"\x7fELF first signature other signature second \x00 one";
    let f = facts_for(&q, bytes);
    assert!(q.evaluate(&f).is_some());
    assert!(
        p.evaluate(&f).is_none(),
        "a match from another searcher must not count"
    );
}

#[test]
fn a_family_match_beats_a_path_allow_but_not_a_digest() {
    let text = family("")
        + r#"
[[rule]]
id = "approved-path"
name = "Approved"
risk = "low"
reason = "r"
action = "allow"
[rule.match]
paths = ["/home/a/Downloads/*"]

[[rule]]
id = "approved-build"
name = "Approved build"
risk = "low"
reason = "r"
action = "allow"
[rule.match]
sha256 = ["a2df1f41bb00250992926420d0063f89b127cb81abdd284dbefb80c50ff1d026"]
"#;
    let (p, _) = Policy::load("t.toml", &text, &NoIncludes).unwrap();
    let mut f = facts_for(&p, b"\x7fELF first signature second \x00 one");
    assert_eq!(p.rule(&p.evaluate(&f).unwrap()).id, "fam");
    f.exe_sha256 =
        Sha256::from_hex("a2df1f41bb00250992926420d0063f89b127cb81abdd284dbefb80c50ff1d026");
    assert_eq!(p.rule(&p.evaluate(&f).unwrap()).id, "approved-build");
}

#[test]
fn configs_match_absolute_and_home_paths() {
    let text = r#"[policy]
name = "t"
version = "1"
mode = "enforce"

[[rule]]
id = "agent-config"
name = "AI agent configuration"
risk = "low"
reason = "r"
action = "report"
[rule.match]
configs = ["~/.claude/settings.json", "**/.mcp.json", "/etc/claude-code/managed-settings.json"]
"#;
    let (p, _) = Policy::load("t.toml", text, &NoIncludes).unwrap();
    let cfg = |abs: &str, home: Option<&str>| Facts {
        config_path: Some(PathBuf::from(abs)),
        config_home_path: home.map(PathBuf::from),
        ..Facts::default()
    };
    let d = p
        .evaluate(&cfg(
            "/home/a/.claude/settings.json",
            Some("~/.claude/settings.json"),
        ))
        .unwrap();
    assert_eq!(
        (d.selector, d.subject),
        (SelectorKind::Config, Subject::Config)
    );
    assert_eq!(
        p.evidence(&d, &cfg("/home/a/.claude/settings.json", None))
            .pattern,
        "~/.claude/settings.json"
    );
    // The same name in a project is not the home's file.
    assert!(p
        .evaluate(&cfg("/src/app/.claude/settings.json", None))
        .is_none());
    assert!(p.evaluate(&cfg("/src/app/.mcp.json", None)).is_some());
    assert!(p
        .evaluate(&cfg("/etc/claude-code/managed-settings.json", None))
        .is_some());
    assert!(p.is_config_path("/src/app/.mcp.json".as_ref(), None));
    assert!(!p.is_config_path("/src/app/mcp.json".as_ref(), None));
    assert_eq!(
        p.home_config_globs().collect::<Vec<_>>(),
        ["~/.claude/settings.json"]
    );
}

#[test]
fn bad_family_and_config_rules_are_reported_all_at_once() {
    let text = r#"[policy]
name = "t"
version = "1"
mode = "enforce"

[[rule]]
id = "bad-family"
name = "r"
risk = "low"
reason = "r"
action = "block"
[rule.match]
contains_all = ["short", 'bad \q escape', 'truncated \x4', "fine signature"]
contains_in = ["elf", "macho", "exe"]

[[rule]]
id = "formats-alone"
name = "r"
risk = "low"
reason = "r"
action = "report"
[rule.match]
names = ["x"]
contains_in = ["elf"]

[[rule]]
id = "config-block"
name = "r"
risk = "low"
reason = "r"
action = "block"
[rule.match]
configs = ["~/.claude.json", ".mcp.json"]

[[rule]]
id = "empty-family"
name = "r"
risk = "low"
reason = "r"
action = "report"
[rule.match]
names = ["y"]
contains_all = []
"#;
    let d = Policy::load("bad.toml", text, &NoIncludes).unwrap_err();
    let lines: Vec<String> = d.0.iter().map(|d| d.to_string()).collect();
    let want = [
        "bad.toml:13:17: error[bad-signature]: signature `short` is 5 bytes long: at least 8 are needed (shorter ones occur by chance)",
        "bad.toml:13:26: error[bad-signature]: signature `bad \\q escape`: a backslash starts `\\xHH` (one byte) or `\\\\` (a backslash); write other text as it is",
        "bad.toml:13:43: error[bad-signature]: signature `truncated \\x4`: `\\x` must be followed by two hexadecimal digits",
        "bad.toml:14:23: error[bad-file-format]: `contains_in` has `macho`, expected some of: elf, mach-o, pe, script; did you mean `mach-o`?",
        "bad.toml:14:32: error[bad-file-format]: `contains_in` has `exe`, expected some of: elf, mach-o, pe, script; did you mean `elf`?",
        "bad.toml:24:1: error[missing-key]: `contains_in` says which files `contains_all` looks into, but this rule has no `contains_all`",
        "bad.toml:31:10: error[config-action]: rule `config-block` matches only configuration files (`configs`), which are reported and never blocked, killed, quarantined or allowed: use action = \"report\"",
        "bad.toml:33:30: error[bad-glob]: `configs` globs match absolute paths or paths in a home: `.mcp.json` must start with `/`, `**/` or `~/`",
        "bad.toml:43:16: error[empty-value]: `contains_all` needs at least one signature",
    ];
    assert_eq!(lines, want, "\n{}", lines.join("\n"));
}

#[test]
fn issue_14_only_files_of_a_format_and_size_a_family_rule_could_match_need_reading() {
    let (p, _) = Policy::load("t.toml", &family(""), &NoIncludes).unwrap();
    // ELF (the default formats), long enough for both signatures (15 and 12 bytes).
    assert!(p.may_match_content(4096, b"\x7fELF\x02\x01\x01\x00"));
    assert!(p.may_match_content(15, b"\x7fELF"));
    // Shorter than the longest signature: cannot hold it.
    assert!(!p.may_match_content(14, b"\x7fELF"));
    // Not a format the rule looks into: a script, a text file, an empty file.
    assert!(!p.may_match_content(4096, b"#!/bin/sh\n"));
    assert!(!p.may_match_content(4096, b"plain te"));
    assert!(!p.may_match_content(0, b""));
    let (p, _) = Policy::load(
        "t.toml",
        &family(r#"contains_in = ["script"]"#),
        &NoIncludes,
    )
    .unwrap();
    assert!(p.may_match_content(4096, b"#!/usr/bi"));
    assert!(!p.may_match_content(4096, b"\x7fELF\x02\x01\x01\x00"));
    // No family rule: nothing ever needs reading for one.
    let (p, _) = Policy::load(
        "t.toml",
        &family("").replace(
            "contains_all = [\"first signature\", 'second \\x00 one']",
            "names = [\"x\"]",
        ),
        &NoIncludes,
    )
    .unwrap();
    assert!(p.content_searcher().is_none());
    assert!(!p.may_match_content(4096, b"\x7fELF\x02\x01\x01\x00"));
}

//! Issue 14: the shipped pack's family rule identifies Claude Code by what it is, across
//! releases, renames and small edits, and nothing else: real releases from npm and PyPI against
//! a false-positive corpus of real packages and everything under /usr.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::support::fixtures::*;
use crate::support::*;

/// The shipped pack without its hash lists, so that only the family rule can identify a
/// release the lists hold.
fn pack_without_hashes(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(shipped_pack()).unwrap();
    let stripped: String = text
        .lines()
        .filter(|l| !l.starts_with("sha256_files"))
        .collect::<Vec<_>>()
        .join("\n");
    let p = dir.join("pack-without-hashes.toml");
    std::fs::write(&p, stripped).unwrap();
    p
}

/// The pack's family rule alone, looking into every format, plus an `allow` rule that makes the
/// scan read every regular file whatever its mode (allow decisions are not violations): the
/// strictest false-positive check.
fn family_rule_reading_everything(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(shipped_pack()).unwrap();
    let sigs = text
        .lines()
        .find(|l| l.starts_with("contains_all"))
        .expect("the pack has a family rule")
        .to_string();
    let p = dir.join("family.toml");
    std::fs::write(
        &p,
        format!(
            r#"[policy]
name = "family-only"
version = "1"
mode = "enforce"

[[rule]]
id = "claude-code"
name = "Claude Code"
risk = "high"
reason = "r"
action = "block"
[rule.match]
{sigs}
contains_in = ["elf", "mach-o", "pe", "script"]

[[rule]]
id = "read-everything"
name = "every file"
risk = "low"
reason = "makes the scan read every regular file"
action = "allow"
[rule.match]
scripts = ["/**"]
"#
        ),
    )
    .unwrap();
    p
}

/// One Claude Code release from a registry, as a file.
struct Release {
    what: &'static str,
    file: PathBuf,
}

/// Releases of every era and format: the oldest npm release (cli.mjs, February 2025), an old
/// cli.js, the first native binary on npm, one from six months ago, the newest, a Mach-O build
/// and the binary the PyPI Agent SDK bundles.
fn releases() -> &'static [Release] {
    static R: OnceLock<Vec<Release>> = OnceLock::new();
    R.get_or_init(|| {
        let pkg = |spec: &str, rel: &str| npm_package(spec).join("package").join(rel);
        vec![
            Release {
                what: "0.2.9 cli.mjs",
                file: pkg("@anthropic-ai/claude-code@0.2.9", "cli.mjs"),
            },
            Release {
                what: "1.0.0 cli.js",
                file: pkg("@anthropic-ai/claude-code@1.0.0", "cli.js"),
            },
            Release {
                what: "2.1.110 linux-x64",
                file: pkg("@anthropic-ai/claude-code-linux-x64@2.1.110", "claude"),
            },
            Release {
                what: "2.1.160 linux-arm64-musl",
                file: pkg(
                    "@anthropic-ai/claude-code-linux-arm64-musl@2.1.160",
                    "claude",
                ),
            },
            Release {
                what: "2.1.250 darwin-arm64 (Mach-O)",
                file: pkg("@anthropic-ai/claude-code-darwin-arm64@2.1.250", "claude"),
            },
            Release {
                what: "2.1.332 linux-x64",
                file: crate::npm_packages::prefix()
                    .join("node_modules/@anthropic-ai/claude-code-linux-x64/claude"),
            },
            Release {
                what: "PyPI claude-agent-sdk bundled binary",
                file: crate::channels::pypi_sdk_binary(),
            },
        ]
    })
}

#[test]
fn issue_14_claude_code_releases_renamed_into_any_folder_are_identified_by_the_family_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = pack_without_hashes(tmp.path());
    let root = tmp.path().join("root");
    let mut placed = Vec::new();
    for (i, r) in releases().iter().enumerate() {
        // Names and folders no path glob knows.
        let dst = root.join(format!("projects/tool-{i}/bin/formatter-{i}"));
        place(&r.file, &dst);
        placed.push((r.what, dst));
    }
    let scan = scan_json(&policy, &[&root]);
    scan.expect_code(1);
    let j = scan.json();
    for (what, dst) in &placed {
        let v = violation_at(&j, dst);
        assert_eq!(v["rule_id"], "claude-code", "{what}: {v:#}");
        assert_eq!(v["selector"], "contains", "{what}: {v:#}");
        assert_eq!(v["action"], "block", "{what}");
        assert_eq!(v["kind"], "installed", "{what}");
    }
    assert_eq!(violations(&j).len(), placed.len(), "{j:#}");
    // `interdict explain` says the same about one of them.
    let (_, one) = &placed[2];
    let r = run(interdict()
        .arg("explain")
        .arg(one)
        .arg("--policy")
        .arg(&policy));
    r.expect_code(1)
        .expect_stdout("blocked by rule `claude-code`")
        .expect_stdout("matched:  contains `contains_all [");
}

#[test]
fn issue_14_the_hash_lists_identify_the_releases_of_the_last_six_months() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let in_window: Vec<_> = releases()
        .iter()
        .filter(|r| {
            r.what.starts_with("2.1.160")
                || r.what.starts_with("2.1.250")
                || r.what.starts_with("2.1.332")
        })
        .collect();
    assert_eq!(in_window.len(), 3);
    for (i, r) in in_window.iter().enumerate() {
        place(&r.file, &root.join(format!("x{i}")));
    }
    let run = scan_json(&shipped_pack(), &[&root]);
    run.expect_code(1);
    let j = run.json();
    for (i, r) in in_window.iter().enumerate() {
        let v = violation_at(&j, &root.join(format!("x{i}")));
        assert_eq!(v["selector"], "sha256", "{}: {v:#}", r.what);
        assert_eq!(v["sha256"], sha256sum(&r.file), "{}", r.what);
    }
}

/// The pack's family signatures, read from the pack at run time. Never write them into this
/// file as literals: this test binary would then hold them, and the sweeps of every test agent
/// that enforces the shipped pack would take it for Claude Code and kill it.
fn pack_signatures() -> Vec<String> {
    let text = std::fs::read_to_string(shipped_pack()).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("contains_all"))
        .expect("the pack has a family rule");
    let t: toml::Table = toml::from_str(line).unwrap();
    t["contains_all"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Flip one byte in the middle of `needle`'s first occurrence.
fn damage_first(bytes: &mut [u8], needle: &[u8]) -> usize {
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{} not found", String::from_utf8_lossy(needle)));
    let i = at + needle.len() / 2;
    bytes[i] ^= 0x20;
    i
}

#[test]
fn issue_14_a_working_copy_with_a_byte_changed_in_every_signature_is_still_identified() {
    let tmp = tempfile::tempdir().unwrap();
    let original = crate::npm_packages::prefix()
        .join("node_modules/@anthropic-ai/claude-code-linux-x64/claude");
    let mut bytes = std::fs::read(&original).unwrap();
    // The adversary's best single edits: one byte inside the first occurrence of each signature
    // (and one in a help string). Each signature occurs again elsewhere in the binary.
    for sig in pack_signatures() {
        damage_first(&mut bytes, sig.as_bytes());
    }
    damage_first(&mut bytes, b"dangerously-skip-permissions");
    let copy = tmp.path().join("root/opt/devtools/assistant");
    write(&copy, &bytes, 0o755);
    drop(bytes);
    // It still runs.
    let out = Command::new(&copy).arg("--version").output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(Claude Code)"),
        "the modified copy should still run: {out:?}"
    );
    assert_ne!(sha256sum(&copy), sha256sum(&original));
    let run = scan_json(&shipped_pack(), &[&tmp.path().join("root")]);
    run.expect_code(1);
    let v = violation_at(&run.json(), &copy);
    assert_eq!(v["rule_id"], "claude-code", "{v:#}");
    assert_eq!(v["selector"], "contains", "{v:#}");
    assert_eq!(v["sha256"], sha256sum(&copy));
}

/// Real packages that are not Claude Code but come close: other agents (Cline's binary holds
/// Claude Code's OAuth client id and environment variable names), the Anthropic SDKs (API
/// client, and the Agent SDK's own JavaScript), the Cline editor extension's source, the Bun
/// runtime Claude Code is built with, and ordinary projects' dependencies.
pub const FP_PACKAGES: &[&str] = &[
    "@anthropic-ai/sdk@1.15.0",
    "@anthropic-ai/claude-agent-sdk@0.3.333",
    "cline@3.0.65",
    "claude-dev@3.10.10",
    "@oven/bun-linux-x64@1.4.5",
    "express@5",
    "typescript@5",
    "webpack@5",
    "eslint@9",
];

pub fn fp_corpus() -> PathBuf {
    cached("fp-corpus-2", |dir| {
        // --omit=optional: the Agent SDK's platform packages carry the Claude Code binary
        // itself, which is not a false positive. Cline's native CLI, an optional dependency of
        // `cline`, is named on its own.
        sh(Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--ignore-scripts",
                "--omit=optional",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(dir)
            .args(FP_PACKAGES)
            .arg("@cline/cli-linux-x64@3.0.65"));
    })
}

#[test]
fn issue_14_the_false_positive_corpus_holds_no_claude_code() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = family_rule_reading_everything(tmp.path());
    let corpus = fp_corpus();
    let npm = crate::npm_packages::prefix().join("node_modules");
    let cline = corpus.join("node_modules/@cline/cli-linux-x64/bin/cline");
    assert!(cline.is_file(), "the corpus must hold Cline's binary");
    let roots = [
        Path::new("/usr"),
        corpus.as_path(),
        &npm.join("@openai"),
        &npm.join("@google"),
    ];
    let run = scan_json(&policy, &roots);
    let j = run.json();
    assert_eq!(
        violations(&j),
        Vec::<serde_json::Value>::new(),
        "false positives:\n{j:#}"
    );
    run.expect_code(0);
    // Everything was read: at least the corpus's own bytes.
    let corpus_bytes: u64 = walk_size(&corpus);
    assert!(
        j["hashed_bytes"].as_u64().unwrap() >= corpus_bytes,
        "hashed {} of at least {corpus_bytes} bytes",
        j["hashed_bytes"]
    );
    // The same policy does see Claude Code: the check can fail.
    let control = tmp.path().join("control");
    place(&releases()[5].file, &control.join("x"));
    scan_json(&policy, &[&control]).expect_code(1);
}

fn walk_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                total += e.metadata().unwrap().len();
            }
        }
    }
    total
}

/// The pack's family rule alone (as shipped: the formats it looks into included), blocking,
/// with root exempt: a test agent's sweep of what already runs must never kill a real Claude
/// Code running on this machine (as root), while the test's own execs run as the test user.
fn family_rule_blocking() -> String {
    let text = std::fs::read_to_string(shipped_pack()).unwrap();
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("the pack's family rule has no `{key}`"))
            .to_string()
    };
    let matcher = format!("{}\n{}", line("contains_all"), line("contains_in"));
    format!(
        "{}{}[rule.exempt]\nusers = [\"root\"]\n",
        crate::support::agent::POLICY_HEAD,
        crate::support::agent::rule("claude-code", "block", &matcher)
    )
}

/// The agent's exec guard identifies Claude Code by the family rule too: on a marked tmpfs, a
/// renamed copy of a real release, a working copy with a byte changed in the first occurrence
/// of each signature (a digest nobody has) and an old `cli.js` release made executable are all
/// refused with EPERM, with an `exec_denied` event naming the family rule; an ordinary program
/// and a script on the same filesystem run.
#[test]
fn issue_14_the_exec_guard_refuses_renamed_and_edited_releases_by_the_family_rule() {
    use crate::support::agent::{events_of, marks, Agent, TmpMount};
    let m = TmpMount::new();
    let tools = m.path().join("tools");
    let original = crate::npm_packages::prefix()
        .join("node_modules/@anthropic-ai/claude-code-linux-x64/claude");
    let renamed = tools.join("fmt-helper");
    place(&original, &renamed);
    let mut bytes = std::fs::read(&original).unwrap();
    for sig in pack_signatures() {
        damage_first(&mut bytes, sig.as_bytes());
    }
    let edited = tools.join("lint");
    write(&edited, &bytes, 0o755);
    drop(bytes);
    assert_ne!(sha256sum(&edited), sha256sum(&original));
    let old_js = npm_package("@anthropic-ai/claude-code@1.0.0").join("package/cli.js");
    let cli_js = tools.join("notes");
    write(&cli_js, &std::fs::read(&old_js).unwrap(), 0o755);
    let ordinary = tools.join("true");
    write(&ordinary, &std::fs::read("/bin/true").unwrap(), 0o755);
    let script = tools.join("hello.sh");
    write(&script, b"#!/bin/sh\nexit 0\n", 0o755);
    // Digests before the agent starts: once denied, a banned file cannot be opened either.
    let digests: Vec<String> = [&renamed, &edited, &cli_js]
        .iter()
        .map(|p| sha256sum(p))
        .collect();

    // A generous deadline: the first exec of a 245 MB binary is read in full, and this test is
    // about the decision, not how fast it comes on a loaded machine (benches/exec.sh measures
    // that); with the default fail_mode (open) a late decision would be a kill, not EPERM.
    let agent = Agent::start(
        &family_rule_blocking(),
        &format!("{}\ndeadline_ms = 60000", marks(m.path())),
    );
    // Run as the test user (root is exempt, see above).
    let run_as = |p: &Path| as_test_user(p).output().unwrap();
    for p in [&renamed, &edited, &cli_js] {
        let out = run_as(p);
        assert!(
            !out.status.success()
                && String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
            "{} should have been refused with EPERM: {out:?}; agent: {}",
            p.display(),
            agent.stderr()
        );
    }
    for p in [&ordinary, &script] {
        let out = run_as(p);
        assert!(
            out.status.success(),
            "{} refused: {out:?}; agent: {}",
            p.display(),
            agent.stderr()
        );
    }
    for (p, digest) in [&renamed, &edited, &cli_js].into_iter().zip(&digests) {
        let e = agent.wait_event(&format!("exec_denied for {}", p.display()), |e| {
            e["kind"] == "exec_denied" && e["file"]["path"] == p.to_string_lossy().as_ref()
        });
        assert_eq!(e["rule"]["id"], "claude-code", "{e:#}");
        assert_eq!(e["rule"]["selector"], "contains", "{e:#}");
        assert_eq!(e["file"]["sha256"], *digest, "{e:#}");
    }
    let events = agent.events();
    for p in [&ordinary, &script] {
        assert!(
            events_of(&events, "exec_denied", p).is_empty(),
            "{} denied: {events:#?}",
            p.display()
        );
    }
}

/// Programs the exec guard never held (started before the agent, or from a filesystem it does
/// not mark) are judged by the family rules too: one already running is killed by the start-up
/// sweep, one started later by the proc connector's judge; a program holding only one of the
/// signatures keeps running. (Signatures unique to this test, so that its agent can never touch
/// another process on this machine.)
#[test]
fn issue_14_a_running_program_a_family_rule_identifies_is_killed_by_the_process_checks() {
    use crate::support::agent::{rule, Agent, POLICY_HEAD};
    use std::os::unix::process::ExitStatusExt;
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::fs::canonicalize(tmp.path()).unwrap();
    let tag = format!("{}-{}", std::process::id(), fastrand::u32(..));
    let (a, b) = (
        format!("interdict-family-a-{tag}"),
        format!("interdict-family-b-{tag}"),
    );
    let sleep = std::fs::read("/bin/sleep").unwrap();
    let with = |tail: &str| {
        let mut v = sleep.clone();
        v.extend_from_slice(tail.as_bytes());
        v
    };
    let prog = dir.join("bin/helper");
    write(&prog, &with(&format!("\0{a}\0{b}\0")), 0o755);
    let partial = dir.join("bin/partial");
    write(&partial, &with(&format!("\0{a}\0")), 0o755);
    let wait_killed = |c: &mut std::process::Child, what: &str, agent: Option<&Agent>| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                assert_eq!(st.signal(), Some(9), "{what}: {st}");
                return;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!(
                    "{what} still runs after 30 s; agent: {}",
                    agent.map(Agent::stderr).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut before = Command::new(&prog).arg("60").spawn().unwrap();
    let mut half = Command::new(&partial).arg("60").spawn().unwrap();
    let policy = format!(
        "{POLICY_HEAD}{}",
        rule(
            "fam",
            "block",
            &format!("contains_all = [\"{a}\", \"{b}\"]")
        )
    );
    let agent = Agent::start(&policy, "fanotify = false");
    wait_killed(
        &mut before,
        "the program running before the agent",
        Some(&agent),
    );
    let mut after = Command::new(&prog).arg("60").spawn().unwrap();
    wait_killed(&mut after, "the program started later", Some(&agent));
    assert!(
        half.try_wait().unwrap().is_none(),
        "a program holding one signature of two was stopped; agent: {}",
        agent.stderr()
    );
    let _ = half.kill();
    let _ = half.wait();
    for pid in [before.id(), after.id()] {
        let e = agent.wait_event(&format!("process_killed for {pid}"), |e| {
            e["kind"] == "process_killed" && e["process"]["pid"] == pid
        });
        assert_eq!(e["rule"]["id"], "fam", "{e:#}");
        assert_eq!(e["rule"]["selector"], "contains", "{e:#}");
        assert_eq!(e["file"]["path"], *prog.to_string_lossy(), "{e:#}");
    }
}

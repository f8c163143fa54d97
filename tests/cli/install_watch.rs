//! The install watcher (issue 4) against real inotify, with the exec sensors off: evasion by
//! copy, rename, hard link and symlink; a real `npm install -g`; a 100,000-file tree; symlink
//! loops, unreadable directories, names that are not UTF-8, and files deleted as they land.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::agent::{backdate, hash_policy, unique_copy, Agent, MountedAt, Paused};
use crate::support::*;

/// The `[exec]` body of an agent that only watches installs under `root`.
fn watch_only(root: &Path) -> String {
    format!(
        "fanotify = false\nproc_connector = false\n\n[install]\nroots = [\"{}\"]\ndebounce_ms = 200",
        root.display()
    )
}

fn is_event(e: &Value, kind: &str, path: &Path) -> bool {
    e["kind"] == kind && e["file"]["path"] == path.to_string_lossy().as_ref()
}

fn count(events: &[Value], kind: &str, path: &Path) -> usize {
    events.iter().filter(|e| is_event(e, kind, path)).count()
}

/// A banned binary outside every watched root: (its folder, its path, its digest).
fn banned_outside(name: &str) -> (tempfile::TempDir, PathBuf, String) {
    let outside = tempfile::tempdir().unwrap();
    let original = outside.path().join(name);
    let digest = unique_copy("/bin/true", &original);
    (outside, original, digest)
}

#[test]
fn copies_renames_hard_links_and_symlinks_of_a_banned_binary_are_each_caught_by_hash() {
    let (_outside, original, digest) = banned_outside("claude");
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let mut agent = Agent::start(&hash_policy("evade", "report", &digest), &watch_only(r));

    // A copy under an innocent name.
    let copy = r.join("tools/notes-helper");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(&original, &copy).unwrap();
    let e = agent.wait_event("the copy", |e| is_event(e, "installed_detected", &copy));
    assert_eq!(e["rule"]["id"], "evade");
    assert_eq!(e["rule"]["selector"], "sha256");
    assert_eq!(e["file"]["sha256"], digest.as_str());

    // Renamed into another folder: gone from the old path, found at the new one.
    let moved = r.join("other/dir/fmt");
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::rename(&copy, &moved).unwrap();
    agent.wait_event("the renamed file", |e| {
        is_event(e, "installed_detected", &moved)
    });
    agent.wait_event("the old name gone", |e| {
        is_event(e, "installed_removed", &copy)
    });

    // A hard link: the same inode under a second name is a second install location.
    let hard = r.join("links/hard");
    std::fs::create_dir_all(hard.parent().unwrap()).unwrap();
    std::fs::hard_link(&moved, &hard).unwrap();
    agent.wait_event("the hard link", |e| {
        is_event(e, "installed_detected", &hard)
    });

    // A symlink inside the root to the banned file outside it: found through the link.
    let link = r.join("bin/cc");
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&original, &link).unwrap();
    let e = agent.wait_event("the symlink", |e| is_event(e, "installed_detected", &link));
    assert_eq!(e["file"]["sha256"], digest.as_str());

    // A symlink to a file already reported is not a new install.
    let alias = r.join("bin/alias");
    std::os::unix::fs::symlink(&moved, &alias).unwrap();
    // A marker after it: once the marker is seen, the alias has been examined too.
    let marker = r.join("bin/marker");
    std::fs::copy(&original, &marker).unwrap();
    agent.wait_event("the marker", |e| is_event(e, "installed_detected", &marker));
    agent.settle_installs();
    agent.stop();
    let events = agent.events();
    for p in [&copy, &moved, &hard, &link, &marker] {
        assert_eq!(
            count(&events, "installed_detected", p),
            1,
            "{p:?}: {events:#?}"
        );
    }
    assert_eq!(
        count(&events, "installed_detected", &alias),
        0,
        "{events:#?}"
    );
    assert!(
        !events.iter().any(|e| e["kind"] == "installed_detected"
            && e["file"]["path"] == original.to_string_lossy().as_ref()),
        "nothing outside the roots is reported as installed there: {events:#?}"
    );
}

#[test]
fn a_real_npm_install_into_a_watched_prefix_is_reported_once_per_package_and_binary() {
    // The fixture install fills npm's cache; this install is then a real, offline `npm i -g`.
    let _ = crate::npm_packages::prefix();
    let root = tempfile::tempdir().unwrap();
    let text = crate::support::pack_without_family_rule().replace(
        "hashes/",
        &format!("{}/hashes/", repo().join("policies").display()),
    );
    let mut agent = Agent::start(&text, &watch_only(root.path()));
    let out = Command::new("npm")
        .args([
            "install",
            "-g",
            "--prefer-offline",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--prefix",
        ])
        .arg(root.path())
        .arg(crate::npm_packages::PACKAGES[0])
        .output()
        .expect("npm must be installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "npm install failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pkg_dir = root
        .path()
        .join("lib/node_modules/@anthropic-ai/claude-code");
    let e = agent.wait_event("the package", |e| {
        is_event(e, "installed_detected", &pkg_dir)
    });
    assert_eq!(e["rule"]["id"], "claude-code");
    assert_eq!(
        e["message"],
        "package npm:@anthropic-ai/claude-code 2.1.332"
    );
    // The native binary: by path or by sha256, whichever npm's write order lets the watcher see
    // first (a debounce that fires while npm still writes the file sees the path, not the final
    // digest); one event either way.
    let native = pkg_dir.join("node_modules/@anthropic-ai/claude-code-linux-x64/claude");
    let binary = agent.wait_event("the native binary", |e| {
        is_event(e, "installed_detected", &native)
    });
    assert_eq!(binary["rule"]["id"], "claude-code");
    // npm has finished: once a full rescan has run, everything it wrote has been looked at.
    agent.settle_installs();
    agent.stop();
    let events = agent.events();
    let detected: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "installed_detected")
        .collect();
    assert_eq!(
        count(&events, "installed_detected", &pkg_dir),
        1,
        "{detected:#?}"
    );
    // One event per banned file, however the install wrote it (npm writes, renames, chmods) and
    // whatever points at it (the `bin/claude` symlink).
    let mut paths: Vec<&str> = detected
        .iter()
        .filter_map(|e| e["file"]["path"].as_str())
        .collect();
    let n = paths.len();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), n, "a file reported twice: {detected:#?}");
    assert!(
        events.iter().all(|e| e["kind"] != "installed_removed"),
        "{events:#?}"
    );
}

#[test]
fn a_tree_of_100000_files_is_watched_and_rescanned_and_the_banned_files_in_it_found() {
    let (_outside, original, digest) = banned_outside("banned");
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    // 100,000 files in 1,000 folders, a tenth of them executable; one is the banned binary.
    for d in 0..1000 {
        let dir = r.join(format!("pkg-{}/lib-{}", d / 10, d % 10));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            let p = dir.join(format!("f{f}"));
            std::fs::write(&p, format!("{d}-{f}")).unwrap();
            if f % 10 == 0 {
                std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                    .unwrap();
            }
        }
    }
    let deep = r.join("pkg-57/lib-3/f40");
    std::fs::copy(&original, &deep).unwrap();
    assert_eq!(
        walkdir_count(r),
        100_000,
        "the tree holds 100,000 files (one replaced by the banned binary)"
    );
    let agent = Agent::start(&hash_policy("big-tree", "report", &digest), &watch_only(r));
    // The start-up rescan finds the one that was there.
    agent.wait_event("the banned file in the tree", |e| {
        is_event(e, "installed_detected", &deep)
    });
    // The watch covers the whole tree: one landing in its last folder is found too.
    let late = r.join("pkg-99/lib-9/late");
    std::fs::copy(&original, &late).unwrap();
    agent.wait_event("a late arrival", |e| {
        is_event(e, "installed_detected", &late)
    });
    let s = agent.status();
    assert!(
        s["counters"]["install_rescans"].as_u64().unwrap() >= 1,
        "{s:#}"
    );
    assert!(s["last_rescan_us"].as_u64().unwrap() > 0, "{s:#}");
    let detected = agent
        .events()
        .into_iter()
        .filter(|e| e["kind"] == "installed_detected")
        .count();
    assert_eq!(detected, 2);
}

fn walkdir_count(root: &Path) -> usize {
    let out = Command::new("find")
        .arg(root)
        .args(["-type", "f"])
        .output()
        .unwrap();
    out.stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count()
}

#[test]
fn symlink_loops_unreadable_folders_and_names_that_are_not_utf8_do_not_stop_the_watcher() {
    let (_outside, original, digest) = banned_outside("banned");
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    // Loops: a link to its own folder's parent, and a link to itself.
    std::fs::create_dir_all(r.join("loop/inner")).unwrap();
    std::os::unix::fs::symlink("..", r.join("loop/inner/up")).unwrap();
    std::os::unix::fs::symlink("self", r.join("loop/self")).unwrap();
    // A folder nobody may read: the agent (root) still looks inside.
    let locked = r.join("locked");
    std::fs::create_dir_all(&locked).unwrap();
    std::fs::copy(&original, locked.join("hidden")).unwrap();
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    // A name that is not UTF-8.
    let odd = r.join(std::ffi::OsStr::from_bytes(b"bin/\xff\xfeclaude"));
    std::fs::create_dir_all(odd.parent().unwrap()).unwrap();
    std::fs::copy(&original, &odd).unwrap();

    let agent = Agent::start(&hash_policy("odd", "report", &digest), &watch_only(r));
    agent.wait_event("the file in the locked folder", |e| {
        is_event(e, "installed_detected", &locked.join("hidden"))
    });
    let e = agent.wait_event("the non-UTF-8 name", |e| {
        e["kind"] == "installed_detected"
            && e["file"]["path"] == format!("{}/bin/\\xFF\\xFEclaude", r.display())
    });
    assert_eq!(e["file"]["sha256"], digest.as_str());
    // Still watching after all that.
    std::os::unix::fs::symlink("..", r.join("loop/inner/up2")).unwrap();
    let late = r.join("loop/inner/late");
    std::fs::copy(&original, &late).unwrap();
    agent.wait_event("a later install", |e| {
        is_event(e, "installed_detected", &late)
    });
    let detected = agent
        .events()
        .into_iter()
        .filter(|e| e["kind"] == "installed_detected")
        .count();
    assert_eq!(detected, 3, "{:#?}", agent.events());
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

#[test]
fn a_banned_file_deleted_as_it_lands_is_never_left_reported_as_installed() {
    let outside = tempfile::tempdir().unwrap();
    // Big enough that hashing it takes a while: the delete races the hash.
    let original = outside.path().join("banned");
    let mut bytes = vec![0u8; 64 << 20];
    bytes.extend_from_slice(
        format!(
            "interdict-{}-{:?}",
            std::process::id(),
            std::time::Instant::now()
        )
        .as_bytes(),
    );
    write(&original, &bytes, 0o755);
    let digest = sha256sum(&original);
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let agent = Agent::start(
        &hash_policy("racy", "report", &digest),
        &format!(
            "fanotify = false\nproc_connector = false\n\n[install]\nroots = [\"{}\"]\ndebounce_ms = 50",
            r.display()
        ),
    );
    let mut racy: Vec<PathBuf> = Vec::new();
    for i in 0..8u64 {
        let p = r.join(format!("drop/tool-{i}"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::copy(&original, &p).unwrap();
        std::thread::sleep(Duration::from_millis(10 * i));
        std::fs::remove_file(&p).unwrap();
        racy.push(p);
    }
    // A last one that stays: once it is reported, everything before it has been looked at.
    let stays = r.join("drop/stays");
    std::fs::copy(&original, &stays).unwrap();
    agent.wait_event("the file that stays", |e| {
        is_event(e, "installed_detected", &stays)
    });
    agent.settle_installs();
    let events = agent.events();
    for p in &racy {
        let detected = count(&events, "installed_detected", p);
        let removed = count(&events, "installed_removed", p);
        assert!(detected <= 1, "{p:?}: {events:#?}");
        assert_eq!(
            detected, removed,
            "{p:?} was deleted: reported as installed and never as removed\n{events:#?}"
        );
    }
    assert!(agent.try_status().is_some(), "the agent is still running");
}

#[test]
fn a_banned_binary_written_slowly_is_reported_with_its_final_digest() {
    // 8 MiB written in 8 pieces with pauses longer than the debounce, the file open throughout,
    // as a slow download or a busy npm does.
    let mut full = Vec::new();
    for i in 0..8u8 {
        full.extend(vec![i; 1 << 20]);
    }
    full.extend_from_slice(
        format!("interdict-{}-{:?}", std::process::id(), Instant::now()).as_bytes(),
    );
    let digest = {
        use sha2::Digest;
        sha2::Sha256::digest(&full)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    // One rule that matches by name and by digest: a look at a half-written file would report
    // the name match with the digest of a part.
    let policy = format!(
        "{}{}",
        crate::support::agent::POLICY_HEAD,
        crate::support::agent::rule(
            "slow",
            "report",
            &format!("names = [\"claude-slow\", \"claude-slow-2\"]\nsha256 = [\"{digest}\"]")
        )
    );
    let agent = Agent::start(&policy, &watch_only(r));
    let first = r.join("bin/claude-slow");
    std::fs::create_dir_all(first.parent().unwrap()).unwrap();
    slow_write(&first, &full);
    agent.wait_event("the finished file", |e| {
        is_event(e, "installed_detected", &first) && e["file"]["sha256"] == digest.as_str()
    });
    agent.settle_installs();
    let events = agent.events();
    let reported: Vec<&Value> = events
        .iter()
        .filter(|e| is_event(e, "installed_detected", &first))
        .collect();
    // In a folder created the same instant, the file's creation can come before the watch on
    // the folder: a look at it half-written is then possible, and the finished file is reported
    // again, with its final digest, once it changes.
    let last = reported.last().unwrap();
    assert_eq!(last["file"]["sha256"], digest.as_str(), "{events:#?}");
    assert_eq!(last["rule"]["selector"], "sha256");
    assert!(reported.len() <= 2, "{events:#?}");
    // In a folder already watched the file is seen being written (created, not closed): one
    // event, for the finished file.
    let second = r.join("bin/claude-slow-2");
    slow_write(&second, &full);
    agent.wait_event("the second file", |e| {
        is_event(e, "installed_detected", &second)
    });
    agent.settle_installs();
    let events = agent.events();
    assert_eq!(
        count(&events, "installed_detected", &second),
        1,
        "{events:#?}"
    );
    let e = events
        .iter()
        .find(|e| is_event(e, "installed_detected", &second))
        .unwrap();
    assert_eq!(e["file"]["sha256"], digest.as_str());
    assert_eq!(e["rule"]["selector"], "sha256");
}

/// Write `bytes` to a new executable at `path` in 1 MiB pieces, 350 ms apart (longer than the
/// test agents' debounce), the file open throughout.
fn slow_write(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o755)
        .open(path)
        .unwrap();
    for chunk in bytes.chunks(1 << 20) {
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(350));
    }
}

/// The kernel's bound on one inotify instance's queue.
fn max_queued_events() -> usize {
    std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// While the agent cannot read (stopped), more events than its inotify queue holds, so that the
/// kernel drops the rest and queues an overflow; what `meanwhile` does is lost with them.
/// (Alternating between two files, so that no event repeats the one before it, which the kernel
/// would merge.)
fn overflow_while_paused(agent: &Agent, noisy: &[PathBuf; 2], meanwhile: impl FnOnce()) {
    let _paused = Paused::new(agent.pid());
    for i in 0..max_queued_events() + 1000 {
        std::fs::set_permissions(
            &noisy[i % 2],
            std::os::unix::fs::PermissionsExt::from_mode(0o600 | (i as u32 & 0o44)),
        )
        .unwrap();
    }
    meanwhile();
}

#[test]
fn issue_10_an_inotify_overflow_makes_the_watcher_rescan_and_find_what_was_lost() {
    let (_outside, original, digest) = banned_outside("lost-in-overflow");
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let noisy = [r.join("noise/a"), r.join("noise/b")];
    for n in &noisy {
        write(n, b"noise", 0o644);
    }
    let agent = Agent::start(&hash_policy("lost", "report", &digest), &watch_only(r));
    let before = agent.wait_counter("install_rescans", 1)["counters"]["install_rescans"]
        .as_u64()
        .unwrap();
    let lost = r.join("noise/banned");
    // Its events are lost with the rest: only a rescan can find it.
    overflow_while_paused(&agent, &noisy, || {
        std::fs::copy(&original, &lost).unwrap();
    });
    let e = agent.wait_event("the banned file whose events were lost", |e| {
        is_event(e, "installed_detected", &lost)
    });
    assert_eq!(e["file"]["sha256"], digest.as_str());
    // It was the overflow's rescan (counted once finished): nothing else asks for one here.
    agent.wait_counter("install_rescans", before + 1);
}

#[test]
fn issue_10_a_periodic_rescan_finds_what_no_watch_can_see() {
    let (_outside, original, digest) = banned_outside("unseen");
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let hidden = r.join("mnt");
    std::fs::create_dir_all(&hidden).unwrap();
    let agent = Agent::start(
        &hash_policy("unseen", "report", &digest),
        &format!("{}\nrescan_interval_s = 1", watch_only(r)),
    );
    let watch = agent.status()["sensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "install_watch")
        .unwrap()
        .clone();
    assert!(
        watch["detail"]
            .as_str()
            .unwrap()
            .ends_with("rescan every 1 s"),
        "{watch:#}"
    );
    agent.wait_counter("install_rescans", 1);
    // A filesystem mounted inside a watched root after the watch was set up: inotify watches
    // the folder underneath, so nothing written on the new filesystem is ever reported to the
    // watcher. Only rescans walk into it.
    let _mnt = MountedAt::new(&hidden);
    let before = agent.counter("install_rescans");
    let inside = hidden.join("tool");
    std::fs::copy(&original, &inside).unwrap();
    let e = agent.wait_event("the file on the new mount", |e| {
        is_event(e, "installed_detected", &inside)
    });
    assert_eq!(e["file"]["sha256"], digest.as_str());
    // And the rescans keep coming, one a second.
    agent.wait_counter("install_rescans", before + 3);
}

#[test]
fn issue_10_an_install_root_that_appears_later_is_rescanned_and_then_watched() {
    let (_outside, original, digest) = banned_outside("late-root");
    let base = tempfile::tempdir().unwrap();
    // A new user's folder: not there when the agent starts.
    let late = base.path().join("home/newcomer/.local/bin");
    let policy = hash_policy("late-root", "report", &digest);
    let mut agent = Agent::start(
        &policy,
        &format!(
            "fanotify = false\nproc_connector = false\n\n[install]\nroots = [\"{}\"]\ndebounce_ms = 200",
            late.display()
        ),
    );
    let watch = agent.status()["sensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "install_watch")
        .unwrap()
        .clone();
    assert!(
        watch["detail"]
            .as_str()
            .unwrap()
            .starts_with("0 install root(s) watched"),
        "{watch:#}"
    );
    let first = late.join("claude");
    std::fs::create_dir_all(&late).unwrap();
    std::fs::copy(&original, &first).unwrap();
    backdate(&first);
    // A policy change brings a full rescan, which takes in the new root.
    std::fs::write(
        &agent.policy,
        policy.replace("version = \"1\"", "version = \"2\""),
    )
    .unwrap();
    agent.reload().expect_code(0);
    agent.wait_event("the file in the new root", |e| {
        is_event(e, "installed_detected", &first)
    });
    // From then on the new root is watched: a later arrival is reported without a rescan.
    // (The rescan that found the first file is counted when it has finished.)
    let rescans = agent.wait_counter("install_rescans", 2)["counters"]["install_rescans"]
        .as_u64()
        .unwrap();
    let second = late.join("renamed-copy");
    std::fs::copy(&original, &second).unwrap();
    agent.wait_event("a later arrival in the new root", |e| {
        is_event(e, "installed_detected", &second)
    });
    assert_eq!(
        agent.counter("install_rescans"),
        rescans,
        "{}",
        agent.stderr()
    );
    agent.stop();
    let events = agent.events();
    assert_eq!(
        count(&events, "installed_detected", &first),
        1,
        "{events:#?}"
    );
}

/// The expected fate of a banned file found installed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Quarantined,
    /// Reported only; the file stays where it is.
    Stays,
}

#[test]
fn issue_10_quarantine_happens_only_when_enforced_never_in_monitor_mode_or_before_enforce_from() {
    // (rule id, action, extra rule keys, fate in enforce mode); in monitor mode every file stays.
    let cases: &[(&str, &str, &str, Fate)] = &[
        ("q-now", "quarantine", "", Fate::Quarantined),
        (
            "q-later",
            "quarantine",
            "enforce_from = 2999-01-01",
            Fate::Stays,
        ),
        (
            "q-but-report",
            "quarantine",
            "on_install = \"report\"",
            Fate::Stays,
        ),
        (
            "block-then-q",
            "block",
            "on_install = \"quarantine\"",
            Fate::Quarantined,
        ),
        (
            "block-later-q",
            "block",
            "on_install = \"quarantine\"\nenforce_from = 2999-01-01",
            Fate::Stays,
        ),
        ("block-plain", "block", "", Fate::Stays),
        (
            "kill-then-q",
            "kill",
            "on_install = \"quarantine\"",
            Fate::Quarantined,
        ),
    ];
    for mode in ["enforce", "monitor"] {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let mut policy = crate::support::agent::POLICY_HEAD.replace("enforce", mode);
        let mut files = Vec::new();
        for (id, action, extra, fate) in cases {
            let f = r.join(format!("home/ann/.local/bin/{id}"));
            let digest = unique_copy("/bin/true", &f);
            backdate(&f);
            policy.push_str(
                &crate::support::agent::rule(id, action, &format!("sha256 = [\"{digest}\"]"))
                    .replace("[rule.match]", &format!("{extra}\n[rule.match]")),
            );
            let fate = if mode == "monitor" {
                Fate::Stays
            } else {
                *fate
            };
            files.push((*id, f, digest, fate));
        }
        let mut agent = Agent::start(&policy, &watch_only(r));
        // The files were there (and finished) before the start: the first rescan decides on all
        // of them, quarantine included, before it is counted.
        agent.wait_counter("install_rescans", 1);
        agent.stop();
        let events = agent.events();
        let state = agent.dir.path().join("state");
        let r = run(interdict()
            .args(["quarantine", "list", "--format", "json", "--state-dir"])
            .arg(&state));
        r.expect_code(0);
        let store = r.json();
        for (id, f, digest, fate) in &files {
            let what = format!("{mode} mode, rule {id}");
            assert_eq!(
                count(&events, "installed_detected", f),
                1,
                "{what}: {events:#?}"
            );
            let quarantined: Vec<&Value> = events
                .iter()
                .filter(|e| e["kind"] == "installed_quarantined" && e["rule"]["id"] == *id)
                .collect();
            let entry = store
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["rule_id"] == *id);
            match fate {
                Fate::Quarantined => {
                    assert!(!f.exists(), "{what}: still in place");
                    assert_eq!(quarantined.len(), 1, "{what}: {events:#?}");
                    assert_eq!(quarantined[0]["outcome"], "quarantined", "{what}");
                    let entry = entry.unwrap_or_else(|| panic!("{what}: not in {store:#}"));
                    assert_eq!(entry["sha256"], digest.as_str(), "{what}");
                }
                Fate::Stays => {
                    assert!(f.exists(), "{what}: moved away");
                    assert_eq!(sha256sum(f), *digest, "{what}: changed");
                    assert!(quarantined.is_empty(), "{what}: {quarantined:#?}");
                    assert!(entry.is_none(), "{what}: {store:#}");
                }
            }
        }
    }
}

#[test]
fn issue_10_a_file_a_dpkg_package_owns_is_quarantined_only_with_allow_system_files() {
    // A path dpkg really owns, on this machine's own package database. The agent runs in a
    // private mount namespace in which a tmpfs covers that folder: it sees a banned file at the
    // package-owned path, while the real folder stays untouched (and hidden from it only).
    let owned_dir = Path::new("/usr/share/doc/coreutils");
    let owned = owned_dir.join("NEWS.gz");
    let list = std::fs::read_to_string("/var/lib/dpkg/info/coreutils.list").unwrap();
    assert!(
        list.lines().any(|l| Path::new(l) == owned),
        "coreutils no longer lists {}",
        owned.display()
    );
    let real_before = sha256sum(&owned);
    for allow in [false, true] {
        let fixtures = tempfile::tempdir().unwrap();
        let sample = fixtures.path().join("banned");
        let digest = unique_copy("/bin/true", &sample);
        let policy = hash_policy("sysfile", "quarantine", &digest).replace(
            "[rule.match]",
            &format!("allow_system_files = {allow}\n[rule.match]"),
        );
        let not_owned = owned_dir.join("interdict-test-not-owned");
        let snippet = format!(
            "mount -t tmpfs -o size=16m tmpfs {d}\nmountpoint -q {d}\ncp {s} {o}\ncp {s} {n}\ntouch -d '1 hour ago' {o} {n}",
            d = owned_dir.display(),
            s = sample.display(),
            o = owned.display(),
            n = not_owned.display(),
        );
        let mut agent = Agent::with(crate::support::agent::Setup {
            policy: &policy,
            exec: &format!(
                "fanotify = false\nproc_connector = false\n\n[install]\nroots = [\"{}\"]\ndebounce_ms = 200",
                owned_dir.display()
            ),
            mount_ns: Some(&snippet),
            ..Default::default()
        });
        let seen_by_agent = |p: &Path| {
            PathBuf::from(format!("/proc/{}/root", agent.pid())).join(p.strip_prefix("/").unwrap())
        };
        agent.wait_counter("install_rescans", 1);
        let owned_left = seen_by_agent(&owned).exists();
        let not_owned_left = seen_by_agent(&not_owned).exists();
        agent.stop();
        let events = agent.events();
        let what = format!("allow_system_files = {allow}");
        let outcome = |p: &Path| {
            events
                .iter()
                .filter(|e| e["kind"] == "installed_quarantined")
                .filter(|e| {
                    e["file"]["path"] == p.to_string_lossy().as_ref()
                        || e["message"]
                            .as_str()
                            .is_some_and(|m| m.starts_with(&format!("{}:", p.display())))
                })
                .map(|e| e["outcome"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        // A file no package owns is quarantined either way.
        assert!(!not_owned_left, "{what}: {events:#?}");
        assert_eq!(outcome(&not_owned), ["quarantined"], "{what}: {events:#?}");
        if allow {
            assert!(!owned_left, "{what}: {events:#?}");
            assert_eq!(outcome(&owned), ["quarantined"], "{what}: {events:#?}");
        } else {
            assert!(owned_left, "{what}: {events:#?}");
            assert_eq!(
                outcome(&owned),
                ["quarantine_failed"],
                "{what}: {events:#?}"
            );
            let failed = events
                .iter()
                .find(|e| e["outcome"] == "quarantine_failed")
                .unwrap();
            assert!(
                failed["message"]
                    .as_str()
                    .unwrap()
                    .contains("owned by the system package manager"),
                "{failed:#}"
            );
        }
        // The host's own file was never touched.
        assert_eq!(sha256sum(&owned), real_before);
    }
}

#[test]
fn issue_10_a_rescan_while_a_reported_file_looks_busy_does_not_report_it_again() {
    let (_outside, original, digest) = banned_outside("busy");
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let installed = r.join("bin/tool");
    write(&installed, &std::fs::read(&original).unwrap(), 0o755);
    backdate(&installed);
    // A long quiet period: a file touched now counts as still being written for 20 s.
    let mut agent = Agent::start(
        &hash_policy("busy", "report", &digest),
        &format!(
            "fanotify = false\nproc_connector = false\n\n[install]\nroots = [\"{}\"]\ndebounce_ms = 20000",
            r.display()
        ),
    );
    agent.wait_event("the file found at start-up", |e| {
        is_event(e, "installed_detected", &installed)
    });
    // Touched (same bytes): it looks busy to the rescan that follows a policy change.
    std::fs::File::options()
        .write(true)
        .open(&installed)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    agent.settle_installs();
    agent.stop();
    let events = agent.events();
    assert_eq!(
        count(&events, "installed_detected", &installed),
        1,
        "{events:#?}"
    );
}

#[test]
fn issue_10_a_symlink_is_reported_after_one_quiet_period_not_held_as_if_being_written() {
    // A symlink is whole the moment it exists: nothing writes to it, nothing closes it. With a
    // quiet period of 1 s, holding it back as "being written" for the 60 rounds a file gets
    // would take a minute.
    let (_outside, original, digest) = banned_outside("linked");
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("bin")).unwrap();
    let agent = Agent::start(
        &hash_policy("linked", "report", &digest),
        &format!(
            "fanotify = false\nproc_connector = false\n\n[install]\nroots = [\"{}\"]\ndebounce_ms = 1000",
            r.display()
        ),
    );
    let link = r.join("bin/claude");
    std::os::unix::fs::symlink(&original, &link).unwrap();
    let e = agent.wait_event("the symlink", |e| is_event(e, "installed_detected", &link));
    assert_eq!(e["file"]["sha256"], digest.as_str());
}

/// Wait until a folder's last change is older than the walk's "racy" window (2 s): a folder read
/// sooner is read again by every walk until it is not, whatever changed in it, which would let
/// the tests below pass for the wrong reason. (A precondition on file times, not a wait for the
/// agent.)
fn older_than_racy_window(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir).unwrap();
    let ctime = std::time::UNIX_EPOCH + Duration::new(m.ctime() as u64, m.ctime_nsec() as u32);
    while std::time::SystemTime::now()
        .duration_since(ctime)
        .unwrap_or_default()
        < Duration::from_millis(2100)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Replace a file's bytes in place (same inode; its folder's times do not change).
fn rewrite_in_place(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    let dir = path.parent().unwrap();
    let before = std::fs::metadata(dir).unwrap();
    let ino = std::fs::metadata(path).unwrap().ino();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
    drop(f);
    let after = std::fs::metadata(dir).unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().ino(), ino);
    assert_eq!(
        (before.mtime(), before.mtime_nsec(), before.ctime_nsec()),
        (after.mtime(), after.mtime_nsec(), after.ctime_nsec()),
        "the folder must not change"
    );
}

#[test]
fn issue_14_after_a_restart_a_quick_rescan_finds_new_installs_and_a_full_one_what_changed_in_place()
{
    let (_outside, original, digest) = banned_outside("restart-quick");
    let banned = std::fs::read(&original).unwrap();
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for i in 0..10 {
        write(
            &r.join(format!("d{i}/clean")),
            format!("clean {i}").as_bytes(),
            0o755,
        );
    }
    let victim = r.join("d3/tool");
    write(&victim, b"a clean tool", 0o755);
    older_than_racy_window(&r.join("d3"));
    let mut agent = Agent::start(&hash_policy("rq", "report", &digest), &watch_only(r));
    let first = agent.wait_counter("install_rescans", 1);
    assert_eq!(first["counters"]["install_quick_rescans"], 0, "{first:#}");
    agent.stop();
    // While the agent is stopped: a new install in a new folder, and a clean program rewritten
    // in place with the banned bytes (no folder changes: only a full pass can see it).
    let new = r.join("new/claude");
    std::fs::create_dir_all(new.parent().unwrap()).unwrap();
    std::fs::copy(&original, &new).unwrap();
    rewrite_in_place(&victim, &banned);
    agent.restart();
    let s = agent.wait_counter("install_rescans", 2);
    assert_eq!(
        s["counters"]["install_quick_rescans"], 1,
        "the restart's first rescan is a quick one, then a full one: {s:#}"
    );
    assert!(s["last_quick_rescan_us"].as_u64().unwrap() > 0, "{s:#}");
    for p in [&new, &victim] {
        let e = agent.wait_event("each change made while stopped", |e| {
            is_event(e, "installed_detected", p)
        });
        assert_eq!(e["file"]["sha256"], digest.as_str());
    }
    agent.settle_installs();
    agent.stop();
    let events = agent.events();
    for p in [&new, &victim] {
        assert_eq!(
            count(&events, "installed_detected", p),
            1,
            "{p:?}: {events:#?}"
        );
    }
}

#[test]
fn issue_14_quick_periodic_rescans_keep_what_the_watcher_reported_in_place() {
    let (_outside, original, digest) = banned_outside("periodic-quick");
    let banned = std::fs::read(&original).unwrap();
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let victim = r.join("bin/tool");
    write(&victim, b"a clean tool", 0o755);
    older_than_racy_window(&r.join("bin"));
    let mut agent = Agent::start(
        &hash_policy("pq", "report", &digest),
        &format!("{}\nrescan_interval_s = 1", watch_only(r)),
    );
    agent.wait_counter("install_rescans", 1);
    // Rewritten in place while running: the watcher reports it.
    rewrite_in_place(&victim, &banned);
    agent.wait_event("the program rewritten in place", |e| {
        is_event(e, "installed_detected", &victim)
    });
    // Quick rescans follow (its folder unchanged): they neither report it gone nor again.
    let quick = agent.counter("install_quick_rescans");
    agent.wait_counter("install_quick_rescans", quick + 3);
    let events = agent.events();
    assert_eq!(
        count(&events, "installed_removed", &victim),
        0,
        "{events:#?}"
    );
    // And rewritten back: reported gone once, and not found again by the quick rescans.
    rewrite_in_place(&victim, b"a clean tool again");
    agent.wait_event("the program made clean again", |e| {
        is_event(e, "installed_removed", &victim)
    });
    let quick = agent.counter("install_quick_rescans");
    agent.wait_counter("install_quick_rescans", quick + 3);
    agent.stop();
    let events = agent.events();
    assert_eq!(
        count(&events, "installed_detected", &victim),
        1,
        "{events:#?}"
    );
    assert_eq!(
        count(&events, "installed_removed", &victim),
        1,
        "{events:#?}"
    );
}

#[test]
fn issue_14_after_lost_events_the_rescan_is_full_and_finds_a_program_rewritten_in_place() {
    let (_outside, original, digest) = banned_outside("lost-in-place");
    let banned = std::fs::read(&original).unwrap();
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let noisy = [r.join("noise/a"), r.join("noise/b")];
    for n in &noisy {
        write(n, b"noise", 0o644);
    }
    let victim = r.join("noise/tool");
    write(&victim, b"a clean tool", 0o755);
    older_than_racy_window(&r.join("noise"));
    let agent = Agent::start(
        &hash_policy("lost", "report", &digest),
        &format!("{}\nrescan_interval_s = 1", watch_only(r)),
    );
    agent.wait_counter("install_rescans", 1);
    overflow_while_paused(&agent, &noisy, || rewrite_in_place(&victim, &banned));
    let e = agent.wait_event(
        "the program rewritten in place while events were lost",
        |e| is_event(e, "installed_detected", &victim),
    );
    assert_eq!(e["file"]["sha256"], digest.as_str());
}

#[test]
fn issue_14_quick_rescans_look_at_every_file_on_a_filesystem_mounted_inside_a_root() {
    let (_outside, original, digest) = banned_outside("mounted-in-place");
    let banned = std::fs::read(&original).unwrap();
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let hidden = r.join("mnt");
    std::fs::create_dir_all(&hidden).unwrap();
    let agent = Agent::start(
        &hash_policy("mip", "report", &digest),
        &format!("{}\nrescan_interval_s = 1", watch_only(r)),
    );
    agent.wait_counter("install_rescans", 1);
    // Mounted after the watch was set up: the watcher sees nothing written on it.
    let _mnt = MountedAt::new(&hidden);
    let tool = hidden.join("tool");
    write(&tool, b"a clean tool", 0o755);
    older_than_racy_window(&hidden);
    // Rescans have read the new filesystem, and found it unchanged, since.
    let quick = agent.counter("install_quick_rescans");
    agent.wait_counter("install_quick_rescans", quick + 2);
    rewrite_in_place(&tool, &banned);
    let e = agent.wait_event(
        "the program rewritten in place on the new filesystem",
        |e| is_event(e, "installed_detected", &tool),
    );
    assert_eq!(e["file"]["sha256"], digest.as_str());
    // Found by a quick rescan: the start-up's was the only full one (the next is due in a day).
    let s = agent.status();
    let c = &s["counters"];
    assert_eq!(
        c["install_rescans"].as_u64().unwrap() - c["install_quick_rescans"].as_u64().unwrap(),
        1,
        "{s:#}"
    );
}

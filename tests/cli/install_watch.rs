//! The install watcher (issue 4) against real inotify, with the exec sensors off: evasion by
//! copy, rename, hard link and symlink; a real `npm install -g`; a 100,000-file tree; symlink
//! loops, unreadable directories, names that are not UTF-8, and files deleted as they land.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::agent::{hash_policy, unique_copy, Agent};
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
    let agent = Agent::start(&hash_policy("evade", "report", &digest), &watch_only(r));

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
    std::thread::sleep(Duration::from_millis(500));
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
    std::thread::sleep(Duration::from_secs(2));
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
    std::thread::sleep(Duration::from_millis(1500));
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
    std::thread::sleep(Duration::from_secs(2));
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
    std::thread::sleep(Duration::from_secs(2));
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

//! The Debian packages (issue 16), checked with Debian's own tools: `dpkg-deb` reads the control
//! data and the file list, the real `dpkg` installs, upgrades, removes and purges the package in
//! a scratch root (`dpkg --root=DIR --force-script-chrootless`: the maintainer scripts run with
//! `DPKG_ROOT=DIR` and must touch nothing outside it), and `systemd-analyze verify` checks the
//! unit as installed there. The host's own /etc, /var and systemd state are never touched: every
//! test checks that at the end.
//!
//! The packages come from `$INTERDICT_DEBS` when set (`scripts/test` builds them first with
//! `cargo deb`), else the test builds them with `cargo deb -p PACKAGE`.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::support::*;

/// Run a command, panicking with its whole output when it fails.
fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn arch() -> String {
    ok(Command::new("dpkg").arg("--print-architecture"))
        .trim()
        .to_string()
}

/// The `.deb` of `package` (`interdict` or `interdict-collector`).
pub fn deb(package: &str) -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let version = env!("CARGO_PKG_VERSION");
    let name = format!("{package}_{version}-1_{}.deb", arch());
    if let Some(dir) = std::env::var_os("INTERDICT_DEBS") {
        let p = PathBuf::from(dir).join(&name);
        assert!(
            p.exists(),
            "{} is missing: INTERDICT_DEBS names a folder without it (build it: cargo deb -p {package})",
            p.display()
        );
        return p;
    }
    let out = repo().join("target/debian-test");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    ok(Command::new(cargo)
        .current_dir(repo())
        .args(["deb", "-p", package, "--output"])
        .arg(&out));
    out.join(name)
}

/// One entry of `dpkg-deb --contents`: mode string, owner/group, path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    mode: String,
    owner: String,
    link: Option<String>,
}

fn contents(deb: &Path) -> BTreeMap<String, Entry> {
    let text = ok(Command::new("dpkg-deb").arg("--contents").arg(deb));
    let mut out = BTreeMap::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        // mode owner size date time path [-> target]
        let path = f[5]
            .trim_start_matches('.')
            .trim_end_matches('/')
            .to_string();
        let link = (f.len() > 7 && f[6] == "->").then(|| f[7].to_string());
        out.insert(
            if path.is_empty() { "/".into() } else { path },
            Entry {
                mode: f[0].to_string(),
                owner: f[1].to_string(),
                link,
            },
        );
    }
    out
}

/// Nothing in the package but `files`, the separate debug symbols of its binary
/// (`/usr/lib/debug/.build-id/XX/ID.debug`, 0644) and the folders that hold them, all root's,
/// no links.
fn only_these(c: &BTreeMap<String, Entry>, files: &[(&str, &str)]) {
    let debug: Vec<&String> = c
        .iter()
        .filter(|(p, e)| {
            p.starts_with("/usr/lib/debug/.build-id/")
                && p.ends_with(".debug")
                && e.mode == "-rw-r--r--"
        })
        .map(|(p, _)| p)
        .collect();
    assert_eq!(debug.len(), 1, "one debug-symbols file: {c:#?}");
    for (path, e) in c {
        let under = |f: &str| path == "/" || f.starts_with(&format!("{path}/"));
        let expected = files.iter().any(|(p, _)| p == path)
            || debug.contains(&path)
            || (e.mode.starts_with('d')
                && (files.iter().any(|(p, _)| under(p)) || debug.iter().any(|p| under(p))));
        assert!(expected, "unexpected {path} ({e:?}) in the package");
        assert_eq!(e.owner, "0/0", "{path}");
        assert!(e.link.is_none(), "{path} is a link");
    }
}

/// A scratch root with an empty dpkg database.
pub struct Root {
    pub dir: tempfile::TempDir,
}

impl Root {
    pub fn new() -> Root {
        let dir = tempfile::Builder::new()
            .prefix("interdict-dpkg-root-")
            .tempdir()
            .unwrap();
        let db = dir.path().join("var/lib/dpkg");
        for d in ["info", "updates", "triggers"] {
            std::fs::create_dir_all(db.join(d)).unwrap();
        }
        std::fs::write(db.join("status"), "").unwrap();
        std::fs::write(db.join("available"), "").unwrap();
        Root { dir }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p.trim_start_matches('/'))
    }

    /// `dpkg --root=ROOT --force-script-chrootless ...` (dependencies on the host's libraries
    /// are not in the scratch database: --force-depends). stdin is empty: a conffile prompt
    /// fails the run instead of waiting.
    pub fn dpkg(&self, args: &[&str]) -> String {
        ok(Command::new("dpkg")
            .arg(format!("--root={}", self.dir.path().display()))
            .arg(format!("--log={}", self.path("dpkg.log").display()))
            .args(["--force-script-chrootless", "--force-depends"])
            .args(args)
            .stdin(std::process::Stdio::null()))
    }

    pub fn status(&self, package: &str) -> String {
        let out = Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                self.path("var/lib/dpkg").display()
            ))
            .args(["-W", "-f=${Status} ${Version}", package])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `(mode, uid, gid)` of a path in the root (not following a last symlink).
    pub fn stat(&self, p: &str) -> Option<(u32, u32, u32)> {
        std::fs::symlink_metadata(self.path(p))
            .ok()
            .map(|m| (m.permissions().mode() & 0o7777, m.uid(), m.gid()))
    }

    /// `systemd-analyze verify` of `unit` as installed in the root, with the host's targets
    /// copied in (the dependencies the unit names). Passes only without any warning.
    pub fn verify_unit(&self, unit: &str) {
        let sys = self.path("lib/systemd/system");
        for e in std::fs::read_dir("/lib/systemd/system").unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.ends_with(".target") || n == "systemd-user-sessions.service" {
                let to = sys.join(&n);
                if !to.exists() {
                    std::fs::copy(e.path(), to).unwrap();
                }
            }
        }
        let out = Command::new("systemd-analyze")
            .arg(format!("--root={}", self.dir.path().display()))
            .args(["verify", unit])
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
            "systemd-analyze verify {unit}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Host paths a package test must never create.
const HOST_PATHS: &[&str] = &[
    "/etc/interdict",
    "/etc/interdict-collector",
    "/lib/systemd/system/interdict.service",
    "/lib/systemd/system/interdict-collector.service",
    "/etc/systemd/system/multi-user.target.wants/interdict.service",
    "/etc/systemd/system/multi-user.target.wants/interdict-collector.service",
    "/var/lib/systemd/deb-systemd-helper-enabled/interdict.service.dsh-also",
    "/var/lib/systemd/deb-systemd-helper-enabled/interdict-collector.service.dsh-also",
    "/var/log/interdict",
    "/var/lib/interdict-collector",
    "/etc/logrotate.d/interdict",
    "/usr/lib/sysusers.d/interdict-collector.conf",
];

/// True when the host's own account files name the collector's user.
fn host_has_collector_user() -> bool {
    ["/etc/passwd", "/etc/group"].iter().any(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("interdict-collector:"))
    })
}

pub fn host_untouched(before: &[bool]) {
    assert_eq!(
        host_has_collector_user(),
        before[HOST_PATHS.len()],
        "the package test changed the host's /etc/passwd or /etc/group"
    );
    for (p, was) in HOST_PATHS.iter().zip(before) {
        assert_eq!(
            Path::new(p).exists(),
            *was,
            "the package test changed the host's {p}"
        );
    }
}

pub fn host_before() -> Vec<bool> {
    let mut v: Vec<bool> = HOST_PATHS.iter().map(|p| Path::new(p).exists()).collect();
    v.push(host_has_collector_user());
    v
}

#[test]
fn issue_16_the_agent_package_holds_every_file_with_its_mode_and_conffiles() {
    let deb = deb("interdict");
    // Control data.
    let field = |f: &str| {
        ok(Command::new("dpkg-deb").arg("--field").arg(&deb).arg(f))
            .trim()
            .to_string()
    };
    assert_eq!(field("Recommends"), "logrotate");
    check_fields(&deb, "interdict", &["init-system-helpers"]);
    let ctl = tempfile::tempdir().unwrap();
    ok(Command::new("dpkg-deb")
        .arg("--control")
        .arg(&deb)
        .arg(ctl.path()));
    assert_eq!(
        std::fs::read_to_string(ctl.path().join("conffiles")).unwrap(),
        "/etc/interdict/agent.toml\n/etc/interdict/policy.toml\n/etc/interdict/hashes/claude-code.sha256\n/etc/interdict/hashes/codex.sha256\n/etc/logrotate.d/interdict\n"
    );
    for s in ["postinst", "prerm", "postrm"] {
        let p = ctl.path().join(s);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o755,
            "{s}"
        );
        assert_eq!(
            std::fs::read(&p).unwrap(),
            std::fs::read(repo().join("packaging/deb/interdict").join(s)).unwrap(),
            "{s} is the repository's"
        );
    }
    assert!(!ctl.path().join("preinst").exists());

    // Every file, with its mode and owner; nothing else.
    let c = contents(&deb);
    let files: Vec<(&str, &str)> = vec![
        ("/usr/bin/interdict", "-rwxr-xr-x"),
        ("/lib/systemd/system/interdict.service", "-rw-r--r--"),
        ("/etc/interdict/agent.toml", "-rw-------"),
        ("/etc/interdict/policy.toml", "-rw-r--r--"),
        ("/etc/interdict/hashes/claude-code.sha256", "-rw-r--r--"),
        ("/etc/interdict/hashes/codex.sha256", "-rw-r--r--"),
        ("/etc/logrotate.d/interdict", "-rw-r--r--"),
        ("/usr/share/doc/interdict/README.md", "-rw-r--r--"),
        ("/usr/share/doc/interdict/copyright", "-rw-r--r--"),
    ];
    for (path, mode) in &files {
        let e = c
            .get(*path)
            .unwrap_or_else(|| panic!("{path} missing from the package: {c:#?}"));
        assert_eq!(
            (e.mode.as_str(), e.owner.as_str()),
            (*mode, "0/0"),
            "{path}"
        );
    }
    only_these(&c, &files);

    // The files are the repository's, and they work: the shipped configuration and policy are
    // valid as installed (the policy finds its hash lists beside it).
    let x = tempfile::tempdir().unwrap();
    ok(Command::new("dpkg-deb")
        .arg("--extract")
        .arg(&deb)
        .arg(x.path()));
    for (installed, source) in [
        (
            "etc/interdict/policy.toml",
            "policies/ai-coding-agents.toml",
        ),
        (
            "etc/interdict/hashes/claude-code.sha256",
            "policies/hashes/claude-code.sha256",
        ),
        (
            "etc/interdict/hashes/codex.sha256",
            "policies/hashes/codex.sha256",
        ),
        (
            "etc/interdict/agent.toml",
            "packaging/etc/interdict/agent.toml",
        ),
        (
            "lib/systemd/system/interdict.service",
            "packaging/systemd/interdict.service",
        ),
        (
            "etc/logrotate.d/interdict",
            "packaging/etc/logrotate.d/interdict",
        ),
    ] {
        assert_eq!(
            std::fs::read(x.path().join(installed)).unwrap(),
            std::fs::read(repo().join(source)).unwrap(),
            "{installed}"
        );
    }
    let bin = x.path().join("usr/bin/interdict");
    assert_eq!(
        ok(Command::new(&bin).arg("--version")).trim(),
        format!("interdict {}", env!("CARGO_PKG_VERSION"))
    );
    let policy = x.path().join("etc/interdict/policy.toml");
    let checked = ok(Command::new(&bin).args(["policy", "check"]).arg(&policy));
    assert!(
        checked.contains(": ok: policy ai-coding-agents "),
        "{checked}"
    );
    let config = x.path().join("etc/interdict/agent.toml");
    let out = Command::new(&bin)
        .args(["doctor", "--policy"])
        .arg(&policy)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l == format!("ok    config    {}: valid", config.display())),
        "{text}"
    );
    // The shipped configuration is exactly the agent's defaults (every key commented out).
    let parsed =
        interdict::agent::config::parse("agent.toml", &std::fs::read_to_string(&config).unwrap())
            .unwrap();
    assert_eq!(parsed, interdict::agent::config::AgentConfig::default());
    // logrotate reads the rule without complaint.
    let out = Command::new("logrotate")
        .arg("--debug")
        .arg(x.path().join("etc/logrotate.d/interdict"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("error"), "{err}");
}

#[test]
fn issue_16_the_agent_package_installs_upgrades_removes_and_purges_with_real_dpkg() {
    let before = host_before();
    let deb = deb("interdict");
    let root = Root::new();
    root.dpkg(&["--install", deb.to_str().unwrap()]);
    assert_eq!(
        root.status("interdict"),
        format!("install ok installed {}-1", env!("CARGO_PKG_VERSION"))
    );
    // Paths, modes, owners as installed.
    for (p, mode) in [
        ("/usr/bin/interdict", 0o755),
        ("/lib/systemd/system/interdict.service", 0o644),
        ("/etc/interdict", 0o755),
        ("/etc/interdict/agent.toml", 0o600),
        ("/etc/interdict/policy.toml", 0o644),
        ("/etc/interdict/hashes/claude-code.sha256", 0o644),
        ("/etc/logrotate.d/interdict", 0o644),
        ("/var/lib/interdict", 0o700),
        ("/var/log/interdict", 0o750),
    ] {
        assert_eq!(root.stat(p), Some((mode, 0, 0)), "{p}");
    }
    // Enabled (as `systemctl enable` would), not started (no systemd in a scratch root).
    assert_eq!(
        std::fs::read_link(
            root.path("etc/systemd/system/multi-user.target.wants/interdict.service")
        )
        .unwrap(),
        PathBuf::from("/lib/systemd/system/interdict.service")
    );
    // dpkg tracks the conffiles.
    let conffiles = ok(Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.path("var/lib/dpkg").display()
        ))
        .args(["-W", "-f=${Conffiles}", "interdict"]));
    let names: Vec<&str> = conffiles
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        names,
        [
            "/etc/interdict/agent.toml",
            "/etc/interdict/policy.toml",
            "/etc/interdict/hashes/claude-code.sha256",
            "/etc/interdict/hashes/codex.sha256",
            "/etc/logrotate.d/interdict"
        ]
    );
    root.verify_unit("interdict.service");

    // The admin edits the configuration; the agent has state and logs.
    let admin_line = "\n# edited by IT: admin_group below\n";
    let mut cfg = std::fs::read_to_string(root.path("etc/interdict/agent.toml")).unwrap();
    cfg.push_str(admin_line);
    std::fs::write(root.path("etc/interdict/agent.toml"), &cfg).unwrap();
    std::fs::write(root.path("var/lib/interdict/learned.json"), "{}").unwrap();
    std::fs::write(root.path("var/log/interdict/events.jsonl"), "{}\n").unwrap();
    // Someone loosened the state folder: configure puts it back.
    std::fs::set_permissions(
        root.path("var/lib/interdict"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();

    // Upgrade to a newer build whose shipped policy changed (repacked from this one).
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    ok(Command::new("dpkg-deb")
        .arg("--raw-extract")
        .arg(&deb)
        .arg(&tree));
    let control = tree.join("DEBIAN/control");
    let next = format!("{}-2", env!("CARGO_PKG_VERSION"));
    let text = std::fs::read_to_string(&control).unwrap().replace(
        &format!("Version: {}-1", env!("CARGO_PKG_VERSION")),
        &format!("Version: {next}"),
    );
    std::fs::write(&control, text).unwrap();
    let new_policy = format!(
        "{}\n# a newer pack\n",
        std::fs::read_to_string(tree.join("etc/interdict/policy.toml")).unwrap()
    );
    std::fs::write(tree.join("etc/interdict/policy.toml"), &new_policy).unwrap();
    let newer = work.path().join("newer.deb");
    ok(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&tree)
        .arg(&newer));
    root.dpkg(&["--install", newer.to_str().unwrap()]);
    assert_eq!(
        root.status("interdict"),
        format!("install ok installed {next}")
    );
    assert_eq!(
        std::fs::read_to_string(root.path("etc/interdict/agent.toml")).unwrap(),
        cfg,
        "the admin's edit survives the upgrade"
    );
    assert_eq!(
        std::fs::read_to_string(root.path("etc/interdict/policy.toml")).unwrap(),
        new_policy,
        "an unedited conffile follows the package"
    );
    assert!(root.path("var/lib/interdict/learned.json").exists());
    assert!(root.path("var/log/interdict/events.jsonl").exists());
    assert_eq!(root.stat("/var/lib/interdict"), Some((0o700, 0, 0)));

    // Remove: the program and the unit go; configuration, state and logs stay.
    root.dpkg(&["--remove", "interdict"]);
    assert_eq!(
        root.status("interdict"),
        format!("deinstall ok config-files {next}")
    );
    assert!(!root.path("usr/bin/interdict").exists());
    assert!(!root.path("lib/systemd/system/interdict.service").exists());
    assert_eq!(
        std::fs::read_to_string(root.path("etc/interdict/agent.toml")).unwrap(),
        cfg
    );
    assert!(root.path("var/lib/interdict/learned.json").exists());
    assert!(root.path("var/log/interdict/events.jsonl").exists());

    // Purge: everything goes.
    root.dpkg(&["--purge", "interdict"]);
    assert_eq!(root.status("interdict"), "");
    for gone in [
        "etc/interdict",
        "var/lib/interdict",
        "var/log/interdict",
        "etc/logrotate.d/interdict",
        "etc/systemd/system/multi-user.target.wants/interdict.service",
        "etc/systemd/system/interdict.service",
        "var/lib/systemd/deb-systemd-helper-enabled/interdict.service.dsh-also",
    ] {
        assert!(
            std::fs::symlink_metadata(root.path(gone)).is_err(),
            "{gone} left after purge"
        );
    }
    host_untouched(&before);
}

/// The control fields every package shares.
fn check_fields(deb: &Path, package: &str, scripts_need: &[&str]) {
    let field = |f: &str| {
        ok(Command::new("dpkg-deb").arg("--field").arg(deb).arg(f))
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), package);
    assert_eq!(field("Version"), format!("{}-1", env!("CARGO_PKG_VERSION")));
    assert_eq!(field("Architecture"), arch());
    assert_eq!(field("Section"), "admin");
    // The C library (found by cargo-deb, with the version the binary needs), and what the
    // maintainer scripts run.
    let depends = field("Depends");
    let mut deps: Vec<&str> = depends.split(", ").collect();
    let libc = deps.iter().position(|d| d.starts_with("libc6 (>= "));
    assert!(libc.is_some(), "{depends}");
    deps.remove(libc.unwrap());
    deps.sort();
    let mut want = scripts_need.to_vec();
    want.sort();
    assert_eq!(deps, want, "{depends}");
}

#[test]
fn issue_16_the_collector_package_holds_every_file_with_its_mode_and_conffiles() {
    let deb = deb("interdict-collector");
    check_fields(
        &deb,
        "interdict-collector",
        &["init-system-helpers", "systemd | adduser"],
    );
    let ctl = tempfile::tempdir().unwrap();
    ok(Command::new("dpkg-deb")
        .arg("--control")
        .arg(&deb)
        .arg(ctl.path()));
    assert_eq!(
        std::fs::read_to_string(ctl.path().join("conffiles")).unwrap(),
        "/etc/interdict-collector/collector.toml\n"
    );
    for s in ["postinst", "prerm", "postrm"] {
        let p = ctl.path().join(s);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o755,
            "{s}"
        );
        assert_eq!(
            std::fs::read(&p).unwrap(),
            std::fs::read(repo().join("packaging/deb/interdict-collector").join(s)).unwrap(),
            "{s} is the repository's"
        );
    }
    assert!(!ctl.path().join("preinst").exists());

    let c = contents(&deb);
    let files: Vec<(&str, &str)> = vec![
        ("/usr/bin/interdict-collector", "-rwxr-xr-x"),
        (
            "/lib/systemd/system/interdict-collector.service",
            "-rw-r--r--",
        ),
        ("/etc/interdict-collector/collector.toml", "-rw-r-----"),
        ("/usr/lib/sysusers.d/interdict-collector.conf", "-rw-r--r--"),
        ("/usr/share/doc/interdict-collector/README.md", "-rw-r--r--"),
        ("/usr/share/doc/interdict-collector/copyright", "-rw-r--r--"),
    ];
    for (path, mode) in &files {
        let e = c
            .get(*path)
            .unwrap_or_else(|| panic!("{path} missing from the package: {c:#?}"));
        assert_eq!(
            (e.mode.as_str(), e.owner.as_str()),
            (*mode, "0/0"),
            "{path}"
        );
    }
    only_these(&c, &files);

    let x = tempfile::tempdir().unwrap();
    ok(Command::new("dpkg-deb")
        .arg("--extract")
        .arg(&deb)
        .arg(x.path()));
    for (installed, source) in [
        (
            "etc/interdict-collector/collector.toml",
            "packaging/etc/interdict-collector/collector.toml",
        ),
        (
            "lib/systemd/system/interdict-collector.service",
            "packaging/systemd/interdict-collector.service",
        ),
        (
            "usr/lib/sysusers.d/interdict-collector.conf",
            "packaging/sysusers.d/interdict-collector.conf",
        ),
    ] {
        assert_eq!(
            std::fs::read(x.path().join(installed)).unwrap(),
            std::fs::read(repo().join(source)).unwrap(),
            "{installed}"
        );
    }
    let bin = x.path().join("usr/bin/interdict-collector");
    assert_eq!(
        ok(Command::new(&bin).arg("--version")).trim(),
        format!("interdict-collector {}", env!("CARGO_PKG_VERSION"))
    );
    // The shipped configuration is exactly the collector's defaults (every key commented out),
    // and the installed binary reads it (`key` makes the signing key in a folder of the test's).
    let config = x.path().join("etc/interdict-collector/collector.toml");
    let parsed = interdict_collector::config::parse(
        "collector.toml",
        &std::fs::read_to_string(&config).unwrap(),
    )
    .unwrap();
    assert_eq!(parsed, interdict_collector::Config::default());
    let db = x.path().join("state/collector.db");
    let key = ok(Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .arg("--db")
        .arg(&db)
        .arg("key"));
    assert_eq!(key.trim().len(), 64, "{key}");
    // The unit runs the binary as the package's system user, never root, with no capability.
    let unit = std::fs::read_to_string(
        x.path()
            .join("lib/systemd/system/interdict-collector.service"),
    )
    .unwrap();
    for line in [
        "User=interdict-collector",
        "CapabilityBoundingSet=",
        "NoNewPrivileges=yes",
        "ExecStart=/usr/bin/interdict-collector --config /etc/interdict-collector/collector.toml serve",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing from the unit:\n{unit}");
    }
}

#[test]
fn issue_16_the_collector_package_installs_upgrades_removes_and_purges_with_real_dpkg() {
    let before = host_before();
    let deb = deb("interdict-collector");
    let root = Root::new();
    // A root as Debian makes one: the account files exist (base-passwd), with other system
    // users in them.
    std::fs::create_dir_all(root.path("etc")).unwrap();
    std::fs::write(
        root.path("etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n",
    )
    .unwrap();
    std::fs::write(root.path("etc/group"), "root:x:0:\ndaemon:x:1:\n").unwrap();
    root.dpkg(&["--install", deb.to_str().unwrap()]);
    assert_eq!(
        root.status("interdict-collector"),
        format!("install ok installed {}-1", env!("CARGO_PKG_VERSION"))
    );
    // The system user: its own group, no shell, home = the state folder, a system uid.
    let passwd = std::fs::read_to_string(root.path("etc/passwd")).unwrap();
    let user: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("interdict-collector:"))
        .unwrap_or_else(|| panic!("no interdict-collector user:\n{passwd}"))
        .split(':')
        .collect();
    let uid: u32 = user[2].parse().unwrap();
    let gid: u32 = user[3].parse().unwrap();
    assert!((1..1000).contains(&uid), "a system uid: {user:?}");
    assert_eq!(user[5], "/var/lib/interdict-collector", "{user:?}");
    assert!(user[6].ends_with("nologin"), "{user:?}");
    let group = std::fs::read_to_string(root.path("etc/group")).unwrap();
    assert!(
        group
            .lines()
            .any(|l| l.starts_with(&format!("interdict-collector:x:{gid}:"))),
        "{group}"
    );
    assert!(
        passwd.starts_with("root:x:0:0:"),
        "the root's own users are kept:\n{passwd}"
    );
    for (p, mode, owner) in [
        ("/usr/bin/interdict-collector", 0o755, (0, 0)),
        (
            "/lib/systemd/system/interdict-collector.service",
            0o644,
            (0, 0),
        ),
        (
            "/usr/lib/sysusers.d/interdict-collector.conf",
            0o644,
            (0, 0),
        ),
        ("/etc/interdict-collector", 0o750, (0, gid)),
        ("/etc/interdict-collector/collector.toml", 0o640, (0, gid)),
        ("/var/lib/interdict-collector", 0o700, (uid, gid)),
    ] {
        assert_eq!(root.stat(p), Some((mode, owner.0, owner.1)), "{p}");
    }
    assert_eq!(
        std::fs::read_link(
            root.path("etc/systemd/system/multi-user.target.wants/interdict-collector.service")
        )
        .unwrap(),
        PathBuf::from("/lib/systemd/system/interdict-collector.service")
    );
    // The unit names the user: systemd-analyze verify resolves it in the root's account files.
    root.verify_unit("interdict-collector.service");

    // The admin edits the configuration; the collector has a database.
    let mut cfg =
        std::fs::read_to_string(root.path("etc/interdict-collector/collector.toml")).unwrap();
    cfg.push_str("\n# edited by IT\n");
    std::fs::write(root.path("etc/interdict-collector/collector.toml"), &cfg).unwrap();
    std::fs::write(root.path("var/lib/interdict-collector/collector.db"), "db").unwrap();

    // Reinstall of the same version (an upgrade as dpkg runs it): the user is not made twice,
    // the edit and the database stay.
    root.dpkg(&["--install", deb.to_str().unwrap()]);
    let again = std::fs::read_to_string(root.path("etc/passwd")).unwrap();
    assert_eq!(
        again
            .lines()
            .filter(|l| l.starts_with("interdict-collector:"))
            .count(),
        1,
        "{again}"
    );
    assert_eq!(again, passwd);
    assert_eq!(
        std::fs::read_to_string(root.path("etc/interdict-collector/collector.toml")).unwrap(),
        cfg
    );
    assert_eq!(
        root.stat("/etc/interdict-collector/collector.toml"),
        Some((0o640, 0, gid))
    );
    assert!(root
        .path("var/lib/interdict-collector/collector.db")
        .exists());

    root.dpkg(&["--remove", "interdict-collector"]);
    assert!(!root.path("usr/bin/interdict-collector").exists());
    assert!(root
        .path("var/lib/interdict-collector/collector.db")
        .exists());
    assert_eq!(
        std::fs::read_to_string(root.path("etc/interdict-collector/collector.toml")).unwrap(),
        cfg
    );

    root.dpkg(&["--purge", "interdict-collector"]);
    assert_eq!(root.status("interdict-collector"), "");
    for gone in [
        "etc/interdict-collector",
        "var/lib/interdict-collector",
        "etc/systemd/system/multi-user.target.wants/interdict-collector.service",
        "var/lib/systemd/deb-systemd-helper-enabled/interdict-collector.service.dsh-also",
    ] {
        assert!(
            std::fs::symlink_metadata(root.path(gone)).is_err(),
            "{gone} left after purge"
        );
    }
    host_untouched(&before);
}

/// `systemd-analyze security --offline=true UNIT`: (exposure, level).
fn exposure(unit: &Path) -> (f64, String) {
    let text = ok(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit));
    let last = text
        .lines()
        .rev()
        .find(|l| l.contains("Overall exposure level for "))
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"));
    let after = last.rsplit(": ").next().unwrap();
    let mut f = after.split_whitespace();
    let score: f64 = f.next().unwrap().parse().unwrap();
    (score, f.next().unwrap().to_string())
}

#[test]
fn issue_16_systemd_rates_both_units_ok_or_better() {
    let good = ["PERFECT", "SAFE", "OK"];
    let collector = exposure(&repo().join("packaging/systemd/interdict-collector.service"));
    let agent = exposure(&repo().join("packaging/systemd/interdict.service"));
    assert!(
        good.contains(&collector.1.as_str()),
        "collector {collector:?}"
    );
    assert!(good.contains(&agent.1.as_str()), "agent {agent:?}");
    // The collector needs no privilege at all: it must stay well below the root agent.
    assert!(
        collector.0 < 2.0 && collector.0 < agent.0,
        "{collector:?} {agent:?}"
    );
    // The same check tells an unhardened unit apart (the test can fail).
    let bare = tempfile::tempdir().unwrap();
    let unit = bare.path().join("bare.service");
    std::fs::write(
        &unit,
        "[Unit]\nDescription=bare\n[Service]\nExecStart=/usr/bin/interdict agent\n",
    )
    .unwrap();
    let b = exposure(&unit);
    assert!(!good.contains(&b.1.as_str()), "{b:?}");
}

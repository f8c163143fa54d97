//! Real packages from npm and PyPI, fetched once with the registries' own clients (npm, pip,
//! bun, pnpm, uv) into the shared test cache and reused by every later run: the folder of
//! `$INTERDICT_NPM_FIXTURES` (`fixtures/` beside it), or the target directory.
//!
//! Each fixture is built into `NAME.partial` under a lock file (several test processes may share
//! the cache) and renamed into place when complete, so a run cut short never leaves half a
//! fixture behind.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The shared cache folder.
pub fn cache_root() -> PathBuf {
    let root = match std::env::var_os("INTERDICT_NPM_FIXTURES") {
        Some(npm) => PathBuf::from(npm)
            .parent()
            .map(|p| p.join("fixtures"))
            .unwrap_or_else(|| PathBuf::from("fixtures")),
        None => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fixtures"),
    };
    std::fs::create_dir_all(&root).unwrap();
    root
}

/// The fixture `name`, built by `build` (given an empty folder) the first time.
pub fn cached(name: &str, build: impl FnOnce(&Path)) -> PathBuf {
    let root = cache_root();
    let dir = root.join(name);
    let lock = std::fs::File::create(root.join(format!("{name}.lock"))).unwrap();
    // SAFETY: the descriptor belongs to `lock`, which is open for the whole call.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "lock {name}");
    if !dir.join(".complete").exists() {
        let partial = root.join(format!("{name}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&partial).unwrap();
        build(&partial);
        std::fs::write(partial.join(".complete"), b"").unwrap();
        std::fs::rename(&partial, &dir).unwrap();
    }
    drop(lock);
    dir
}

/// Run a fixture-building command; a failure shows everything it printed.
pub fn sh(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (.ci/run installs what is needed)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({})\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Environment for package managers working in `home`: their caches and stores land there, and
/// the system's CA bundle is trusted (registries behind a TLS-inspecting proxy).
pub fn in_home(cmd: &mut Command, home: &Path) {
    cmd.env("HOME", home)
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("npm_config_cache", home.join(".npm"))
        .env("npm_config_update_notifier", "false")
        .env("npm_config_fund", "false")
        .env("npm_config_audit", "false");
    if Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
        cmd.env("NODE_EXTRA_CA_CERTS", "/etc/ssl/certs/ca-certificates.crt")
            .env("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt");
    }
}

fn safe(spec: &str) -> String {
    spec.replace(['/', '@', ':'], "_")
}

/// `npm pack SPEC` into `dir`: the tarball as the registry serves it.
fn npm_pack(spec: &str, dir: &Path) -> PathBuf {
    sh(Command::new("npm")
        .args(["pack", "--silent", "--pack-destination"])
        .arg(dir)
        .arg(spec));
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".tgz"))
        .expect("npm pack wrote a tarball")
        .path()
}

/// The unpacked tarball of an npm package (`SPEC` as `npm pack` takes it): the folder holding
/// `package/`. Install scripts are not run.
pub fn npm_package(spec: &str) -> PathBuf {
    cached(&format!("npm-{}", safe(spec)), |dir| {
        let tgz = npm_pack(spec, dir);
        sh(Command::new("tar").arg("xzf").arg(&tgz).arg("-C").arg(dir));
        std::fs::remove_file(tgz).unwrap();
    })
}

/// The folder holding the wheels `pip download` fetched for `requirement` (no dependencies)
/// for Linux x86-64.
pub fn pypi_wheels(requirement: &str) -> PathBuf {
    cached(&format!("pypi-{}", safe(requirement)), |dir| {
        sh(Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary",
                ":all:",
                "--platform",
                "manylinux_2_17_x86_64",
                "--disable-pip-version-check",
                "-d",
            ])
            .arg(dir)
            .arg(requirement));
    })
}

/// The one file matching `pred` under `dir`.
pub fn find_file(dir: &Path, pred: impl Fn(&Path) -> bool) -> PathBuf {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() && pred(&e.path()) {
                found.push(e.path());
            }
        }
    }
    assert_eq!(found.len(), 1, "in {}: {found:?}", dir.display());
    found.pop().unwrap()
}

/// Put `src` at `dst` (creating folders) as a hard link when the file systems allow, else a
/// copy; mode 0755.
pub fn place(src: &Path, dst: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    if std::fs::hard_link(src, dst).is_err() {
        std::fs::copy(src, dst).unwrap();
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// How much of a tarball [`npm_tarball_head`] keeps.
pub const TARBALL_HEAD: usize = 1 << 20;

/// The first [`TARBALL_HEAD`] bytes of an npm package's tarball exactly as the registry serves
/// it (`npm pack`), and the whole tarball's size; the rest is not kept.
pub fn npm_tarball_head(spec: &str) -> (Vec<u8>, u64) {
    let dir = cached(&format!("npm-tgz-head-{}", safe(spec)), |dir| {
        let tgz = npm_pack(spec, dir);
        let mut head = std::fs::read(&tgz).unwrap();
        std::fs::write(dir.join("size"), head.len().to_string()).unwrap();
        head.truncate(TARBALL_HEAD);
        std::fs::write(dir.join("head.tgz"), head).unwrap();
        std::fs::remove_file(tgz).unwrap();
    });
    let size = std::fs::read_to_string(dir.join("size")).unwrap();
    (
        std::fs::read(dir.join("head.tgz")).unwrap(),
        size.trim().parse().unwrap(),
    )
}

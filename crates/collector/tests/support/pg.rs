//! A private PostgreSQL server for tests and benchmarks.

/// A private PostgreSQL server from Debian's binaries, for one test: its cluster copied from a
/// template made once by `initdb`, listening only on a Unix socket in its own folder, stopped
/// (by PID) on drop.
pub struct Pg {
    dir: tempfile::TempDir,
    child: std::process::Child,
}

fn pg_bin(name: &str) -> std::path::PathBuf {
    let mut found: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL must be installed (.ci/run installs Debian's postgresql)")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().expect("no PostgreSQL server binaries")
}

fn pg_uid() -> (u32, u32) {
    let out = std::process::Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .unwrap();
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let out = std::process::Command::new("id")
        .args(["-g", "postgres"])
        .output()
        .unwrap();
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (uid, gid)
}

fn chown(p: &std::path::Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
}

/// A cluster made once by `initdb` and kept in /tmp for later runs; each test copies it. Made
/// under an exclusive lock on a lock file (several test processes, of this worktree or another,
/// may start at once), in a folder of this process, renamed into place only when complete; the
/// name carries the server's major version.
fn pg_template() -> &'static std::path::Path {
    static T: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let ids = pg_uid();
        let bin = pg_bin("initdb");
        let version = bin
            .parent()
            .and_then(|p| p.parent())
            .and_then(|p| p.file_name())
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        let done = std::path::PathBuf::from(format!("/tmp/interdict-pg-template-v2-{version}"));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(format!("{}.lock", done.display()))
            .unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own and keep open until the end of this block; it
        // only blocks until other holders of the lock are done.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        if done.join("data/PG_VERSION").exists() {
            return done;
        }
        let t = std::path::PathBuf::from(format!("{}.{}", done.display(), std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        std::fs::create_dir_all(&t).unwrap();
        chown(&t, ids);
        use std::os::unix::process::CommandExt;
        let st = std::process::Command::new(bin)
            .arg("-D")
            .arg(t.join("data"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .stdout(std::process::Stdio::null())
            .uid(ids.0)
            .gid(ids.1)
            .status()
            .unwrap();
        assert!(st.success(), "initdb failed");
        let _ = std::fs::remove_dir_all(&done);
        std::fs::rename(&t, &done).unwrap();
        done
        // The lock is released when `lock` is dropped here.
    })
}

impl Pg {
    pub fn start() -> Pg {
        let ids = pg_uid();
        let dir = tempfile::Builder::new()
            .prefix("interdict-pg-")
            .tempdir()
            .unwrap();
        chown(dir.path(), ids);
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(pg_template().join("data"))
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success());
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new(pg_bin("postgres"))
            .arg("-D")
            .arg(dir.path().join("data"))
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "listen_addresses=", "-p", "5432"])
            .uid(ids.0)
            .gid(ids.1)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let sock = dir.path().join(".s.PGSQL.5432");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let pg = Pg { dir, child };
        loop {
            if sock.exists() && postgres::Client::connect(&pg.params(), postgres::NoTls).is_ok() {
                return pg;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "postgres did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Connection parameters (Unix socket, trust).
    pub fn params(&self) -> String {
        format!(
            "host={} port=5432 user=postgres dbname=postgres",
            self.dir.path().display()
        )
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        // Fast shutdown, by PID.
        // SAFETY: kill(2) on the PID of our own child, which has not been waited for yet (so the
        // PID cannot have been reused); no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

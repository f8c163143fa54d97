//! Files the system's package manager owns: dpkg's file lists (`/var/lib/dpkg/info/*.list`) and,
//! where rpm is installed, its database (`rpm -qa --list`). Kept as 64-bit hashes of the paths
//! (about 1 MiB for 100,000 files), so that the agent can ask "does a package own this file?"
//! on its deciding threads without holding every path in memory.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;

/// The set of package-owned files.
#[derive(Debug, Default, Clone)]
pub struct PackageFiles {
    hashes: HashSet<u64>,
}

fn key(path: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    path.hash(&mut h);
    h.finish()
}

/// Merged-/usr systems list `/bin/true` where the file really is `/usr/bin/true`: the same
/// file under its other name.
fn alias(path: &[u8]) -> Option<Vec<u8>> {
    for (short, long) in [
        (&b"/bin/"[..], &b"/usr/bin/"[..]),
        (b"/sbin/", b"/usr/sbin/"),
        (b"/lib/", b"/usr/lib/"),
        (b"/lib64/", b"/usr/lib64/"),
        (b"/lib32/", b"/usr/lib32/"),
    ] {
        if let Some(rest) = path.strip_prefix(short) {
            return Some([long, rest].concat());
        }
        if let Some(rest) = path.strip_prefix(long) {
            return Some([short, rest].concat());
        }
    }
    None
}

impl PackageFiles {
    /// Read dpkg's file lists under `dpkg_info` (normally `/var/lib/dpkg/info`).
    pub fn load_dpkg(dpkg_info: &Path) -> PackageFiles {
        let mut p = PackageFiles::default();
        if let Ok(rd) = std::fs::read_dir(dpkg_info) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "list") {
                    if let Ok(text) = std::fs::read(e.path()) {
                        p.extend(text.split(|b| *b == b'\n'));
                    }
                }
            }
        }
        p
    }

    /// The system's package-owned files: dpkg's lists, and rpm's database when `rpm` exists.
    pub fn load_system() -> PackageFiles {
        let mut p = PackageFiles::load_dpkg(Path::new("/var/lib/dpkg/info"));
        if Path::new("/var/lib/rpm").is_dir() {
            if let Ok(out) = std::process::Command::new("rpm")
                .args(["-qa", "--list"])
                .stderr(std::process::Stdio::null())
                .output()
            {
                p.extend(out.stdout.split(|b| *b == b'\n'));
            }
        }
        p
    }

    fn extend<'a>(&mut self, paths: impl Iterator<Item = &'a [u8]>) {
        self.hashes
            .extend(paths.filter(|l| l.first() == Some(&b'/')).map(key));
    }

    /// True when a package owns `path` (under this name or its merged-/usr alias).
    pub fn owns(&self, path: &Path) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let b = path.as_os_str().as_bytes();
        self.hashes.contains(&key(b)) || alias(b).is_some_and(|a| self.hashes.contains(&key(&a)))
    }

    /// How many files are known.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// True when no package manager's list was found.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_lists_are_read_with_merged_usr_aliases() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("coreutils.list"),
            "/.\n/bin\n/bin/true\n/usr/share/doc/x\n",
        )
        .unwrap();
        std::fs::write(d.path().join("coreutils.md5sums"), "/not/a/list\n").unwrap();
        let p = PackageFiles::load_dpkg(d.path());
        assert!(p.owns(Path::new("/bin/true")));
        assert!(p.owns(Path::new("/usr/bin/true")), "merged-/usr alias");
        assert!(p.owns(Path::new("/usr/share/doc/x")));
        assert!(!p.owns(Path::new("/not/a/list")));
        assert!(!p.owns(Path::new("/home/ann/.local/bin/true")));
    }

    #[test]
    fn this_machines_coreutils_are_package_owned() {
        if !Path::new("/var/lib/dpkg/info/coreutils.list").exists() {
            return; // not a dpkg system
        }
        let p = PackageFiles::load_system();
        let t = std::fs::canonicalize("/bin/true").unwrap();
        assert!(p.owns(&t), "{} should be owned by coreutils", t.display());
    }
}

//! The mount table (`/proc/self/mountinfo`): which filesystems can hold programs, and a watch
//! that says when mounts come and go (the kernel wakes a `poll` on that file with `POLLPRI`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Filesystem types that hold programs people run: disk, memory, image and FUSE filesystems.
/// (Network filesystems are left out of the defaults: judging a file there means reading it
/// over the network while the exec waits.)
pub const PROGRAM_FS: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "zfs", "tmpfs", "ramfs", "overlay", "vfat",
    "exfat", "ntfs", "ntfs3", "squashfs", "erofs", "iso9660", "udf", "fuseblk", "fuse", "reiserfs",
    "jfs", "hfsplus", "9p", "virtiofs",
];

/// One line of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted.
    pub point: PathBuf,
    /// The filesystem type (`fuse.sshfs` is `fuse`).
    pub fstype: String,
    /// Mounted `noexec`: nothing on it can be executed.
    pub noexec: bool,
}

impl Mount {
    /// True for a filesystem that can hold programs and is not a kernel interface.
    pub fn holds_programs(&self) -> bool {
        let base = self.fstype.split('.').next().unwrap_or("");
        PROGRAM_FS.contains(&base)
            && !self.noexec
            && !self.point.starts_with("/proc")
            && !self.point.starts_with("/sys")
    }

    /// The device of the filesystem mounted there, when it can be read.
    pub fn dev(&self) -> Option<u64> {
        std::fs::metadata(&self.point).ok().map(|m| m.dev())
    }
}

/// `\040`-style escapes in mountinfo paths.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse mountinfo text.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split_whitespace().collect();
            let fstype = post.split_whitespace().next()?;
            if pre.len() < 6 {
                return None;
            }
            Some(Mount {
                point: PathBuf::from(unescape(pre[4])),
                fstype: fstype.to_string(),
                noexec: pre[5].split(',').any(|o| o == "noexec"),
            })
        })
        .collect()
}

/// This mount namespace's mounts.
pub fn current() -> Vec<Mount> {
    parse(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// True when `path` lies under one of `roots`.
pub fn under(path: &Path, roots: &[PathBuf]) -> bool {
    roots.iter().any(|r| path.starts_with(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes_and_options() {
        let text = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    30 22 0:26 / /dev/shm rw,nosuid,nodev shared:2 - tmpfs tmpfs rw\n\
                    31 22 0:27 / /mnt/my\\040stick rw,noexec - vfat /dev/sdb1 rw\n\
                    32 22 0:28 / /proc rw - proc proc rw\n\
                    33 22 0:29 / /home/ann/remote rw - fuse.sshfs ann@host: rw\n";
        let m = parse(text);
        assert_eq!(m.len(), 5);
        assert!(m[0].holds_programs());
        assert!(m[1].holds_programs(), "/dev/shm can hold programs");
        assert_eq!(m[2].point, PathBuf::from("/mnt/my stick"));
        assert!(!m[2].holds_programs(), "noexec");
        assert!(!m[3].holds_programs(), "proc");
        assert!(m[4].holds_programs(), "FUSE");
    }
}

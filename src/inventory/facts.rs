//! [`FactsBuilder`]: the one way to assemble policy [`Facts`] — for a process (the scan, the
//! proc connector, sweeps), for a file held at exec by the kernel (fanotify), or for a file
//! found installed.

use std::ffi::OsStr;
use std::path::Path;

use interdict_policy::{ContentMatch, Facts, PackageRef, Sha256};

use super::hash::HashMemo;
use super::host::Accounts;

/// The basename of a path or argument, lossily as text.
pub fn basename(p: &OsStr) -> Option<String> {
    Path::new(p)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

/// Builds [`Facts`]; every setter is optional.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct FactsBuilder {
    facts: Facts,
}

impl FactsBuilder {
    /// Facts on this host.
    pub fn new(host: &str) -> FactsBuilder {
        FactsBuilder {
            facts: Facts {
                host: Some(host.to_string()),
                ..Facts::default()
            },
        }
    }

    /// A candidate name (empty and repeated names are skipped).
    pub fn name(mut self, name: Option<String>) -> Self {
        self.facts.add_name(name);
        self
    }

    /// The basename of `path` as a candidate name.
    pub fn name_of(self, path: &Path) -> Self {
        self.name(basename(path.as_os_str()))
    }

    /// The canonical executable (its basename is a candidate name too).
    pub fn exe(mut self, path: &Path) -> Self {
        self = self.name_of(path);
        self.facts.exe_path = Some(path.to_path_buf());
        self
    }

    /// The canonical script an interpreter runs, or a script file (its basename is a name too).
    pub fn script(mut self, path: &Path) -> Self {
        self = self.name_of(path);
        self.facts.script_path = Some(path.to_path_buf());
        self
    }

    /// The executable's digest.
    pub fn exe_digest(mut self, d: Option<Sha256>) -> Self {
        self.facts.exe_sha256 = d;
        self
    }

    /// The script's digest.
    pub fn script_digest(mut self, d: Option<Sha256>) -> Self {
        self.facts.script_sha256 = d;
        self
    }

    /// What the executable holds (family signatures and format), when it was looked into.
    pub fn exe_content(mut self, c: Option<ContentMatch>) -> Self {
        self.facts.exe_content = c;
        self
    }

    /// What the script holds, when it was looked into.
    pub fn script_content(mut self, c: Option<ContentMatch>) -> Self {
        self.facts.script_content = c;
        self
    }

    /// Hash the executable set with [`FactsBuilder::exe`] through `memo`, when `needed`.
    pub fn digest_exe_if(mut self, needed: bool, memo: &HashMemo) -> Self {
        if let (true, Some(p)) = (needed, &self.facts.exe_path) {
            self.facts.exe_sha256 = memo.hash_path(p, false).ok();
        }
        self
    }

    /// An AI agent's configuration file, and the same file as `~/REST` when it lies in a home.
    pub fn config(mut self, path: &Path, home_path: Option<std::path::PathBuf>) -> Self {
        self.facts.config_path = Some(path.to_path_buf());
        self.facts.config_home_path = home_path;
        self
    }

    /// An installed package marker.
    pub fn package(mut self, p: PackageRef) -> Self {
        self.facts.packages.push(p);
        self
    }

    /// The user (a process's, or a file's owner) and that user's groups.
    pub fn user(mut self, uid: Option<u32>, accounts: &Accounts) -> Self {
        if let Some(uid) = uid {
            self.facts.user = Some(accounts.user_name(uid));
            self.facts.groups = accounts.groups_of(uid);
        }
        self
    }

    /// The facts.
    pub fn build(self) -> Facts {
        self.facts
    }
}

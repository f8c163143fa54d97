//! Facts about this machine: host name, users, groups, home folders, today's date.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use interdict_policy::Date;

/// Today's date (UTC).
pub fn today() -> Date {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Date::from_unix_seconds(secs)
}

/// This machine's host name.
pub fn hostname() -> String {
    sysinfo::System::host_name().unwrap_or_else(|| "unknown".to_string())
}

/// One account from the user database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// Numeric user id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home folder.
    pub home: PathBuf,
}

/// The user and group databases (`/etc/passwd`, `/etc/group` on Unix), read once.
#[derive(Debug, Clone, Default)]
pub struct Accounts {
    by_uid: HashMap<u32, Account>,
    groups: HashMap<u32, String>,
    members: HashMap<String, Vec<String>>,
}

impl Accounts {
    /// Read `/etc/passwd` and `/etc/group`; missing files give an empty database.
    pub fn load() -> Accounts {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
        Accounts::parse(&passwd, &group)
    }

    /// Parse passwd- and group-format text.
    pub fn parse(passwd: &str, group: &str) -> Accounts {
        let mut a = Accounts::default();
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 || line.starts_with('#') {
                continue;
            }
            let (Ok(uid), Ok(gid)) = (f[2].parse(), f[3].parse()) else {
                continue;
            };
            a.by_uid.entry(uid).or_insert(Account {
                name: f[0].to_string(),
                uid,
                gid,
                home: PathBuf::from(f[5]),
            });
        }
        for line in group.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || line.starts_with('#') {
                continue;
            }
            let Ok(gid) = f[2].parse() else { continue };
            a.groups.insert(gid, f[0].to_string());
            for m in f[3].split(',').filter(|m| !m.is_empty()) {
                a.members
                    .entry(m.to_string())
                    .or_default()
                    .push(f[0].to_string());
            }
        }
        a
    }

    /// The account with this uid.
    pub fn by_uid(&self, uid: u32) -> Option<&Account> {
        self.by_uid.get(&uid)
    }

    /// The uid of a user name.
    pub fn uid_of(&self, name: &str) -> Option<u32> {
        self.by_uid.values().find(|a| a.name == name).map(|a| a.uid)
    }

    /// The gid of a group name.
    pub fn gid_of(&self, group: &str) -> Option<u32> {
        self.groups
            .iter()
            .find(|(_, name)| name.as_str() == group)
            .map(|(gid, _)| *gid)
    }

    /// The user name for a uid, or the number when unknown.
    pub fn user_name(&self, uid: u32) -> String {
        self.by_uid(uid)
            .map(|a| a.name.clone())
            .unwrap_or_else(|| uid.to_string())
    }

    /// Every group of a user: the primary group and the groups that list it as a member.
    pub fn groups_of(&self, uid: u32) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(a) = self.by_uid(uid) {
            if let Some(g) = self.groups.get(&a.gid) {
                out.push(g.clone());
            }
            if let Some(more) = self.members.get(&a.name) {
                for g in more {
                    if !out.contains(g) {
                        out.push(g.clone());
                    }
                }
            }
        }
        out
    }

    /// Home folders of people: root's and those of accounts with a uid of 1000 or more whose
    /// home exists, plus every folder under `/home`.
    pub fn homes(&self) -> Vec<PathBuf> {
        let mut homes: Vec<PathBuf> = self
            .by_uid
            .values()
            .filter(|a| a.uid == 0 || (a.uid >= 1000 && a.uid < 65534))
            .map(|a| a.home.clone())
            .filter(|h| h.is_dir())
            .collect();
        if let Ok(rd) = std::fs::read_dir("/home") {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() && !homes.contains(&p) {
                    homes.push(p);
                }
            }
        }
        homes.sort();
        homes.dedup();
        homes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd_and_group() {
        let a = Accounts::parse(
            "root:x:0:0:root:/root:/bin/bash\nann:x:1000:1000::/home/ann:/bin/sh\nbad line\n",
            "root:x:0:\nann:x:1000:\nai-pilot:x:2000:ann,bob\n",
        );
        assert_eq!(a.user_name(1000), "ann");
        assert_eq!(a.user_name(4242), "4242");
        assert_eq!(
            a.groups_of(1000),
            vec!["ann".to_string(), "ai-pilot".to_string()]
        );
    }
}

//! Decisions remembered by file identity, written by the fanotify guard and read by the proc
//! connector (an exec the guard found clean needs no second look).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::inventory::hash::FileKey;

/// A decision remembered for a file identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cached {
    /// Nothing to do: nothing (or an `allow` rule) matched the file itself.
    Allow,
    /// The exec (or script open) is denied.
    Deny,
}

/// What a cached decision was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// An exec of the file.
    Exec,
    /// An open of a banned script (the script guard).
    Open,
}

/// Decision cache keyed by file identity, kind of access and policy generation. Allow entries
/// live until the policy changes; the whole cache is dropped past its size cap (65,536).
#[derive(Debug, Default)]
pub struct DecisionCache {
    map: Mutex<HashMap<(FileKey, Access), (u64, Cached)>>,
}

const CACHE_CAP: usize = 65_536;

impl DecisionCache {
    /// The decision for `key` under policy `generation`, if cached.
    pub fn get(&self, key: FileKey, access: Access, generation: u64) -> Option<Cached> {
        let map = self.map.lock().expect("cache poisoned");
        match map.get(&(key, access)) {
            Some((g, c)) if *g == generation => Some(*c),
            _ => None,
        }
    }

    /// Remember a decision.
    pub fn put(&self, key: FileKey, access: Access, generation: u64, c: Cached) {
        let mut map = self.map.lock().expect("cache poisoned");
        if map.len() >= CACHE_CAP {
            map.clear();
        }
        map.insert((key, access), (generation, c));
    }
}

//! `interdict hashes`: the digests learned on this host (`list`, `forget`) and release digests
//! fetched from the package registries ([`fetch`]), and sizes added to existing hash lists
//! ([`sizes`]).

pub mod fetch;
pub mod sizes;

use std::path::Path;

use super::{exit, Format};
#[cfg(target_os = "linux")]
use crate::policy::learned::Forget;
use crate::policy::learned::LearnedSet;

/// `interdict hashes list`.
pub fn list(state_dir: &Path, format: Format) -> anyhow::Result<u8> {
    let set = LearnedSet::load(state_dir)?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&set)?),
        Format::Text => {
            for e in &set.entries {
                let size = e.size.map(|s| format!(", {s} bytes")).unwrap_or_default();
                let source = e
                    .source
                    .as_deref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default();
                println!(
                    "{}  rule {}  first seen {} at {} (by {}{size}){source}",
                    e.sha256,
                    e.rule_id,
                    e.first_seen,
                    crate::path_text(&e.path),
                    e.selector
                );
            }
            println!("{} learned hash(es)", set.entries.len());
        }
    }
    Ok(exit::OK)
}

#[cfg(target_os = "linux")]
/// `interdict hashes forget`: through the running agent when it answers, else in the state
/// folder's list.
pub fn forget(what: &Forget, socket: &Path, state_dir: &Path) -> anyhow::Result<u8> {
    let line = format!("forget {}", serde_json::to_string(what)?);
    match crate::agent::control::request(socket, &line) {
        Ok(reply) => {
            let v: serde_json::Value = serde_json::from_str(&reply)?;
            let n = v["forgotten"].as_u64().unwrap_or(0);
            println!("forgot {n} learned hash(es); the running agent no longer uses them");
            Ok(exit::OK)
        }
        Err(e) if socket.exists() => Err(e),
        Err(_) => {
            let mut set = LearnedSet::load(state_dir)?;
            let gone = set.forget(what);
            if !gone.is_empty() {
                set.save(state_dir)?;
            }
            println!(
                "forgot {} learned hash(es) in {} (no agent running at {})",
                gone.len(),
                state_dir.display(),
                socket.display()
            );
            Ok(exit::OK)
        }
    }
}

//! Policy bundles: verified against the pinned policy keys, applied when their version is
//! higher than the one in force (the same path as a reload: the last good policy stays on any
//! error), and kept in `STATE_DIR/policy.bundle`, which the agent enforces at its next start
//! before (and without) reaching the collector.

use std::path::Path;

use interdict_event::EventKind;
use interdict_fleet::{BundleBody, PublicKey};

use crate::agent::config::AgentConfig;
use crate::agent::metrics::inc;
use crate::agent::reload::{PolicySource, Reloader};
use crate::agent::shared::Shared;
use crate::policy::LoadedPolicy;

/// The bundle in force, as received, in the state folder.
pub const FILE: &str = "policy.bundle";

/// The policy keys the configuration pins.
pub fn pinned(config: &AgentConfig) -> Vec<PublicKey> {
    config
        .collector
        .as_ref()
        .map(|c| {
            c.policy_public_keys
                .iter()
                .filter_map(|k| PublicKey::from_hex(k))
                .collect()
        })
        .unwrap_or_default()
}

/// The bundle's policy, validated and compiled; every diagnostic when it is invalid.
pub fn to_loaded(body: &BundleBody) -> Result<LoadedPolicy, String> {
    crate::policy::bundle::to_loaded(body).map_err(|d| d.to_string())
}

fn source(body: &BundleBody, key: PublicKey) -> PolicySource {
    PolicySource::Bundle {
        version: body.version,
        created: body.created.clone(),
        key: key.to_string(),
    }
}

/// At start-up: the bundle kept in the state folder, verified again with the keys pinned now.
/// `None` when there is none (or no key is pinned); `Err` saying why it is not used.
pub fn load_persisted(
    config: &AgentConfig,
) -> Option<Result<(LoadedPolicy, PolicySource), String>> {
    let keys = pinned(config);
    if keys.is_empty() {
        return None;
    }
    let path = config.agent.state_dir.join(FILE);
    let text = std::fs::read_to_string(&path).ok()?;
    Some(
        interdict_fleet::open_bundle(&text, &keys)
            .map_err(|e| format!("{}: {e}", path.display()))
            .and_then(|(body, key)| {
                let l = to_loaded(&body)
                    .map_err(|d| format!("{}: invalid policy:\n{d}", path.display()))?;
                Ok((l, source(&body, key)))
            }),
    )
}

/// Why a bundle was refused: said in a `policy_rejected` event, once per bundle.
fn refuse(shared: &Shared, text: &str, why: &str) {
    inc(&shared.metrics.c.policies_rejected);
    inc(&shared.metrics.c.fleet_refused);
    let id = format!("bundle:{}", interdict_fleet::sha256_hex(text.as_bytes()));
    if !shared.fleet.first_refusal(&id) {
        tracing::debug!("a bundle refused before was offered again: {why}");
        return;
    }
    let active = shared.policy.active();
    let msg = format!(
        "signed policy bundle refused: {why}; the policy in force stays ({})",
        active.source.describe()
    );
    tracing::error!("{msg}");
    let mut e = shared.event(EventKind::PolicyRejected);
    e.message = Some(msg);
    shared.emit(e);
}

/// A bundle offered (by the collector): verified, checked against the version in force,
/// applied, kept. Refusals are events; the policy in force stays.
pub fn offer(reloader: &Reloader, text: &str, why: &str) -> bool {
    let shared = &reloader.shared;
    let keys = pinned(&shared.config);
    let (body, key) = match interdict_fleet::open_bundle(text, &keys) {
        Ok(x) => x,
        Err(e) => {
            refuse(shared, text, &e.to_string());
            return false;
        }
    };
    let active = shared.policy.active();
    if let Some(have) = active.source.bundle_version() {
        if body.version <= have {
            let what = if body.version == have {
                format!("version {have} is in force already (and this one differs from it)")
            } else {
                format!(
                    "version {} is older than version {have}, which is in force (a rollback)",
                    body.version
                )
            };
            if body.version == have && body.policy_sha256 == active.base.sha256 {
                return false;
            }
            refuse(shared, text, &what);
            return false;
        }
    }
    let loaded = match to_loaded(&body) {
        Ok(l) => l,
        Err(diags) => {
            refuse(
                shared,
                text,
                &format!("version {}: its policy is invalid:\n{diags}", body.version),
            );
            return false;
        }
    };
    if let Err(e) = crate::fsutil::write_atomic(
        &shared.config.agent.state_dir.join(FILE),
        text.as_bytes(),
        0o600,
    ) {
        // Enforced now, but a restart would go back: say so, and try again next time.
        refuse(
            shared,
            text,
            &format!(
                "version {} cannot be kept in the state folder ({e}); not applied",
                body.version
            ),
        );
        return false;
    }
    let version = body.version;
    reloader.put_in_force(
        loaded,
        source(&body, key),
        &format!("signed bundle version {version} {why}"),
    );
    super::describe(shared, crate::agent::sensors::PartState::Running, None);
    true
}

/// Whether a bundle file is kept in `state_dir`.
pub fn is_kept(state_dir: &Path) -> bool {
    state_dir.join(FILE).is_file()
}

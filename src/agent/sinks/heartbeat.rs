//! The agent's sign of life for the collector's fleet view: a `heartbeat` event every
//! `[collector] heartbeat_s` with the version, the policy, the mode, every part's state and the
//! counters.

use std::sync::Arc;
use std::time::{Duration, Instant};

use interdict_event::EventKind;

use crate::agent::control;
use crate::agent::sensors::StartError;
use crate::agent::shared::Shared;

/// Start the heartbeat thread.
pub fn start(shared: Arc<Shared>, every: Duration, started: Instant) -> Result<(), StartError> {
    std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || loop {
            beat(&shared, started);
            if shared.shutdown.sleep(every) {
                return;
            }
        })
        .map(|_| ())
        .map_err(StartError::io("heartbeat thread"))
}

fn beat(shared: &Shared, started: Instant) {
    let st = control::status(shared, started);
    let mut e = shared.event(EventKind::Heartbeat);
    e.message = Some(
        serde_json::json!({
            "version": st.version,
            "policy_name": st.policy.name,
            "policy_version": st.policy.version,
            "policy_sha256": st.policy.sha256,
            "mode": st.mode,
            "uptime_s": st.uptime_s,
            "sensors": st.sensors,
            "counters": st.counters,
            // What the collector acknowledged last, as this host hashed it: lets the
            // collector's verification tell records removed there from records lost here.
            "acked": crate::agent::sinks::ship::acked_record(
                &shared.config.agent.state_dir.join("spool")
            ),
        })
        .to_string(),
    );
    shared.emit(e);
}

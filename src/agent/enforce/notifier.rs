//! The notifier thread: delivers [`Notice`]s to employees, rate-limited per user and rule,
//! terminal first (instant), then the desktop. Failures are counted, never retried, never fatal.

use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::notices::{DesktopBackend, LinuxDesktop, Notice, RateLimiter};
use crate::agent::config::NotifyConfig;
use crate::agent::metrics::{inc, Metrics};
use crate::agent::sensors::{Part, PartState, StartError};
use crate::agent::shared::Shared;

/// Where notices for employees go: a bounded queue (`[notify] queue`) to the notifier thread;
/// when full (or when notices are off) a notice is dropped and counted (`notices_dropped`).
#[derive(Debug, Clone)]
pub struct NoticeSink {
    tx: Option<SyncSender<Notice>>,
}

impl NoticeSink {
    /// A sink and its receiving end; `enabled = false` gives a sink that drops silently.
    pub fn new(cfg: &NotifyConfig) -> (NoticeSink, Option<Receiver<Notice>>) {
        if !cfg.enabled {
            return (NoticeSink { tx: None }, None);
        }
        let (tx, rx) = sync_channel(cfg.queue);
        (NoticeSink { tx: Some(tx) }, Some(rx))
    }

    /// Queue a notice without waiting.
    pub fn send(&self, n: Notice, metrics: &Metrics) {
        if let Some(tx) = &self.tx {
            if tx.try_send(n).is_err() {
                inc(&metrics.c.notices_dropped);
            }
        }
    }
}

/// Start the notifier thread (or record that notices are off).
pub fn start(shared: &Arc<Shared>, rx: Option<Receiver<Notice>>) -> Result<(), StartError> {
    let cfg = &shared.config.notify;
    let Some(rx) = rx else {
        shared.parts.set(
            Part::Notifier,
            PartState::Disabled,
            "[notify] enabled = false",
        );
        return Ok(());
    };
    let s = shared.clone();
    std::thread::Builder::new()
        .name("notifier".into())
        .spawn(move || run(s, rx))
        .map_err(StartError::io("notifier thread"))?;
    let on_off = |b: bool| if b { "on" } else { "off" };
    shared.parts.set(
        Part::Notifier,
        PartState::Running,
        format!(
            "desktop {}, terminal {}, at most one notice per user and rule every {} s",
            on_off(cfg.desktop),
            on_off(cfg.terminal),
            cfg.interval_s
        ),
    );
    Ok(())
}

fn run(shared: Arc<Shared>, rx: Receiver<Notice>) {
    let cfg = &shared.config.notify;
    let m = &shared.metrics.c;
    let mut limiter = RateLimiter::new(Duration::from_secs(cfg.interval_s));
    let desktop = LinuxDesktop {
        opener: cfg.opener.clone(),
        ..LinuxDesktop::default()
    };
    loop {
        let n = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(n) => n,
            Err(RecvTimeoutError::Timeout) => {
                if shared.shutdown.is_triggered() {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if !limiter.allow(n.uid, &n.rule_id, Instant::now()) {
            inc(&m.notices_suppressed);
            continue;
        }
        if cfg.terminal && n.tty_nr.is_some() {
            match super::notices::write_terminal(&n) {
                Ok(()) => inc(&m.notices_terminal),
                Err(_) => inc(&m.notices_failed),
            }
        }
        if cfg.desktop {
            match desktop.notify(&n) {
                Ok(()) => inc(&m.notices_sent),
                Err(e) => {
                    inc(&m.notices_failed);
                    tracing::debug!("notice for uid {} not shown: {e}", n.uid);
                }
            }
        }
    }
}

//! The event writer: every event the agent records passes here, once. It numbers, chains and
//! appends each event to the spool first (when a collector or syslog sink needs one; fdatasync
//! at most every 100 ms and whenever the queue runs empty), then appends one JSON line to the
//! local event log (mode 0600, or 0640 and group-owned by `admin_group`: command lines are
//! private), flushing when the queue is empty. It ends when every sender is gone.

use std::io::Write;
use std::path::Path;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use interdict_event::{Event, Origin};
use tokio::sync::mpsc::Receiver;

use super::spool::Spool;
use crate::agent::metrics::{inc, Metrics};

/// Where events go: a bounded queue (`[agent] event_queue`) to the writer. When it is full the
/// event is dropped and counted (`event_drops`): sensors never wait for the disk.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: tokio::sync::mpsc::Sender<Event>,
}

impl EventSink {
    /// A sink and the receiving end for the writer.
    pub fn new(capacity: usize) -> (EventSink, Receiver<Event>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        (EventSink { tx }, rx)
    }

    /// Queue an event without waiting; count it when it cannot be queued. Whether it was.
    pub fn send(&self, event: Event, metrics: &Metrics) -> bool {
        if self.tx.try_send(event).is_err() {
            inc(&metrics.c.event_drops);
            false
        } else {
            inc(&metrics.c.events_queued);
            true
        }
    }
}

/// The spool, the origin stamped on its own notices, and the readers to wake after a sync.
pub struct SpoolParts {
    /// The spool.
    pub spool: Spool,
    /// This host.
    pub origin: Origin,
    /// One wake-up line per spool reader (shipper, syslog sink); bounded (1), a full line means
    /// the reader is already due to look.
    pub wakes: Vec<SyncSender<()>>,
}

/// Open (or create) the event log: mode 0600, or 0640 owned by `group` when given. A file
/// left with looser modes by an older version is tightened.
pub fn open_log(path: &Path, group: Option<u32>) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let mode = if group.is_some() { 0o640 } else { 0o600 };
    if let Some(gid) = group {
        std::os::unix::fs::fchown(&f, None, Some(gid))?;
    }
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(f)
}

/// Write events until every sender is gone.
pub fn run(
    file: std::io::Result<std::fs::File>,
    path: &Path,
    metrics: &Metrics,
    mut rx: Receiver<Event>,
    mut spool: Option<SpoolParts>,
) {
    let mut out = match file {
        Ok(f) => std::io::BufWriter::new(f),
        Err(e) => {
            tracing::error!("cannot open the event log {}: {e}", path.display());
            while rx.blocking_recv().is_some() {
                inc(&metrics.c.event_write_errors);
            }
            return;
        }
    };
    let mut last_sync = Instant::now();
    let sync = |spool: &mut Option<SpoolParts>| {
        if let Some(p) = spool {
            if p.spool.sync().is_err() {
                inc(&metrics.c.spool_errors);
            }
            for w in &p.wakes {
                let _ = w.try_send(());
            }
        }
    };
    while let Some(e) = rx.blocking_recv() {
        let mut write = |mut e: Event, spool: &mut Option<SpoolParts>| {
            if let Some(p) = spool {
                match p.spool.append(&mut e, &p.origin) {
                    Ok(true) => inc(&metrics.c.spooled),
                    Ok(false) => inc(&metrics.c.spool_dropped),
                    Err(err) => {
                        inc(&metrics.c.spool_errors);
                        tracing::error!("spool write failed: {err}");
                    }
                }
            }
            if writeln!(out, "{}", e.to_json_line()).is_ok() {
                inc(&metrics.c.events_written);
            } else {
                inc(&metrics.c.event_write_errors);
            }
        };
        write(e, &mut spool);
        while let Ok(e) = rx.try_recv() {
            write(e, &mut spool);
            if last_sync.elapsed() >= Duration::from_millis(100) {
                sync(&mut spool);
                last_sync = Instant::now();
            }
        }
        sync(&mut spool);
        last_sync = Instant::now();
        if out.flush().is_err() {
            inc(&metrics.c.event_write_errors);
        }
    }
}

//! What every part of the agent shares: the configuration, the policy in force, the metrics,
//! the event and notice queues, the shutdown signal, the guards and the caches.

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use interdict_event::{Event, EventKind, Origin};
use interdict_policy::Date;

use super::config::AgentConfig;
use super::enforce::kill::{Killer, Protected};
use super::enforce::notifier::NoticeSink;
use super::metrics::Metrics;
use super::reload::PolicyInForce;
use super::sensors::cache::DecisionCache;
use super::sensors::Board;
use super::sinks::event_log::EventSink;
use super::verdict::learn::Learner;
use crate::inventory::hash::HashMemo;
use crate::inventory::host::Accounts;

/// A signal every loop watches: an eventfd for `poll(2)` in sensor threads, a `Notify` for
/// async tasks.
#[derive(Debug)]
pub struct Shutdown {
    flag: AtomicBool,
    efd: OwnedFd,
    notify: tokio::sync::Notify,
}

impl AsFd for Shutdown {
    /// Readable once triggered.
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.efd.as_fd()
    }
}

impl Shutdown {
    /// A new, untriggered signal.
    pub fn new() -> std::io::Result<Shutdown> {
        use rustix::event::{eventfd, EventfdFlags};
        let efd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Shutdown {
            flag: AtomicBool::new(false),
            efd,
            notify: tokio::sync::Notify::new(),
        })
    }

    /// Ask every loop to stop.
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
        // The counter cannot overflow from one write; a failure leaves the flag, which every
        // loop also reads.
        let _ = rustix::io::write(&self.efd, &1u64.to_ne_bytes());
        self.notify.notify_waiters();
    }

    /// True once triggered.
    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Readable once triggered: put it in a `poll(2)` set.
    pub fn fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }

    /// Block until `fd` is readable (`Ok(true)`) or shutdown is triggered (`Ok(false)`).
    pub fn wait_readable(&self, fd: impl AsFd) -> std::io::Result<bool> {
        self.wait_readable_for(fd, None)
    }

    /// Like [`Shutdown::wait_readable`], but give up after `timeout` (`Ok(false)` too, with
    /// [`Shutdown::is_triggered`] telling the two apart).
    pub fn wait_readable_for(
        &self,
        fd: impl AsFd,
        timeout: Option<std::time::Duration>,
    ) -> std::io::Result<bool> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let ts = timeout.map(|t| Timespec {
            tv_sec: t.as_secs() as i64,
            tv_nsec: i64::from(t.subsec_nanos()),
        });
        loop {
            let mut fds = [
                PollFd::new(&fd, PollFlags::IN),
                PollFd::new(&self.efd, PollFlags::IN),
            ];
            match poll(&mut fds, ts.as_ref()) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready = !fds[0].revents().is_empty();
            return Ok(ready && !self.is_triggered());
        }
    }

    /// Sleep for `d` unless shutdown comes first; true when it did.
    pub fn sleep(&self, d: std::time::Duration) -> bool {
        let _ = self.wait_readable_for(&self.efd, Some(d));
        self.is_triggered()
    }

    /// Wait until triggered (async tasks).
    pub async fn wait(&self) {
        loop {
            let n = self.notify.notified();
            if self.is_triggered() {
                return;
            }
            n.await;
        }
    }
}

/// Everything the agent's parts share.
#[derive(Debug)]
pub struct Shared {
    /// The configuration.
    pub config: AgentConfig,
    /// The policy in force (swapped atomically on reloads and learned digests).
    pub policy: PolicyInForce,
    /// Counters and latency (shared with the event writer and the sinks).
    pub metrics: Arc<Metrics>,
    /// Host identity stamped on events.
    pub origin: Origin,
    /// Where events go.
    pub events: EventSink,
    /// Where notices for employees go.
    pub notices: NoticeSink,
    /// Stop signal (shared with the sinks' threads, which outlive this state at shutdown).
    pub shutdown: Arc<Shutdown>,
    /// Never blocked, never killed.
    pub protected: Protected,
    /// Guarded kills.
    pub killer: Killer,
    /// Digests learned on this host, and the queue of files to learn from.
    pub learner: Learner,
    /// Decisions by file identity, from the fanotify guard (the proc connector reads them).
    pub decisions: DecisionCache,
    /// Digests by file identity, shared by every sensor.
    pub memo: HashMemo,
    /// Users and groups.
    pub accounts: Accounts,
    /// The state of every part, for status.
    pub parts: Board,
    /// Devices of the filesystems the fanotify guard marks: execs there are judged and reported
    /// by fanotify (which sees them even when they exit at once), not again by the proc
    /// connector.
    pub marked_devs: Mutex<HashSet<u64>>,
    /// The running fanotify guard (set once it has started), to mark more files and
    /// filesystems from other sensors.
    pub guard: std::sync::OnceLock<super::sensors::fanotify::WeakHandle>,
}

impl Shared {
    /// Build the shared state.
    pub fn new(
        config: AgentConfig,
        policy: PolicyInForce,
        origin: Origin,
        events: EventSink,
        notices: NoticeSink,
    ) -> std::io::Result<Arc<Shared>> {
        Ok(Arc::new(Shared {
            learner: Learner::new(&config.agent.state_dir),
            config,
            policy,
            metrics: Arc::new(Metrics::default()),
            origin,
            events,
            notices,
            shutdown: Arc::new(Shutdown::new()?),
            protected: Protected::discover(),
            killer: Killer::default(),
            decisions: DecisionCache::default(),
            memo: HashMemo::default(),
            accounts: Accounts::load(),
            parts: Board::default(),
            marked_devs: Mutex::new(HashSet::new()),
            guard: std::sync::OnceLock::new(),
        }))
    }

    /// A new event stamped with this host and the policy in force.
    pub fn event(&self, kind: EventKind) -> Event {
        let mut e = self.origin.event(kind);
        e.policy = Some(self.policy.active().policy_ref());
        e
    }

    /// Queue an event; whether it was (when the queue is full it is dropped and counted).
    pub fn emit(&self, e: Event) -> bool {
        self.events.send(e, &self.metrics)
    }

    /// Today, for `enforce_from`.
    pub fn today(&self) -> Date {
        crate::inventory::host::today()
    }

    /// True when the file on device `dev` is on a filesystem the fanotify guard marks.
    pub fn is_marked_dev(&self, dev: u64) -> bool {
        self.marked_devs
            .lock()
            .expect("marked devices poisoned")
            .contains(&dev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_wakes_poll() {
        let s = Shutdown::new().unwrap();
        let (r, _w) = rustix::pipe::pipe().unwrap();
        assert!(!s
            .wait_readable_for(&r, Some(std::time::Duration::ZERO))
            .unwrap());
        assert!(!s.is_triggered());
        s.trigger();
        assert!(s.is_triggered());
        assert!(
            !s.wait_readable(&r).unwrap(),
            "returns at once once triggered"
        );
        assert!(s.sleep(std::time::Duration::from_secs(30)));
    }
}

//! Counters and the decision-latency histogram: lock-free, safe to touch on the answering thread.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Every counter the agent keeps, all monotonic.
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of the counters at one moment.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
        pub struct CounterSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            /// Read every counter.
            pub fn snapshot(&self) -> CounterSnapshot {
                CounterSnapshot { $($name: self.$name.load(Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Exec permission events seen by the fanotify guard.
    execs_seen,
    /// Execs denied before they ran.
    denied,
    /// Script opens denied by the script guard.
    scripts_denied,
    /// Processes killed.
    killed,
    /// Kills that failed (process gone, or not permitted).
    kill_failures,
    /// Matches only reported (report action, monitor mode, not yet enforced).
    reported,
    /// Enforcement refused because the target is protected (the agent, PID 1, critical binaries).
    protected,
    /// Decision cache hits.
    cache_hits,
    /// Decision cache misses.
    cache_misses,
    /// Permission events answered by the deadline, per `fail_mode`.
    deadline_expirations,
    /// Permission events answered at once because the worker queue was full.
    queue_drops,
    /// Events dropped because the event queue was full.
    event_drops,
    /// Exec events seen by the proc connector.
    proc_events,
    /// Processes the proc connector stopped (`SIGSTOP`) while they were judged.
    frozen,
    /// Netlink overflows (ENOBUFS), each followed by a full /proc sweep.
    netlink_overflows,
    /// fanotify queue overflows (FAN_Q_OVERFLOW).
    fanotify_overflows,
    /// Full process sweeps (start-up, policy change, overflow, polling).
    sweeps,
    /// Policies applied (start-up and reloads).
    policies_applied,
    /// Policies rejected (the previous one stayed in force).
    policies_rejected,
    /// Events queued for the event log writer (each then written, or counted in
    /// `event_write_errors`).
    events_queued,
    /// Events written to the event log.
    events_written,
    /// Events that could not be written to the event log.
    event_write_errors,
    /// Desktop notifications delivered.
    notices_sent,
    /// Lines written to terminals.
    notices_terminal,
    /// Notices not sent: the same user and rule were told within `interval_s`.
    notices_suppressed,
    /// Deliveries that failed (no session bus, no notification server, logged out, ...).
    notices_failed,
    /// Notices dropped because the notice queue was full.
    notices_dropped,
    /// Banned installs found.
    installs_detected,
    /// Banned installs gone again.
    installs_removed,
    /// Rescans of the install roots (quick and full), counted when finished.
    install_rescans,
    /// Of those, quick ones: only the folders that changed were read again.
    install_quick_rescans,
    /// Banned files moved into quarantine.
    installs_quarantined,
    /// Bytes hashed by install scans (files whose identity the hash cache did not know).
    install_hashed_bytes,
    /// Persistent hash cache files found damaged at start-up (then rebuilt).
    hash_cache_rejected,
    /// Digests learned from files that path, script or package rules matched.
    hashes_learned,
    /// Banned script files the script guard could not mark.
    script_mark_failures,
    /// Learn requests dropped because the learner's queue was full.
    learn_drops,
    /// Files not learned from: package-owned, protected, below `learn_min_size`, still being
    /// written, or the same content as a file in the system directories.
    learn_refused,
    /// Learned digests dropped (matched a system or package-owned file, or forgotten).
    learned_dropped,
    /// Events written to the spool (numbered and chained).
    spooled,
    /// Events refused because the spool was full (each also announced by an `events_dropped`
    /// event once space is back).
    spool_dropped,
    /// Spool writes or syncs that failed.
    spool_errors,
    /// Events the collector acknowledged.
    shipped,
    /// Deliveries that failed (collector unreachable, 5xx); retried with backoff.
    ship_failures,
    /// Events the collector refused as invalid (4xx); skipped, never retried.
    ship_rejected,
    /// Events written to the syslog sink.
    syslog_sent,
    /// Syslog connections or writes that failed; retried with backoff.
    syslog_failures,
    /// Digests approved for the fleet added to this host's rules.
    fleet_hashes_added,
    /// Exception requests forwarded to the collector.
    exceptions_requested,
    /// Signed exceptions accepted.
    exceptions_granted,
    /// Exceptions ended (or ended early by a policy that no longer allows them).
    exceptions_expired,
    /// Signed documents from the collector refused (bundles, hash lists or their entries,
    /// exceptions).
    fleet_refused,
}

const BUCKETS: usize = 40;

/// Decision latency in nanoseconds, in power-of-two buckets.
#[derive(Debug)]
pub struct Latency {
    buckets: [AtomicU64; BUCKETS],
    max: AtomicU64,
    count: AtomicU64,
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct LatencySnapshot {
    /// Decisions measured.
    pub count: u64,
    /// Median (upper bound of its bucket).
    pub p50_us: f64,
    /// 99th percentile (upper bound of its bucket).
    pub p99_us: f64,
    /// Maximum.
    pub max_us: f64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            max: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Latency {
    /// Record one decision.
    pub fn record(&self, nanos: u64) {
        let b = (64 - nanos.max(1).leading_zeros() as usize).min(BUCKETS - 1);
        self.buckets[b].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.max.fetch_max(nanos, Relaxed);
    }

    /// Percentiles so far.
    pub fn snapshot(&self) -> LatencySnapshot {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let pct = |p: f64| -> f64 {
            if total == 0 {
                return 0.0;
            }
            let want = ((total as f64) * p).ceil() as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= want {
                    return (1u64 << i) as f64 / 1000.0;
                }
            }
            0.0
        };
        LatencySnapshot {
            count: total,
            p50_us: pct(0.5),
            p99_us: pct(0.99),
            max_us: self.max.load(Relaxed) as f64 / 1000.0,
        }
    }
}

/// Counters and latency together.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Counters.
    pub c: Counters,
    /// Decision latency of permission events.
    pub latency: Latency,
    /// Duration of the last rescan of the install roots, in microseconds (0 before the first).
    pub last_rescan_us: AtomicU64,
    /// Duration of the last full rescan (every file looked at), in microseconds.
    pub last_full_rescan_us: AtomicU64,
    /// Duration of the last quick rescan (only changed folders read), in microseconds.
    pub last_quick_rescan_us: AtomicU64,
}

/// Add one to a counter.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_from_buckets() {
        let l = Latency::default();
        for _ in 0..98 {
            l.record(1_000);
        }
        l.record(1_000_000);
        l.record(2_000_000);
        let s = l.snapshot();
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_us, 1.024);
        assert!(s.p99_us >= 1000.0, "{s:?}");
        assert_eq!(s.max_us, 2000.0);
    }
}

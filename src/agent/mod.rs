//! `interdict agent`: the root service that stops banned tools at launch.
//!
//! This module only wires the parts together (see `ARCHITECTURE.md`):
//! - [`sensors`] watch execs (fanotify, the proc connector, sweeps) and installs, build facts
//!   and hand them to the [`verdict`];
//! - the [`verdict`] turns a policy decision into a plan and carries it out through
//!   [`enforce`] (kills, quarantine, notices), recording one event per decision;
//! - [`sinks`] take the events: the event writer (local log, spool), the shipper, syslog, the
//!   heartbeat;
//! - [`reload`] keeps the policy in force, [`control`] answers `interdict status` and `reload`,
//!   [`metrics`] counts.
//!
//! Each part is built from its configuration section and the [`shared::Shared`] context, which
//! carries the shutdown signal and the bounded event and notice queues; every loop watches the
//! shutdown signal.

pub mod config;
pub mod control;
pub mod enforce;
pub mod fleet;
pub mod metrics;
pub mod reload;
pub mod sensors;
pub mod service;
pub mod shared;
pub mod sinks;
pub mod verdict;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use interdict_event::{EventKind, Origin};
use tokio::sync::{mpsc, oneshot};

use control::ReloadReply;
use reload::{PolicyInForce, Reloader};
use sensors::{fanotify, install_watch, proc_connector, sweep, Part, PartState};
use shared::Shared;
use sinks::spool::Consumer;

/// Exit codes of `interdict agent`.
pub mod exit {
    /// Stopped by SIGTERM or SIGINT.
    pub const OK: u8 = 0;
    /// The configuration or the policy is invalid, or the agent could not start.
    pub const ERROR: u8 = 2;
}

/// This host's identity: `/etc/machine-id`, else the host name.
pub fn host_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("hostname:{}", crate::inventory::host::hostname()))
}

/// Run the agent until SIGTERM or SIGINT.
pub fn run(policy_path: &Path, config_path: Option<&Path>) -> anyhow::Result<u8> {
    let config = match config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            if matches!(e, config::ConfigError::Io { .. }) {
                eprintln!();
            }
            return Ok(exit::ERROR);
        }
    };
    // A signed bundle kept from an earlier run is the policy IT published last: it comes
    // before the file, and is enforced without reaching the collector.
    let (loaded, source, note) = match fleet::bundle::load_persisted(&config) {
        Some(Ok((l, src))) => (l, src, None),
        kept => {
            let Some(l) = crate::policy::load_or_print(policy_path) else {
                return Ok(exit::ERROR);
            };
            let src = reload::PolicySource::File {
                path: crate::path_text(policy_path),
            };
            (l, src, kept.and_then(Result::err))
        }
    };
    if let (Some(p), Some(_)) = (
        config_path,
        config
            .collector
            .as_ref()
            .and_then(|c| c.enroll_secret.as_ref()),
    ) {
        warn_if_readable_by_others(p);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(
        policy_path.to_path_buf(),
        config,
        (loaded, source),
        note,
    ))
}

fn warn_if_readable_by_others(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(p) {
        if m.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "{} holds the collector's enroll secret and is readable by others than its owner (mode {:o}); make it 0600",
                p.display(),
                m.permissions().mode() & 0o777
            );
        }
    }
}

/// The state folder, root-only (0700): learned digests, the hash cache, the spool, the
/// quarantine store, the collector token.
fn make_state_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// The sinks' threads, for an orderly stop.
struct SinkThreads {
    writer: std::thread::JoinHandle<()>,
    writer_done: Arc<AtomicBool>,
    shipper: Option<std::thread::JoinHandle<()>>,
    syslog: Option<std::thread::JoinHandle<()>>,
}

/// A spool reader's stop condition at shutdown: keep delivering until the event writer has
/// finished (everything is spooled, `agent_stopped` included), then one more round for what it
/// wrote last, then stop; at most 3 s after the shutdown began.
fn drain_then_stop(
    shutdown: &Arc<shared::Shutdown>,
    writer_done: &Arc<AtomicBool>,
) -> impl Fn() -> bool {
    let (shutdown, done) = (shutdown.clone(), writer_done.clone());
    let last_round = AtomicBool::new(false);
    let since = std::sync::Mutex::new(None::<Instant>);
    move || {
        if !shutdown.is_triggered() {
            return false;
        }
        let began = *since
            .lock()
            .expect("drain clock")
            .get_or_insert_with(Instant::now);
        if began.elapsed() > Duration::from_secs(3) {
            return true;
        }
        done.load(Ordering::SeqCst) && last_round.swap(true, Ordering::SeqCst)
    }
}

/// Start the event writer, and the spool's readers (shipper, syslog) when configured.
fn start_sinks(
    shared: &Arc<Shared>,
    events_rx: tokio::sync::mpsc::Receiver<interdict_event::Event>,
    started: Instant,
) -> anyhow::Result<SinkThreads> {
    use sinks::{event_log, heartbeat, ship, syslog};
    let cfg = &shared.config;
    // The spool comes first when a collector or syslog is configured: every event is numbered,
    // chained and appended there before the shipper or anything else sees it.
    let spool_dir = cfg.agent.state_dir.join("spool");
    let mut consumers = Vec::new();
    let mut wakes = Vec::new();
    let (ship_wake, ship_wake_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let (syslog_wake, syslog_wake_rx) = std::sync::mpsc::sync_channel::<()>(1);
    if cfg.collector.is_some() {
        consumers.push(Consumer::Collector);
        wakes.push(ship_wake);
    }
    if cfg.syslog.is_some() {
        consumers.push(Consumer::Syslog);
        wakes.push(syslog_wake);
    }
    // Events numbered from here on are this run's (the syslog sink names their sender).
    let mut first_seq_of_run = 1;
    let mut syslog = None;
    let spool = if consumers.is_empty() {
        None
    } else {
        let s = sinks::spool::Spool::open(
            &spool_dir,
            cfg.collector.as_ref().map_or(256, |c| c.spool_cap_mib) << 20,
        )
        .map_err(|e| anyhow::anyhow!("cannot open the spool {}: {e}", spool_dir.display()))?;
        sinks::spool::set_consumers(&spool_dir, &consumers)?;
        first_seq_of_run = s.next_seq();
        if s.torn_bytes > 0 {
            tracing::warn!(
                "spool: cut a torn tail of {} bytes (a write cut short by a crash)",
                s.torn_bytes
            );
        }
        Some(event_log::SpoolParts {
            spool: s,
            origin: shared.origin.clone(),
            wakes,
        })
    };
    let group = cfg
        .agent
        .admin_group
        .as_deref()
        .and_then(|g| shared.accounts.gid_of(g));
    let log = event_log::open_log(&cfg.agent.event_log, group);
    let writer_done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (path, metrics, done) = (
            cfg.agent.event_log.clone(),
            shared.metrics.clone(),
            writer_done.clone(),
        );
        std::thread::Builder::new()
            .name("event-writer".into())
            .spawn(move || {
                event_log::run(log, &path, group, &metrics, events_rx, spool);
                done.store(true, Ordering::SeqCst);
            })?
    };
    if let Some(sc) = cfg.syslog.clone() {
        let how = if sc.tls { "TLS" } else { "TCP" };
        shared.parts.set(
            Part::Syslog,
            PartState::Running,
            format!("RFC 5424 over {how} to {}", sc.address),
        );
        let (metrics, dir, shutdown, done) = (
            shared.metrics.clone(),
            spool_dir.clone(),
            shared.shutdown.clone(),
            writer_done.clone(),
        );
        let s = shared.clone();
        let health = move |state: &str, detail: String| {
            let state = match state {
                "running" => PartState::Running,
                "failing" => PartState::Failing,
                _ => PartState::Stopped,
            };
            s.parts.set(Part::Syslog, state, detail);
        };
        syslog = Some(
            std::thread::Builder::new()
                .name("syslog".into())
                .spawn(move || {
                    syslog::run(
                        sc,
                        dir,
                        metrics,
                        syslog_wake_rx,
                        first_seq_of_run,
                        drain_then_stop(&shutdown, &done),
                        health,
                    )
                })?,
        );
    }
    let mut shipper = None;
    if let Some(cc) = &cfg.collector {
        let sc = ship::ShipConfig::from_config(cc, &cfg.agent.state_dir);
        // A bad CA or client certificate is a configuration error: say so at start.
        if sc.client_cert.is_some() != sc.client_key.is_some() {
            anyhow::bail!("[collector]: client_cert and client_key go together");
        }
        ship::client(&sc).map_err(|e| anyhow::anyhow!("[collector]: {e}"))?;
        let host = (
            shared.origin.host_id.clone(),
            shared.origin.hostname.clone(),
        );
        let (metrics, dir, shutdown, done) = (
            shared.metrics.clone(),
            spool_dir.clone(),
            shared.shutdown.clone(),
            writer_done.clone(),
        );
        shared
            .parts
            .set(Part::Shipper, PartState::Running, format!("to {}", sc.url));
        shipper = Some(
            std::thread::Builder::new()
                .name("shipper".into())
                .spawn(move || ship::run(sc, dir, host, metrics, ship_wake_rx, &shutdown, &done))?,
        );
        if cc.heartbeat_s > 0 {
            heartbeat::start(shared.clone(), Duration::from_secs(cc.heartbeat_s), started)?;
        }
    }
    Ok(SinkThreads {
        writer,
        writer_done,
        shipper,
        syslog,
    })
}

/// Start the sensors; returns the script marker (when the script guard runs) and the install
/// watcher's request line (when it runs).
fn start_sensors(
    shared: &Arc<Shared>,
) -> (
    Option<fanotify::ScriptMarker>,
    Option<std::sync::mpsc::Sender<install_watch::WatchMsg>>,
) {
    let exec = &shared.config.exec;
    let parts = &shared.parts;
    let marker = if exec.fanotify {
        fanotify::start(shared.clone())
            .map_err(|why| parts.set(Part::Fanotify, PartState::Failed, why.to_string()))
            .ok()
    } else {
        parts.set(
            Part::Fanotify,
            PartState::Disabled,
            "[exec] fanotify = false",
        );
        None
    };
    if exec.proc_connector {
        if let Err(why) = proc_connector::start(shared.clone()) {
            parts.set(Part::ProcConnector, PartState::Failed, why.to_string());
        }
    } else {
        parts.set(
            Part::ProcConnector,
            PartState::Disabled,
            "[exec] proc_connector = false",
        );
    }
    let kernel_sensors = marker.is_some() || parts.is_running(Part::ProcConnector);
    let poll_ms = match (exec.poll_interval_ms, kernel_sensors) {
        (0, true) => None,
        (0, false) => Some(2000),
        (ms, _) => Some(ms),
    };
    match poll_ms {
        Some(ms) => {
            if let Err(why) = sweep::start_polling(shared.clone(), Duration::from_millis(ms)) {
                parts.set(Part::Poll, PartState::Failed, why.to_string());
            }
        }
        None => parts.set(
            Part::Poll,
            PartState::Idle,
            "sweeps at start-up and after policy changes",
        ),
    }
    let marker = match (marker, exec.script_guard) {
        (Some(m), true) => {
            parts.set(
                Part::ScriptGuard,
                PartState::Running,
                "marking banned scripts",
            );
            Some(m)
        }
        (None, true) => {
            parts.set(
                Part::ScriptGuard,
                PartState::Failed,
                sensors::StartError::Needs(Part::Fanotify).to_string(),
            );
            None
        }
        (_, false) => {
            parts.set(
                Part::ScriptGuard,
                PartState::Disabled,
                "[exec] script_guard = false",
            );
            None
        }
    };
    let install = if shared.config.install.watch {
        install_watch::load_hash_cache(shared);
        install_watch::start(shared.clone(), marker.clone())
            .map_err(|why| parts.set(Part::InstallWatch, PartState::Failed, why.to_string()))
            .ok()
    } else {
        parts.set(
            Part::InstallWatch,
            PartState::Disabled,
            "[install] watch = false",
        );
        None
    };
    (marker, install)
}

async fn run_async(
    policy_path: PathBuf,
    config: config::AgentConfig,
    (loaded, source): (crate::policy::LoadedPolicy, reload::PolicySource),
    bundle_note: Option<String>,
) -> anyhow::Result<u8> {
    let started = Instant::now();
    make_state_dir(&config.agent.state_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot make the state folder {}: {e}",
            config.agent.state_dir.display()
        )
    })?;
    // One agent per state folder: a second one would share the spool, the learned digests and
    // the control socket.
    let lock = service::StateLock::acquire(&config.agent.state_dir)?;
    let previous_run = lock.previous();
    let this_run = lock.record_start().map_err(|e| {
        anyhow::anyhow!(
            "cannot write the run record in {}: {e}",
            config.agent.state_dir.display()
        )
    })?;
    let notifier = service::Notifier::from_env()
        .map_err(|e| tracing::warn!("sd_notify unavailable: {e}"))
        .ok()
        .flatten()
        .map(Arc::new);
    let watchdog = notifier.as_ref().and(service::watchdog_from_env());
    let origin = Origin {
        host_id: config.agent.host_id.clone().unwrap_or_else(host_id),
        hostname: crate::inventory::host::hostname(),
    };
    let (events, events_rx) = sinks::event_log::EventSink::new(config.agent.event_queue);
    let (notices, notices_rx) = enforce::notifier::NoticeSink::new(&config.notify);
    let learned =
        crate::policy::learned::LearnedSet::load(&config.agent.state_dir).unwrap_or_default();
    let policy = PolicyInForce::new(policy_path, loaded, &learned, source);
    let shared = Shared::new(config, policy, origin, events, notices)?;
    if let Some(w) = watchdog {
        shared.liveness.set_idle_wake(service::idle_wake_for(w));
    }

    enforce::notifier::start(&shared, notices_rx)?;
    let sink_threads = start_sinks(&shared, events_rx, started)?;
    verdict::learn::start(&shared)?;
    verdict::learn::report_started(&shared);
    let (marker, install) = start_sensors(&shared);

    let summary = shared.parts.summary();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let degraded = unsafe { libc::geteuid() } != 0;
    let active = shared.policy.active();
    let info = active.loaded.policy.info();
    tracing::info!(
        "interdict agent started{}: policy {} {} ({}); sensors: {summary}",
        if degraded {
            " WITHOUT ROOT (degraded: no blocking, no kills of other users' processes)"
        } else {
            ""
        },
        info.name,
        info.version,
        info.mode,
    );
    if let Some(prev) = previous_run.filter(|r| r.stopped.is_none()) {
        tracing::warn!("{}", service::unclean_stop_message(&prev));
        let mut e = shared.event(EventKind::AgentStopped);
        e.message = Some(service::unclean_stop_message(&prev));
        shared.emit(e);
    }
    let mut e = shared.event(EventKind::AgentStarted);
    e.message = Some(summary);
    shared.emit(e);
    if let Some(why) = bundle_note {
        tracing::error!("the signed bundle kept in the state folder is not used: {why}");
        let mut e = shared.event(EventKind::PolicyRejected);
        e.message = Some(format!(
            "the signed bundle kept in the state folder is not used: {why}; the policy file is in force"
        ));
        shared.emit(e);
        metrics::inc(&shared.metrics.c.policies_rejected);
    }
    let mut e = shared.event(EventKind::PolicyApplied);
    e.message = Some(format!(
        "initial policy, from {}",
        shared.policy.active().source.describe()
    ));
    shared.emit(e);
    metrics::inc(&shared.metrics.c.policies_applied);

    let reloader = Reloader {
        shared: shared.clone(),
        marker,
        install,
    };
    // Start-up work off the async thread: mark banned scripts, sweep what already runs.
    reloader.after_change("start-up");
    // Signed bundles, approved digests and exceptions from the collector.
    fleet::start(reloader.clone())?;

    // Reloads: SIGHUP, the control socket, the policy file changing.
    let (reload_tx, mut reload_rx) = mpsc::channel::<oneshot::Sender<ReloadReply>>(16);
    let (file_tx, mut file_rx) = mpsc::channel::<()>(1);
    let _watcher = reload::watch_policy(&shared.policy.path, file_tx)
        .map_err(|e| tracing::warn!("policy file watch unavailable: {e}"))
        .ok();
    let listener = control::listen(&shared);
    if let Err(e) = &listener {
        tracing::error!(
            "control socket {}: {e}",
            shared.config.agent.control_socket.display()
        );
    }
    let control = tokio::spawn(control::serve(shared.clone(), listener, started, reload_tx));
    // Ready for the service manager: the sensors are up and `interdict status` answers.
    if let Some(n) = &notifier {
        let parts: Vec<String> = shared
            .parts
            .rows()
            .iter()
            .map(|r| format!("{} {}", r.name, r.state.as_str()))
            .collect();
        n.send_or_log(&format!(
            "READY=1\nMAINPID={}\nSTATUS=policy {} {} ({}); {}",
            std::process::id(),
            info.name,
            info.version,
            info.mode,
            parts.join(", ")
        ));
        if let Some(w) = watchdog {
            service::start_watchdog(shared.clone(), n.clone(), w)?;
        }
    }
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let why = loop {
        tokio::select! {
            _ = hup.recv() => {
                let r = reloader.reload("SIGHUP").await;
                tell_reload(notifier.as_deref(), &r);
            }
            Some(reply) = reload_rx.recv() => {
                let r = reloader.reload("interdict reload").await;
                tell_reload(notifier.as_deref(), &r);
                let _ = reply.send(r);
            }
            Some(()) = file_rx.recv() => {
                // Editors write in several steps: let the file settle.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while file_rx.try_recv().is_ok() {}
                let r = reloader.reload("policy file changed").await;
                tell_reload(notifier.as_deref(), &r);
            }
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
        }
    };
    tracing::info!("interdict agent stopping ({why})");
    if let Some(n) = &notifier {
        n.send_or_log(&format!("STOPPING=1\nSTATUS=stopping ({why})"));
    }
    let mut e = shared.event(EventKind::AgentStopped);
    e.message = Some(format!(
        "stopped by {why}; counters: {}",
        serde_json::to_string(&shared.metrics.c.snapshot())?
    ));
    shared.emit(e);
    shared.shutdown.trigger();
    if shared.config.install.watch {
        install_watch::save_hash_cache(&shared);
    }
    let _ = control.await;
    drop(reloader);
    drop(shared);
    // The writer ends when every part has let go of the event queue; the shipper then delivers
    // what is left (agent_stopped among it), each within a bound.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sink_threads.writer.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !sink_threads.writer_done.load(Ordering::SeqCst) {
        tracing::warn!("the event writer did not finish within 5 s");
    }
    // The syslog sink closes its connection (TLS with close_notify) once it is done.
    for t in [sink_threads.shipper, sink_threads.syslog]
        .into_iter()
        .flatten()
    {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !t.is_finished() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    if let Err(e) = lock.record_stop(&this_run, why) {
        tracing::warn!("cannot record the clean stop: {e}");
    }
    Ok(exit::OK)
}

/// Tell the service manager what a reload did (`systemctl status` shows it).
fn tell_reload(notifier: Option<&service::Notifier>, r: &ReloadReply) {
    if let Some(n) = notifier {
        let first = r.message.lines().next().unwrap_or_default();
        n.status(&if r.applied {
            format!("reloaded: {first}")
        } else {
            format!("reload rejected, the last good policy stays in force: {first}")
        });
    }
}

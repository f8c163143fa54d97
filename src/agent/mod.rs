//! `interdict agent`: the root service that stops banned tools at launch.
//!
//! Sensors (each with its own threads, each watching the shutdown signal):
//! - [`fanotify`]: pre-exec deny on the marked mounts, and the script guard;
//! - [`proc_connector`]: every exec, killing what got through;
//! - [`sweep`]: all running processes at start-up and after every policy change; periodic
//!   polling when neither kernel sensor runs.
//!
//! Events go through a bounded queue to the local JSONL event log; the policy is reloaded on
//! SIGHUP, `interdict reload` and changes to the policy file, and a policy that does not validate
//! is rejected with the last good one kept in force.

pub mod config;
pub mod control;
pub mod fanotify;
pub mod install_watch;
pub mod judge;
pub mod metrics;
pub mod proc_connector;
pub mod ship;
pub mod state;
pub mod sweep;
pub mod syslog;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use interdict_event::{Event, EventKind, Origin};
use tokio::sync::{mpsc, oneshot};

use crate::policy_file;
use control::ReloadReply;
use state::Shared;

/// Exit codes of `interdict agent`.
pub mod exit {
    /// Stopped by SIGTERM or SIGINT.
    pub const OK: u8 = 0;
    /// The configuration or the policy is invalid, or the agent could not start.
    pub const ERROR: u8 = 2;
}

fn host_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("hostname:{}", crate::host::hostname()))
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
    let Some(loaded) = policy_file::load_or_print(policy_path) else {
        return Ok(exit::ERROR);
    };
    if let (Some(p), Some(_)) = (config_path, &config.enroll_secret) {
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(policy_path.to_path_buf(), config, loaded))
}

async fn run_async(
    policy_path: PathBuf,
    config: config::AgentConfig,
    loaded: policy_file::LoadedPolicy,
) -> anyhow::Result<u8> {
    let started = Instant::now();
    let origin = Origin {
        host_id: host_id(),
        hostname: crate::host::hostname(),
    };
    let (sink, events_rx) = state::EventSink::new(config.event_queue);
    let (notices, notices_rx) = state::NoticeSink::new(config.notify, config.notify_queue);
    let shared = state::shared(config, policy_path, loaded, origin, sink, notices)?;
    match notices_rx {
        Some(rx) => {
            let s = shared.clone();
            std::thread::Builder::new()
                .name("notifier".into())
                .spawn(move || notifier(s, rx))?;
            shared.set_sensor(
                "notifier",
                "running",
                format!(
                    "desktop {}, terminal {}, at most one notice per user and rule every {} s",
                    on_off(shared.config.notify_desktop),
                    on_off(shared.config.notify_terminal),
                    shared.config.notify_interval_s
                ),
            );
        }
        None => shared.set_sensor("notifier", "disabled", "[notify] enabled = false"),
    }
    // Spool first (when a collector is configured): every event is numbered, chained and
    // appended there before the shipper or anything else sees it.
    let spool_dir = shared.config.state_dir.join("spool");
    let (wake_tx, wake_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let (syslog_wake_tx, syslog_wake_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let mut consumers = Vec::new();
    if shared.config.collector_url.is_some() {
        consumers.push("acked");
    }
    if shared.config.syslog_address.is_some() {
        consumers.push("syslog.acked");
    }
    let spool = if consumers.is_empty() {
        None
    } else {
        let cap = shared.config.spool_cap_mib << 20;
        let s = crate::spool::Spool::open(&spool_dir, cap)
            .map_err(|e| anyhow::anyhow!("cannot open the spool {}: {e}", spool_dir.display()))?;
        crate::spool::set_consumers(&spool_dir, &consumers)?;
        Some(s)
    };
    if let Some(s) = &spool {
        if s.torn_bytes > 0 {
            tracing::warn!(
                "spool: cut a torn tail of {} bytes (a write cut short by a crash)",
                s.torn_bytes
            );
        }
    }
    let writer = tokio::task::spawn_blocking({
        let (path, metrics) = (shared.config.event_log.clone(), shared.metrics.clone());
        let origin = shared.origin.clone();
        let wakes = vec![wake_tx, syslog_wake_tx];
        move || {
            write_events(
                &path,
                &metrics,
                events_rx,
                spool.map(|s| (s, origin, wakes)),
            )
        }
    });
    if let Some(address) = shared.config.syslog_address.clone() {
        let cfg = syslog::SyslogConfig {
            address: address.clone(),
            tls: shared.config.syslog_tls,
            ca_file: shared.config.syslog_ca.clone(),
            facility: shared.config.syslog_facility,
        };
        let s = shared.clone();
        let (metrics, dir) = (shared.metrics.clone(), spool_dir.clone());
        std::thread::Builder::new()
            .name("syslog".into())
            .spawn(move || {
                syslog::run(cfg, dir, metrics, syslog_wake_rx, move || {
                    s.shutdown.is_triggered()
                })
            })?;
        let how = if shared.config.syslog_tls {
            "TLS"
        } else {
            "TCP"
        };
        shared.set_sensor(
            "syslog",
            "running",
            format!("RFC 5424 over {how} to {address}"),
        );
    }
    if let Some(url) = shared.config.collector_url.clone() {
        let cfg = ship::ShipConfig {
            url: url.clone(),
            enroll_secret: shared.config.enroll_secret.clone(),
            token_file: shared
                .config
                .token_file
                .clone()
                .unwrap_or_else(|| shared.config.state_dir.join("collector.token")),
            batch: shared.config.ship_batch,
            ca_file: shared.config.collector_ca.clone(),
            client_cert: shared.config.client_cert.clone(),
            client_key: shared.config.client_key.clone(),
        };
        // A bad CA or client certificate is a configuration error: say so at start.
        if cfg.client_cert.is_some() != cfg.client_key.is_some() {
            anyhow::bail!("[collector]: client_cert and client_key go together");
        }
        ship::client(&cfg).map_err(|e| anyhow::anyhow!("[collector]: {e}"))?;
        let s = shared.clone();
        let host = (
            shared.origin.host_id.clone(),
            shared.origin.hostname.clone(),
        );
        let (metrics, dir) = (shared.metrics.clone(), spool_dir.clone());
        std::thread::Builder::new()
            .name("shipper".into())
            .spawn(move || {
                ship::run(cfg, dir, host, metrics, wake_rx, move || {
                    s.shutdown.is_triggered()
                })
            })?;
        shared.set_sensor("shipper", "running", format!("to {url}"));
        if shared.config.heartbeat_s > 0 {
            let s = shared.clone();
            std::thread::Builder::new()
                .name("heartbeat".into())
                .spawn(move || heartbeat(s, started))?;
        }
    }

    // The learner: hashes files that path and script rules matched at exec time (off the
    // answering path) and adds their digests to the rule.
    if let Some(rx) = shared.learn_rx.lock().expect("learn_rx poisoned").take() {
        let s = shared.clone();
        std::thread::Builder::new()
            .name("learner".into())
            .spawn(move || learner(s, rx))?;
    }

    // Sensors.
    let cfg = shared.config.clone();
    let marker = if cfg.fanotify {
        match fanotify::start(shared.clone()) {
            Ok(m) => Some(m),
            Err(why) => {
                shared.set_sensor("fanotify", "failed", why);
                None
            }
        }
    } else {
        shared.set_sensor("fanotify", "disabled", "[exec] fanotify = false");
        None
    };
    if cfg.proc_connector {
        if let Err(why) = proc_connector::start(shared.clone()) {
            shared.set_sensor("proc_connector", "failed", why);
        }
    } else {
        shared.set_sensor(
            "proc_connector",
            "disabled",
            "[exec] proc_connector = false",
        );
    }
    let kernel_sensors = marker.is_some()
        || shared
            .proc_connector_running
            .load(std::sync::atomic::Ordering::SeqCst);
    let poll_ms = match (cfg.poll_interval_ms, kernel_sensors) {
        (0, true) => None,
        (0, false) => Some(2000),
        (ms, _) => Some(ms),
    };
    match poll_ms {
        Some(ms) => {
            if let Err(why) = sweep::start_polling(shared.clone(), Duration::from_millis(ms)) {
                shared.set_sensor("poll", "failed", why);
            }
        }
        None => shared.set_sensor(
            "poll",
            "idle",
            "sweeps at start-up and after policy changes",
        ),
    }
    match (&marker, cfg.script_guard) {
        (Some(_), true) => shared.set_sensor("script_guard", "running", "marking banned scripts"),
        (None, true) => shared.set_sensor("script_guard", "failed", "needs the fanotify guard"),
        (_, false) => shared.set_sensor("script_guard", "disabled", "[exec] script_guard = false"),
    }

    let summary = {
        let s = shared.sensors.lock().expect("sensors poisoned");
        s.iter()
            .map(|x| format!("{}={} ({})", x.name, x.state, x.detail))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let degraded = unsafe { libc::geteuid() } != 0;
    tracing::info!(
        "interdict agent started{}: policy {} {} ({}); sensors: {summary}",
        if degraded {
            " WITHOUT ROOT (degraded: no blocking, no kills of other users' processes)"
        } else {
            ""
        },
        shared.active.load().loaded.policy.info().name,
        shared.active.load().loaded.policy.info().version,
        shared.active.load().loaded.policy.info().mode,
    );
    let mut e = shared.event(EventKind::AgentStarted);
    e.message = Some(summary);
    shared.emit(e);
    let mut e = shared.event(EventKind::PolicyApplied);
    e.message = Some("initial policy".into());
    shared.emit(e);
    metrics::inc(&shared.metrics.c.policies_applied);

    let install = if cfg.install_watch {
        install_watch::load_hash_cache(&shared);
        let guard = if cfg.script_guard {
            marker.clone()
        } else {
            None
        };
        match install_watch::start(shared.clone(), guard) {
            Ok(tx) => Some(tx),
            Err(why) => {
                shared.set_sensor("install_watch", "failed", why);
                None
            }
        }
    } else {
        shared.set_sensor("install_watch", "disabled", "[install] watch = false");
        None
    };

    // Start-up work off the async thread: mark banned scripts, sweep what already runs.
    let marker = Arc::new(marker);
    refresh_after_policy_change(&shared, &marker);

    // Reloads: SIGHUP, the control socket, the policy file changing.
    let (reload_tx, mut reload_rx) = mpsc::channel::<oneshot::Sender<ReloadReply>>(16);
    let (file_tx, mut file_rx) = mpsc::channel::<()>(1);
    let _watcher = watch_policy(&shared.policy_path, file_tx)
        .map_err(|e| tracing::warn!("policy file watch unavailable: {e}"))
        .ok();
    let control = tokio::spawn(control::serve(shared.clone(), started, reload_tx));
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => { reload(&shared, &marker, &install, "SIGHUP").await; }
            Some(reply) = reload_rx.recv() => {
                let r = reload(&shared, &marker, &install, "interdict reload").await;
                let _ = reply.send(r);
            }
            Some(()) = file_rx.recv() => {
                // Editors write in several steps: let the file settle.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while file_rx.try_recv().is_ok() {}
                reload(&shared, &marker, &install, "policy file changed").await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("interdict agent stopping");
    let mut e = shared.event(EventKind::AgentStopped);
    e.message = Some(format!(
        "counters: {}",
        serde_json::to_string(&shared.metrics.c.snapshot())?
    ));
    shared.emit(e);
    shared.shutdown.trigger();
    if shared.config.install_watch {
        install_watch::save_hash_cache(&shared);
    }
    let _ = control.await;
    drop(shared);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    Ok(exit::OK)
}

/// Validate the policy file; if it is valid and different, put it in force, flush cached
/// decisions, re-mark scripts and sweep. The last good policy stays otherwise.
async fn reload(
    shared: &Arc<Shared>,
    marker: &Arc<Option<fanotify::ScriptMarker>>,
    install: &Option<std::sync::mpsc::Sender<install_watch::WatchMsg>>,
    why: &str,
) -> ReloadReply {
    let path = shared.policy_path.clone();
    let loaded = tokio::task::spawn_blocking(move || policy_file::load(&path))
        .await
        .expect("policy load does not panic");
    match loaded {
        Ok(l) => {
            let current = shared.active.load();
            if l.sha256 == current.loaded.sha256 {
                return ReloadReply {
                    applied: true,
                    message: format!("policy unchanged ({}); nothing to do", l.sha256),
                };
            }
            let generation = current.generation + 1;
            let msg = format!(
                "policy {} {} applied ({why}); generation {generation}",
                l.policy.info().name,
                l.policy.info().version
            );
            for w in &l.warnings.0 {
                tracing::warn!("{w}");
            }
            let mut l = l;
            shared
                .learned
                .lock()
                .expect("learned poisoned")
                .apply(&mut l.policy);
            shared.active.store(Arc::new(state::Active {
                loaded: l,
                generation,
            }));
            metrics::inc(&shared.metrics.c.policies_applied);
            tracing::info!("{msg}");
            let mut e = shared.event(EventKind::PolicyApplied);
            e.message = Some(msg.clone());
            shared.emit(e);
            refresh_after_policy_change(shared, marker);
            if let Some(tx) = install {
                let _ = tx.send(install_watch::WatchMsg::Rescan("policy changed"));
            }
            ReloadReply {
                applied: true,
                message: msg,
            }
        }
        Err(err) => {
            metrics::inc(&shared.metrics.c.policies_rejected);
            let text = err.to_string();
            tracing::error!("policy rejected ({why}); the previous policy stays in force:\n{text}");
            let mut e = shared.event(EventKind::PolicyRejected);
            e.message = Some(text.clone());
            shared.emit(e);
            ReloadReply {
                applied: false,
                message: format!("policy rejected; the previous policy stays in force:\n{text}"),
            }
        }
    }
}

fn refresh_after_policy_change(shared: &Arc<Shared>, marker: &Arc<Option<fanotify::ScriptMarker>>) {
    let (shared, marker) = (shared.clone(), marker.clone());
    std::thread::spawn(move || {
        warn_about_protected(&shared);
        if let (Some(m), true) = (marker.as_ref(), shared.config.script_guard) {
            let n = mark_scripts(&shared, m);
            shared.set_sensor(
                "script_guard",
                "running",
                format!("{n} banned script file(s) marked"),
            );
        }
        sweep::sweep(&shared, "sweep");
    });
}

/// Say so, once per policy, when the policy would block or kill a file the agent protects (its
/// own binary, PID 1's executable, the critical system programs): those are never enforced on.
fn warn_about_protected(shared: &Shared) {
    let active = shared.active.load_full();
    let policy = &active.loaded.policy;
    let mut paths: Vec<PathBuf> = ["/proc/self/exe", "/proc/1/exe"]
        .iter()
        .filter_map(|p| std::fs::read_link(p).ok())
        .collect();
    paths.extend(interdict_policy::CRITICAL_PATHS.iter().map(PathBuf::from));
    for path in paths {
        let Ok(canonical) = std::fs::canonicalize(&path) else {
            continue;
        };
        let mut facts = interdict_policy::Facts {
            exe_path: Some(canonical.clone()),
            ..Default::default()
        };
        facts.add_name(path.file_name().map(|n| n.to_string_lossy().into_owned()));
        facts.add_name(
            canonical
                .file_name()
                .map(|n| n.to_string_lossy().into_owned()),
        );
        if policy.needs_sha256() {
            facts.exe_sha256 = shared.memo.hash_path(&canonical, false).ok();
        }
        let Some(d) = policy.evaluate(&facts) else {
            continue;
        };
        if !matches!(
            judge::plan(policy, Some(&d), shared.today()),
            judge::Plan::Stop | judge::Plan::Kill
        ) {
            continue;
        }
        let rule = &policy.rule(&d).id;
        tracing::warn!(
            "rule `{rule}` matches {}, which interdict protects: it will never be blocked or killed",
            canonical.display()
        );
        let mut e = shared.event(EventKind::ExecReported);
        e.outcome = Some(interdict_event::Outcome::Protected);
        e.rule = Some(judge::rule_ref(policy, &d, &facts));
        e.file = judge::file_ref(&facts, None);
        e.message = Some("the policy would block a protected file; refused".into());
        shared.emit(e);
    }
}

/// Find the banned interpreter scripts under the script roots and mark each for the guard.
fn mark_scripts(shared: &Shared, marker: &fanotify::ScriptMarker) -> usize {
    let active = shared.active.load_full();
    let policy = &active.loaded.policy;
    if !policy.has_scripts() {
        return 0;
    }
    let roots = if shared.config.script_roots.is_empty() {
        crate::installed::default_roots(&shared.accounts)
    } else {
        shared.config.script_roots.clone()
    };
    let (roots, _) = crate::installed::normalize_roots(&roots, false);
    let mut n = 0;
    for root in roots {
        for entry in walkdir::WalkDir::new(root)
            .follow_links(false)
            .into_iter()
            .flatten()
        {
            if entry.file_type().is_file()
                && policy.is_script_path(entry.path())
                && marker.mark(entry.path()).is_ok()
            {
                n += 1;
            }
        }
    }
    n
}

fn watch_policy(path: &Path, tx: mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let file = path.file_name().map(|f| f.to_os_string());
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if ev.kind.is_access() {
                return;
            }
            if ev
                .paths
                .iter()
                .any(|p| p.file_name().map(|f| f.to_os_string()) == file)
            {
                let _ = tx.try_send(());
            }
        }
    })?;
    // Watch the folder: editors replace the file rather than write it in place.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    w.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    Ok(w)
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// Deliver notices to employees: rate-limited per user and rule, terminal first (instant), then
/// the desktop. Failures are counted, never retried, never fatal.
fn notifier(shared: Arc<Shared>, rx: std::sync::mpsc::Receiver<crate::notify::Notice>) {
    use crate::notify::{DesktopBackend, LinuxDesktop, RateLimiter};
    let m = &shared.metrics.c;
    let mut limiter = RateLimiter::new(Duration::from_secs(shared.config.notify_interval_s));
    let desktop = LinuxDesktop {
        opener: shared.config.notify_opener.clone(),
        ..LinuxDesktop::default()
    };
    loop {
        let n = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(n) => n,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if shared.shutdown.is_triggered() {
                    return;
                }
                continue;
            }
            Err(_) => return,
        };
        if !limiter.allow(n.uid, &n.rule_id, Instant::now()) {
            metrics::inc(&m.notices_suppressed);
            continue;
        }
        if shared.config.notify_terminal && n.tty_nr.is_some() {
            match crate::notify::write_terminal(&n) {
                Ok(()) => metrics::inc(&m.notices_terminal),
                Err(_) => metrics::inc(&m.notices_failed),
            }
        }
        if shared.config.notify_desktop {
            match desktop.notify(&n) {
                Ok(()) => metrics::inc(&m.notices_sent),
                Err(e) => {
                    metrics::inc(&m.notices_failed);
                    tracing::debug!("notice for uid {} not shown: {e}", n.uid);
                }
            }
        }
    }
}

fn learner(shared: Arc<state::Shared>, rx: std::sync::mpsc::Receiver<state::LearnRequest>) {
    while !shared.shutdown.is_triggered() {
        let Ok(r) = rx.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        let digest = match r.digest {
            Some(d) => Some(d),
            None => shared.memo.hash_path(&r.path, false).ok(),
        };
        if let Some(d) = digest {
            shared.learn(&r.rule_id, d, &r.path, r.selector);
        }
    }
}

/// The agent's sign of life for the collector's fleet view, every `heartbeat_s`.
fn heartbeat(shared: Arc<state::Shared>, started: Instant) {
    let every = Duration::from_secs(shared.config.heartbeat_s);
    let mut next = Instant::now();
    while !shared.shutdown.is_triggered() {
        if Instant::now() >= next {
            let st = control::status(&shared, started);
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
                    "acked": crate::agent::ship::acked_record(&shared.config.state_dir.join("spool")),
                })
                .to_string(),
            );
            shared.emit(e);
            next = Instant::now() + every;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The spool, the origin stamped on its own notices, and the shipper's wake-up line.
type SpoolParts = (
    crate::spool::Spool,
    Origin,
    Vec<std::sync::mpsc::SyncSender<()>>,
);

/// The event writer: numbers, chains and appends each event to the spool first (when there is
/// one; fdatasync at most every 100 ms and whenever the queue runs empty), then appends one JSON
/// line to the local event log, flushing when the queue is empty. It ends when every sender is
/// gone (the agent's shared state dropped at shutdown).
fn write_events(
    path: &Path,
    metrics: &metrics::Metrics,
    mut rx: mpsc::Receiver<Event>,
    mut spool: Option<SpoolParts>,
) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path);
    let mut out = match file {
        Ok(f) => std::io::BufWriter::new(f),
        Err(e) => {
            tracing::error!("cannot open the event log {}: {e}", path.display());
            while rx.blocking_recv().is_some() {
                metrics::inc(&metrics.c.event_write_errors);
            }
            return;
        }
    };
    let mut last_sync = Instant::now();
    let sync = |spool: &mut Option<SpoolParts>| {
        if let Some((s, _, wakes)) = spool {
            if s.sync().is_err() {
                metrics::inc(&metrics.c.spool_errors);
            }
            for w in wakes.iter() {
                let _ = w.try_send(());
            }
        }
    };
    while let Some(e) = rx.blocking_recv() {
        let mut write = |mut e: Event, spool: &mut Option<SpoolParts>| {
            if let Some((s, origin, _)) = spool {
                match s.append(&mut e, origin) {
                    Ok(true) => metrics::inc(&metrics.c.spooled),
                    Ok(false) => metrics::inc(&metrics.c.spool_dropped),
                    Err(err) => {
                        metrics::inc(&metrics.c.spool_errors);
                        tracing::error!("spool write failed: {err}");
                    }
                }
            }
            if writeln!(out, "{}", e.to_json_line()).is_ok() {
                metrics::inc(&metrics.c.events_written);
            } else {
                metrics::inc(&metrics.c.event_write_errors);
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
            metrics::inc(&metrics.c.event_write_errors);
        }
    }
}

//! The proc connector: every exec on the machine, from the kernel over netlink
//! (`NETLINK_CONNECTOR`, `CN_IDX_PROC`), including short-lived processes, memfd execs and files
//! on unmarked mounts. Each exec is judged from `/proc/PID` and, when a rule says so, the process
//! is killed through a pidfd after its start time is checked. On a netlink overflow (`ENOBUFS`)
//! a full `/proc` sweep makes up for what was lost.
//!
//! Two threads: the **connector** (real-time priority where the kernel allows it, so that it
//! runs the moment an exec is reported) skips execs the fanotify guard found clean, stops
//! (`SIGSTOP`) a program the guard never held whose judging needs a hash (one on an unmarked
//! filesystem, or run by the dynamic loader), and hands every process left to the **judge**
//! thread (normal priority), which hashes, decides, kills or lets it continue. A program on a
//! filesystem the guard does not mark is so frozen within a netlink round trip of its exec,
//! instead of running for as long as hashing it takes. The judge queue holds 1,024 processes;
//! when it is full the connector judges the process itself.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use std::sync::mpsc::{SyncSender, TrySendError};

use super::{sweep, Part, PartState, StartError};
use crate::agent::enforce::kill::{freeze, Frozen};
use crate::agent::metrics::inc;
use crate::agent::shared::Shared;
use crate::inventory::procs::ProcessInfo;

const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_EXEC: u32 = 2;
/// The events this listener asks for. Kernels since 6.6 filter per listener when the
/// subscription carries a mask; older ones ignore it and send every process event.
const FILTER_MASK: u32 = PROC_EVENT_EXEC;
const NLMSG_HDRLEN: usize = 16;
const CN_MSG_LEN: usize = 20;

fn open_socket() -> std::io::Result<OwnedFd> {
    use rustix::net::netlink::{SocketAddrNetlink, CONNECTOR};
    use rustix::net::{bind, send, socket_with, AddressFamily, SendFlags, SocketFlags, SocketType};
    let sock = socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(CONNECTOR),
    )?;
    // A large receive buffer makes overflows rare under exec storms (root may force it).
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size_force(&sock, 8 << 20);
    bind(&sock, &SocketAddrNetlink::new(0, CN_IDX_PROC))?;
    // nlmsghdr + cn_msg + proc_input { op, event_type }: subscribe to exec events only. Kernels
    // before 6.6 read just the op and send every process event (the others are skipped below).
    let mut msg = [0u8; NLMSG_HDRLEN + CN_MSG_LEN + 8];
    let total = msg.len() as u32;
    msg[0..4].copy_from_slice(&total.to_ne_bytes());
    msg[4..6].copy_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
    msg[12..16].copy_from_slice(&std::process::id().to_ne_bytes());
    let cn = NLMSG_HDRLEN;
    msg[cn..cn + 4].copy_from_slice(&CN_IDX_PROC.to_ne_bytes());
    msg[cn + 4..cn + 8].copy_from_slice(&CN_VAL_PROC.to_ne_bytes());
    msg[cn + 16..cn + 18].copy_from_slice(&8u16.to_ne_bytes());
    msg[cn + CN_MSG_LEN..cn + CN_MSG_LEN + 4].copy_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
    msg[cn + CN_MSG_LEN + 4..].copy_from_slice(&FILTER_MASK.to_ne_bytes());
    send(&sock, &msg, SendFlags::empty())?;
    Ok(sock)
}

/// Start the proc connector thread, or say why it cannot run.
pub fn start(shared: Arc<Shared>) -> Result<(), StartError> {
    let sock = open_socket().map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => StartError::NotPermitted("root / CAP_NET_ADMIN"),
        Some(libc::EPROTONOSUPPORT) => StartError::Unsupported("kernel without the proc connector"),
        _ => StartError::Io {
            what: "netlink",
            source: e,
        },
    })?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(1024);
    let s = shared.clone();
    std::thread::Builder::new()
        .name("proc-judge".into())
        .spawn(move || judge_loop(s, rx))
        .map_err(StartError::io("proc judge thread"))?;
    std::thread::Builder::new()
        .name("proc-connector".into())
        .spawn(move || run(shared, sock, tx))
        .map_err(StartError::io("proc connector thread"))?;
    Ok(())
}

/// Work for the judge thread.
enum Job {
    /// A process, stopped while it is judged when that needs a hash.
    Judge(ProcessInfo, Option<Frozen>),
    /// Events were lost: look at every process.
    Sweep,
}

fn judge_loop(shared: Arc<Shared>, rx: std::sync::mpsc::Receiver<Job>) {
    use std::sync::mpsc::RecvTimeoutError;
    while !shared.shutdown.is_triggered() {
        match rx.recv_timeout(std::time::Duration::from_millis(500)) {
            Ok(Job::Judge(info, frozen)) => {
                sweep::judge(&shared, &info, Part::ProcConnector);
                drop(frozen);
            }
            Ok(Job::Sweep) => sweep::sweep(&shared, Part::ProcConnector),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Ask the kernel to run this thread before ordinary ones (`SCHED_FIFO`, lowest real-time
/// priority). It only receives events, stops processes and queues them: it never hashes.
fn realtime() -> bool {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: sched_setscheduler reads one sched_param from a valid pointer; pid 0 is the
    // calling thread.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
}

fn run(shared: Arc<Shared>, sock: OwnedFd, jobs: SyncSender<Job>) {
    let rt = realtime();
    shared.parts.set(
        Part::ProcConnector,
        PartState::Running,
        format!(
            "every exec, via netlink{}",
            if rt { " (real-time thread)" } else { "" }
        ),
    );
    let mut buf = vec![0u8; 64 * 1024];
    let why = loop {
        match shared.shutdown.wait_readable(&sock) {
            Ok(true) => {}
            Ok(false) => break None,
            Err(e) => break Some(format!("poll: {e}")),
        }
        // Drain every queued message before polling again: one wake-up per burst of execs.
        if let Some(why) = drain(&shared, &sock, &mut buf, &jobs) {
            break Some(why);
        }
    };
    match why {
        Some(w) => {
            shared
                .parts
                .set(Part::ProcConnector, PartState::Failed, w.clone());
            let mut e = shared.event(interdict_event::EventKind::SensorDegraded);
            e.sensor = Some(Part::ProcConnector.as_str().into());
            e.message = Some(w);
            shared.emit(e);
        }
        None => shared
            .parts
            .set(Part::ProcConnector, PartState::Stopped, "shut down"),
    }
}

/// Read and handle messages until the socket is empty. `Some(why)` on a fatal error.
fn drain(
    shared: &Shared,
    sock: &OwnedFd,
    buf: &mut [u8],
    jobs: &SyncSender<Job>,
) -> Option<String> {
    use rustix::net::{recv, RecvFlags};
    loop {
        let n = match recv(sock, &mut *buf, RecvFlags::DONTWAIT) {
            Ok((n, _)) => n,
            Err(rustix::io::Errno::AGAIN) => return None,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::NOBUFS) => {
                // Events were lost: look at everything that runs now.
                inc(&shared.metrics.c.netlink_overflows);
                if jobs.try_send(Job::Sweep).is_err() {
                    sweep::sweep(shared, Part::ProcConnector);
                }
                continue;
            }
            Err(e) => return Some(format!("recv: {e}")),
        };
        let mut off = 0;
        while off + NLMSG_HDRLEN <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
            if len < NLMSG_HDRLEN || off + len > n {
                break;
            }
            let body = &buf[off + NLMSG_HDRLEN..off + len];
            if body.len() >= CN_MSG_LEN + 24 {
                let ev = &body[CN_MSG_LEN..];
                let what = u32::from_ne_bytes(ev[0..4].try_into().expect("4 bytes"));
                if what == PROC_EVENT_EXEC {
                    let tgid = i32::from_ne_bytes(ev[20..24].try_into().expect("4 bytes"));
                    inc(&shared.metrics.c.proc_events);
                    on_exec(shared, tgid as u32, jobs);
                }
            }
            off += (len + 3) & !3;
        }
    }
}

/// A program the fanotify guard never held, whose judging needs its digest: one on a filesystem
/// the guard does not mark (yet), or one the dynamic loader runs. It is stopped while it is
/// hashed. (Interpreters running scripts are not: a stopped child would be taken for a
/// suspended job by an interactive shell. Banned scripts are guarded by their open marks.)
fn must_freeze(shared: &Shared, info: &ProcessInfo) -> bool {
    use std::os::unix::fs::MetadataExt;
    let active = shared.policy.active();
    let policy = &active.loaded.policy;
    if !shared.config.exec.freeze || !policy.needs_sha256() {
        return false;
    }
    use crate::inventory::procs::{
        interpreter, resolve_script, script_arg, Interpreter, ScriptArg,
    };
    let loader = info
        .exe
        .as_deref()
        .and_then(|e| e.file_name())
        .and_then(|n| n.to_str())
        .and_then(interpreter)
        == Some(Interpreter::Loader);
    if loader {
        // The program it was asked to run, as the process sees it.
        return match script_arg(Interpreter::Loader, &info.argv) {
            Some(ScriptArg::File(arg)) => {
                let program = resolve_script(info.pid, info.cwd.as_deref(), &arg);
                std::fs::metadata(program).is_ok_and(|m| policy.may_match_size(m.size()))
            }
            _ => false,
        };
    }
    std::fs::metadata(format!("/proc/{}/exe", info.pid))
        .is_ok_and(|m| !shared.is_marked_dev(m.dev()) && policy.may_match_size(m.size()))
}

fn on_exec(shared: &Shared, pid: u32, jobs: &SyncSender<Job>) {
    if pid == std::process::id() {
        return;
    }
    let Some(info) = sweep::triage(shared, pid) else {
        return;
    };
    let frozen = if must_freeze(shared, &info) {
        info.start_ticks
            .and_then(|t| freeze(&shared.protected, pid, t))
    } else {
        None
    };
    if frozen.is_some() {
        inc(&shared.metrics.c.frozen);
    }
    // Then mark the filesystem it came from, if it is not yet: the next exec there is held.
    sweep::cover(shared, pid);
    match jobs.try_send(Job::Judge(info, frozen)) {
        Ok(()) => {}
        Err(TrySendError::Full(Job::Judge(info, frozen)))
        | Err(TrySendError::Disconnected(Job::Judge(info, frozen))) => {
            sweep::judge(shared, &info, Part::ProcConnector);
            drop(frozen);
        }
        Err(_) => {}
    }
}

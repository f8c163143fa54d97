//! The proc connector: every exec on the machine, from the kernel over netlink
//! (`NETLINK_CONNECTOR`, `CN_IDX_PROC`), including short-lived processes, memfd execs and files
//! on unmarked mounts. Each exec is judged from `/proc/PID` and, when a rule says so, the process
//! is killed through a pidfd after its start time is checked. On a netlink overflow (`ENOBUFS`)
//! a full `/proc` sweep makes up for what was lost.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::agent::metrics::inc;
use crate::agent::sensors::sweep;
use crate::agent::shared::Shared;

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
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_CONNECTOR,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // A large receive buffer makes overflows rare under exec storms (root may force it).
    let size: libc::c_int = 8 << 20;
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = CN_IDX_PROC;
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
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
    let r = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(sock)
}

/// Start the proc connector thread, or say why it cannot run.
pub fn start(shared: Arc<Shared>) -> Result<(), String> {
    let sock = open_socket().map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "not permitted (needs root / CAP_NET_ADMIN)".into()
        }
        Some(libc::EPROTONOSUPPORT) => "kernel without the proc connector".into(),
        _ => format!("netlink: {e}"),
    })?;
    shared.proc_connector_running.store(true, Ordering::SeqCst);
    shared.set_sensor("proc_connector", "running", "every exec, via netlink");
    std::thread::Builder::new()
        .name("proc-connector".into())
        .spawn(move || run(shared, sock))
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn run(shared: Arc<Shared>, sock: OwnedFd) {
    let mut buf = vec![0u8; 64 * 1024];
    let why = loop {
        match shared.shutdown.wait_readable(sock.as_raw_fd()) {
            Ok(true) => {}
            Ok(false) => break None,
            Err(e) => break Some(format!("poll: {e}")),
        }
        // Drain every queued message before polling again: one wake-up per burst of execs.
        if let Some(why) = drain(&shared, &sock, &mut buf) {
            break Some(why);
        }
    };
    shared.proc_connector_running.store(false, Ordering::SeqCst);
    match why {
        Some(w) => {
            shared.set_sensor("proc_connector", "failed", w.clone());
            let mut e = shared.event(interdict_event::EventKind::SensorDegraded);
            e.sensor = Some("proc_connector".into());
            e.message = Some(w);
            shared.emit(e);
        }
        None => shared.set_sensor("proc_connector", "stopped", "shut down"),
    }
}

/// Read and handle messages until the socket is empty. `Some(why)` on a fatal error.
fn drain(shared: &Shared, sock: &OwnedFd, buf: &mut [u8]) -> Option<String> {
    loop {
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return None,
                Some(libc::EINTR) => continue,
                Some(libc::ENOBUFS) => {
                    // Events were lost: look at everything that runs now.
                    inc(&shared.metrics.c.netlink_overflows);
                    sweep::sweep(shared, "proc_connector");
                    continue;
                }
                _ => return Some(format!("recv: {e}")),
            }
        }
        let n = n as usize;
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
                    on_exec(shared, tgid as u32);
                }
            }
            off += (len + 3) & !3;
        }
    }
}

fn on_exec(shared: &Shared, pid: u32) {
    if pid == std::process::id() {
        return;
    }
    sweep::judge_pid(shared, pid, "proc_connector");
}

//! Telling the employee: what was stopped, why, and what to use instead.
//!
//! A [`Notice`] is platform-neutral. Delivery has two channels:
//! - the **terminal** the process ran in: one short line, written to its controlling terminal
//!   (the shell's own "Permission denied" explains nothing);
//! - the **desktop**: on Linux a Freedesktop notification on the user's session bus
//!   (`/run/user/UID/bus`), sent by this same binary run as that user (`interdict notify-helper`),
//!   never by running `notify-send` or any program of the user's as root. A macOS backend
//!   (UserNotifications) or a Windows one (toast notifications) would be another
//!   [`DesktopBackend`].
//!
//! The agent rate-limits notices per user and rule ([`RateLimiter`]); every failure is quiet and
//! counted.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What happened, from the employee's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// The program was not allowed to start.
    Blocked,
    /// The program was stopped while running.
    Killed,
    /// The program ran; its use was recorded.
    Reported,
    /// The program ran, but will be blocked (monitor mode, or a later `enforce_from`).
    Warned,
    /// The program was found installed.
    Installed,
    /// The program was found installed and moved into quarantine.
    Quarantined,
}

/// One message for one employee.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// What happened.
    pub kind: NoticeKind,
    /// The employee's user id.
    pub uid: u32,
    /// The rule id (for rate limiting and the link).
    pub rule_id: String,
    /// The tool's name.
    pub tool: String,
    /// The review's reason.
    pub reason: String,
    /// Risk level.
    pub risk: String,
    /// The policy's or rule's message.
    pub message: Option<String>,
    /// The approved alternative.
    pub alternative: Option<String>,
    /// Where to read more, placeholders expanded.
    pub more_info_url: Option<String>,
    /// The program's path.
    pub path: String,
    /// The controlling terminal of the process (`tty_nr`), if it had one.
    pub tty_nr: Option<u32>,
}

impl Notice {
    /// The notification's title.
    pub fn summary(&self) -> String {
        match self.kind {
            NoticeKind::Blocked => format!("Blocked: {}", self.tool),
            NoticeKind::Killed => format!("Stopped: {}", self.tool),
            NoticeKind::Reported => format!("Not approved: {}", self.tool),
            NoticeKind::Warned => format!("Will be blocked: {}", self.tool),
            NoticeKind::Installed => format!("Not allowed here: {}", self.tool),
            NoticeKind::Quarantined => format!("Quarantined: {}", self.tool),
        }
    }

    /// The notification's text: why, what to use instead, where to read more.
    pub fn body(&self) -> String {
        let mut b = String::new();
        if self.kind == NoticeKind::Installed {
            b.push_str(&format!(
                "You installed it at {}, which is not allowed. ",
                self.path
            ));
        }
        b.push_str(&format!(
            "{} ({} risk).",
            self.reason.trim_end_matches('.'),
            self.risk
        ));
        if let Some(m) = &self.message {
            b.push('\n');
            b.push_str(m);
        }
        if let Some(a) = &self.alternative {
            b.push_str("\nInstead: ");
            b.push_str(a);
        }
        if let Some(u) = &self.more_info_url {
            b.push_str("\nMore: ");
            b.push_str(u);
        }
        b
    }

    /// Urgency: critical (2) for blocks and kills, normal (1) otherwise.
    pub fn urgency(&self) -> u8 {
        match self.kind {
            NoticeKind::Blocked | NoticeKind::Killed => 2,
            NoticeKind::Reported | NoticeKind::Warned | NoticeKind::Installed => 1,
            NoticeKind::Quarantined => 2,
        }
    }

    /// The one line written to the terminal.
    pub fn terminal_line(&self) -> String {
        let what = match self.kind {
            NoticeKind::Blocked => "blocked",
            NoticeKind::Killed => "stopped",
            NoticeKind::Reported => "reported the use of",
            NoticeKind::Warned => "will soon block",
            NoticeKind::Installed => "found the banned install of",
            NoticeKind::Quarantined => "quarantined",
        };
        let mut line = format!(
            "interdict: {what} {} ({}): {}",
            self.tool, self.path, self.reason
        );
        if let Some(a) = &self.alternative {
            line.push_str(". Instead: ");
            line.push_str(a);
        }
        if let Some(u) = &self.more_info_url {
            line.push_str(". More: ");
            line.push_str(u);
        }
        line
    }
}

/// At most one notice per user and rule per interval; the rest are counted, not sent.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    last: HashMap<(u32, String), Instant>,
}

impl RateLimiter {
    /// A limiter with this interval.
    pub fn new(interval: Duration) -> RateLimiter {
        RateLimiter {
            interval,
            last: HashMap::new(),
        }
    }

    /// True if a notice for (uid, rule) may go out now (and remember that it did).
    pub fn allow(&mut self, uid: u32, rule: &str, now: Instant) -> bool {
        if self.last.len() > 10_000 {
            let interval = self.interval;
            self.last.retain(|_, t| now.duration_since(*t) < interval);
        }
        match self.last.get(&(uid, rule.to_string())) {
            Some(t) if now.duration_since(*t) < self.interval => false,
            _ => {
                self.last.insert((uid, rule.to_string()), now);
                true
            }
        }
    }
}

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The user has no session bus (not logged in graphically, or logged out).
    #[error("no session bus for uid {0}")]
    NoSessionBus(u32),
    /// The process had no terminal we could write to.
    #[error("no terminal")]
    NoTerminal,
    /// The helper failed or timed out.
    #[error("{0}")]
    Failed(String),
}

/// A way to show a notice on the employee's desktop.
pub trait DesktopBackend: Send + Sync {
    /// Show `notice` to its user.
    fn notify(&self, notice: &Notice) -> Result<(), NotifyError>;
}

/// The terminal device for a `tty_nr`: `/dev/pts/N` or `/dev/ttyN`, checked to be that very
/// character device.
pub fn tty_path(tty_nr: u32) -> Option<PathBuf> {
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
    let path = match major {
        136..=143 => PathBuf::from(format!("/dev/pts/{}", (major - 136) * 256 + minor)),
        4 if minor < 64 => PathBuf::from(format!("/dev/tty{minor}")),
        _ => return None,
    };
    let m = std::fs::metadata(&path).ok()?;
    let want = libc::makedev(major, minor);
    (m.file_type().is_char_device() && m.rdev() == want).then_some(path)
}

/// Write the notice's line to the process's terminal.
pub fn write_terminal(notice: &Notice) -> Result<(), NotifyError> {
    let path = notice
        .tty_nr
        .and_then(tty_path)
        .ok_or(NotifyError::NoTerminal)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| {
            NotifyError::Failed(format!("{}: {}", path.display(), crate::io_reason(&e)))
        })?;
    f.write_all(format!("\r\n{}\r\n", notice.terminal_line()).as_bytes())
        .map_err(|e| NotifyError::Failed(crate::io_reason(&e)))
}

/// Linux desktop notifications: `interdict notify-helper`, run as the user with only that user's
/// session bus address in its environment, sends the notification over D-Bus.
#[derive(Debug, Clone)]
pub struct LinuxDesktop {
    /// The binary to run as the helper (this one).
    pub exe: PathBuf,
    /// Where session buses live (`/run/user`).
    pub runtime_root: PathBuf,
    /// How long the helper may take to deliver.
    pub timeout: Duration,
    /// What opens the "More info" link (default `xdg-open`, run as the user).
    pub opener: Option<PathBuf>,
}

impl Default for LinuxDesktop {
    fn default() -> Self {
        LinuxDesktop {
            exe: PathBuf::from("/proc/self/exe"),
            runtime_root: PathBuf::from("/run/user"),
            timeout: Duration::from_secs(5),
            opener: None,
        }
    }
}

impl DesktopBackend for LinuxDesktop {
    fn notify(&self, notice: &Notice) -> Result<(), NotifyError> {
        let bus = self.runtime_root.join(notice.uid.to_string()).join("bus");
        match std::fs::metadata(&bus) {
            Ok(m) if m.file_type().is_socket() && m.uid() == notice.uid => {}
            _ => return Err(NotifyError::NoSessionBus(notice.uid)),
        }
        let gid = crate::inventory::host::Accounts::load()
            .by_uid(notice.uid)
            .map(|a| a.gid)
            .unwrap_or(notice.uid);
        let mut child = Command::new(&self.exe)
            .arg("notify-helper")
            .env_clear()
            .env(
                "DBUS_SESSION_BUS_ADDRESS",
                format!("unix:path={}", bus.display()),
            )
            .uid(notice.uid)
            .gid(gid)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| NotifyError::Failed(format!("notify helper: {e}")))?;
        let json = serde_json::to_vec(notice).expect("notices serialize");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&json);
        }
        // Delivered once the helper says `sent`; it may stay to wait for a click on the link,
        // so it is reaped in the background.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
            let _ = tx.send(line);
        });
        let sent = matches!(rx.recv_timeout(self.timeout), Ok(l) if l.starts_with("sent "));
        if sent {
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            return Ok(());
        }
        let _ = child.kill();
        let _ = child.wait();
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        Err(NotifyError::Failed(format!(
            "notify helper: {}",
            err.trim()
        )))
    }
}

/// How long a helper keeps waiting for a click on "More info".
pub const ACTION_WAIT: Duration = Duration::from_secs(15 * 60);

/// The helper's side: read a notice on stdin and send it to `DBUS_SESSION_BUS_ADDRESS`. Prints
/// `sent ID` once the server has it. Where the server supports actions and the notice has a
/// link, it then waits (at most [`ACTION_WAIT`]) for a click on "More info" and opens the link
/// with `INTERDICT_OPENER` (default `xdg-open`), as the user it runs as.
pub fn helper_main() -> anyhow::Result<()> {
    use futures_util::StreamExt;
    use zbus::zvariant::Value;
    let mut input = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut input)?;
    let notice: Notice = serde_json::from_slice(&input)?;
    let address = std::env::var("DBUS_SESSION_BUS_ADDRESS")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let conn = zbus::connection::Builder::address(address.as_str())?
            .build()
            .await?;
        const DEST: &str = "org.freedesktop.Notifications";
        const PATH: &str = "/org/freedesktop/Notifications";
        let caps: Vec<String> = conn
            .call_method(Some(DEST), PATH, Some(DEST), "GetCapabilities", &())
            .await?
            .body()
            .deserialize()?;
        let with_action = notice.more_info_url.is_some() && caps.iter().any(|c| c == "actions");
        // Listen before sending, so that no click can be missed.
        let mut signals = if with_action {
            let rule = zbus::MatchRule::builder()
                .msg_type(zbus::message::Type::Signal)
                .interface(DEST)?
                .build();
            Some(zbus::MessageStream::for_match_rule(rule, &conn, Some(16)).await?)
        } else {
            None
        };
        let actions: Vec<&str> = if with_action {
            vec!["default", "More info"]
        } else {
            Vec::new()
        };
        let mut hints: HashMap<&str, Value<'_>> = HashMap::new();
        hints.insert("urgency", Value::U8(notice.urgency()));
        hints.insert("category", Value::from("x-interdict"));
        let id: u32 = conn
            .call_method(
                Some(DEST),
                PATH,
                Some(DEST),
                "Notify",
                &(
                    "interdict",
                    0u32,
                    "dialog-warning",
                    notice.summary(),
                    notice.body(),
                    actions,
                    hints,
                    -1i32,
                ),
            )
            .await?
            .body()
            .deserialize()?;
        println!("sent {id}");
        std::io::stdout().flush()?;
        let Some(signals) = signals.as_mut() else {
            return anyhow::Ok(());
        };
        let wait = async {
            while let Some(Ok(msg)) = signals.next().await {
                let header = msg.header();
                match header.member().map(|m| m.as_str()) {
                    Some("ActionInvoked") => {
                        let (nid, _key): (u32, String) = msg.body().deserialize()?;
                        if nid == id {
                            let opener = std::env::var("INTERDICT_OPENER")
                                .unwrap_or_else(|_| "xdg-open".into());
                            let url = notice.more_info_url.clone().unwrap_or_default();
                            std::process::Command::new(opener).arg(url).status()?;
                            return anyhow::Ok(());
                        }
                    }
                    Some("NotificationClosed") => {
                        let (nid, _reason): (u32, u32) = msg.body().deserialize()?;
                        if nid == id {
                            return anyhow::Ok(());
                        }
                    }
                    _ => {}
                }
            }
            anyhow::Ok(())
        };
        let _ = tokio::time::timeout(ACTION_WAIT, wait).await;
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(kind: NoticeKind) -> Notice {
        Notice {
            kind,
            uid: 1000,
            rule_id: "claude-code".into(),
            tool: "Claude Code (Anthropic)".into(),
            reason: "Classified high-risk by SEC-2026-114".into(),
            risk: "high".into(),
            message: None,
            alternative: Some("Use the approved assistant".into()),
            more_info_url: Some("https://it.example.com/software?rule=claude-code".into()),
            path: "/home/ann/.local/share/claude/versions/2.1.0".into(),
            tty_nr: None,
        }
    }

    #[test]
    fn texts_say_what_why_and_instead() {
        let n = notice(NoticeKind::Blocked);
        assert_eq!(n.summary(), "Blocked: Claude Code (Anthropic)");
        assert_eq!(
            n.body(),
            "Classified high-risk by SEC-2026-114 (high risk).\nInstead: Use the approved assistant\nMore: https://it.example.com/software?rule=claude-code"
        );
        assert_eq!(n.urgency(), 2);
        assert_eq!(notice(NoticeKind::Reported).urgency(), 1);
        assert!(n
            .terminal_line()
            .starts_with("interdict: blocked Claude Code (Anthropic) (/home/ann/"));
    }

    #[test]
    fn install_notices_say_where() {
        let n = Notice {
            kind: NoticeKind::Installed,
            ..notice(NoticeKind::Blocked)
        };
        assert_eq!(n.summary(), "Not allowed here: Claude Code (Anthropic)");
        assert!(n
            .body()
            .starts_with("You installed it at /home/ann/.local/share/claude/versions/2.1.0, which is not allowed. Classified"));
        assert_eq!(n.urgency(), 1);
    }

    #[test]
    fn rate_limit_per_user_and_rule() {
        let mut r = RateLimiter::new(Duration::from_secs(60));
        let t = Instant::now();
        assert!(r.allow(1000, "a", t));
        assert!(!r.allow(1000, "a", t + Duration::from_secs(59)));
        assert!(r.allow(1000, "b", t));
        assert!(r.allow(1001, "a", t));
        assert!(r.allow(1000, "a", t + Duration::from_secs(61)));
    }

    #[test]
    fn tty_paths_are_checked_against_the_device() {
        // /dev/null is 1:3, not a terminal number we map.
        assert_eq!(tty_path((1 << 8) | 3), None);
        assert_eq!(tty_path(0), None);
    }
}

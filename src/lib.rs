//! interdict: endpoint software-policy enforcement.
//!
//! This crate is the endpoint binary's library: loading policies from disk, the one-shot
//! compliance scan (running processes and installed software), hashing and the command line.
//! The policy language itself lives in the pure `interdict-policy` crate.
//!
//! - [`cli`]: the command line and each command's output;
//! - [`inventory`]: host facts, processes, hashing, installed software, the hash cache;
//! - [`policy`]: policy files and the digests learned on this host;
//! - [`agent`] (Linux): the enforcing service — sensors, verdict, enforcement, sinks.
//!
//! The agent is Linux-only (`cfg(target_os = "linux")`); the scan, the policy and the event
//! schema are platform-neutral. See `ARCHITECTURE.md` for the seams a macOS or Windows backend
//! would fill.
//!
//! Exit codes of the binary (see [`cli::exit`]): 0 success or compliant, 1 violations found,
//! 2 error (bad policy, bad arguments, I/O failure).

#[cfg(target_os = "linux")]
pub mod agent;
pub mod cli;
pub mod fsutil;
pub mod inventory;
pub mod policy;

/// A short reason for an I/O error, for people: "no such file", "permission denied",
/// "symlink loop", else the system's message without its "(os error N)" suffix.
pub fn io_reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ELOOP) => return "symlink loop".to_string(),
        Some(libc::EACCES) | Some(libc::EPERM) => return "permission denied".to_string(),
        Some(libc::ENOENT) => return "no such file".to_string(),
        _ => {}
    }
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// A path as text for reports and events: UTF-8 as is, any byte that is not valid UTF-8 written
/// as `\xNN`, so that a name made to be unreadable still names exactly one file.
pub fn path_text(p: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for chunk in p.as_os_str().as_bytes().utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_text_escapes_bytes_that_are_not_utf8() {
        use std::os::unix::ffi::OsStrExt;
        let p = std::path::Path::new(std::ffi::OsStr::from_bytes(b"/opt/\xff\xfeclaude-\xc3\xa9"));
        assert_eq!(super::path_text(p), "/opt/\\xFF\\xFEclaude-é");
    }
}

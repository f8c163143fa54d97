//! The command line. Each command's work and output lives in the module named after it; this
//! module parses the arguments and dispatches:
//! - `policy check` (here), `policy keygen|sign|verify` and `exception request` ([`fleet`]),
//!   `scan` ([`scan`]), `explain` ([`explain`]), `hashes list|forget` ([`hashes`]),
//!   `logs query|tail|verify|checkpoint|hosts|learned|exceptions` ([`logs`]);
//! - on Linux: `agent`, `status`, `reload` (the agent's [control socket](crate::agent::control)),
//!   `quarantine list|restore`, `notify-test`, `doctor` ([`doctor`]) and the internal
//!   `notify-helper`.
//!
//! Exit codes are in [`exit`]: 0 success (or compliant), 1 violations found, 2 error.

#[cfg(target_os = "linux")]
pub mod doctor;
pub mod explain;
pub mod fleet;
pub mod hashes;
pub mod logs;
pub mod scan;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::policy::{self as policy_file, LoadError};
use scan::ScanOptions;

/// Documented exit codes.
pub mod exit {
    /// Success; for `scan`: compliant.
    pub const OK: u8 = 0;
    /// `scan`: violations were found.
    pub const VIOLATIONS: u8 = 1;
    /// An error: invalid policy, bad arguments, I/O failure.
    pub const ERROR: u8 = 2;
}

/// interdict: endpoint software-policy enforcement.
#[derive(Debug, Parser)]
#[command(name = "interdict", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read the central log through the collector (reviewer token).
    #[command(subcommand)]
    Logs(logs::LogsCommand),
    /// Work with policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// One-shot compliance check of this machine: running processes and installed software.
    ///
    /// Exit status: 0 compliant, 1 violations found, 2 error.
    Scan {
        /// The policy file.
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// An install root to walk (repeatable); replaces the default roots (combines with --home).
        #[arg(long = "root", value_name = "DIR")]
        roots: Vec<PathBuf>,
        /// Do not look at running processes.
        #[arg(long)]
        no_processes: bool,
        /// Scan this home (repeatable): its install roots and AI-agent configuration, instead of
        /// the whole machine's (combines with --root).
        #[arg(long = "home", value_name = "DIR")]
        homes: Vec<PathBuf>,
        /// The agent's state folder: hashes learned there are used too (when it exists).
        #[arg(long, value_name = "DIR", default_value = "/var/lib/interdict")]
        state_dir: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Run the agent (root service): block banned tools at launch, kill what gets through.
    ///
    /// Exit status: 0 after SIGTERM/SIGINT, 2 if the configuration or policy is invalid.
    #[cfg(target_os = "linux")]
    Agent {
        /// The policy file (reloaded on SIGHUP, `interdict reload` and when it changes).
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// The agent configuration file (defaults apply without one).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Send a sample notification to a user's desktop and terminal, to check a machine.
    ///
    /// Exit status: 0 shown on the desktop, 2 not (the reason is printed).
    #[cfg(target_os = "linux")]
    NotifyTest {
        /// The user to notify.
        #[arg(long)]
        user: String,
    },
    /// (internal) Send one notification read on stdin; run by the agent as the user.
    #[command(hide = true)]
    #[cfg(target_os = "linux")]
    NotifyHelper,
    /// Say which rule matches a file or package folder, why, and what to use instead.
    ///
    /// Needs no root. Exit status: 0 no rule (or an allow rule), 1 a rule applies, 2 error.
    Explain {
        /// The file or folder.
        path: PathBuf,
        /// The policy file.
        #[arg(
            long,
            value_name = "FILE",
            default_value = "/etc/interdict/policy.toml"
        )]
        policy: PathBuf,
    },
    /// Hashes learned on this host from files that path, script or package rules matched.
    #[command(subcommand)]
    Hashes(HashesCommand),
    /// The quarantine store: list entries, restore one.
    #[command(subcommand)]
    #[cfg(target_os = "linux")]
    Quarantine(QuarantineCommand),
    /// Show the running agent's policy, sensors, counters and latency.
    #[cfg(target_os = "linux")]
    Status {
        #[command(flatten)]
        socket: SocketArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Ask the running agent to reload its policy (exit 0 applied, 2 rejected).
    #[cfg(target_os = "linux")]
    Reload {
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Check this machine, line by line: kernel features, configuration and policy, the running
    /// agent and the filesystems it guards, the collector, notices, file modes of secrets.
    ///
    /// Run it as root for every check. Exit status: 0 when all is well (only `ok` and `info`
    /// lines), 1 otherwise, 2 on bad arguments.
    #[cfg(target_os = "linux")]
    Doctor {
        /// The agent's policy file.
        #[arg(
            long,
            value_name = "FILE",
            default_value = "/etc/interdict/policy.toml"
        )]
        policy: PathBuf,
        /// The agent's configuration file (default /etc/interdict/agent.toml; the defaults
        /// apply when that file does not exist).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Time-boxed exceptions: ask for one (any user; a reviewer decides).
    #[cfg(target_os = "linux")]
    #[command(subcommand)]
    Exception(ExceptionCommand),
}

#[cfg(target_os = "linux")]
#[derive(Debug, Subcommand)]
enum ExceptionCommand {
    /// Ask for an exception to one rule, for yourself, on this machine: the agent forwards it
    /// to the collector, where a reviewer approves or denies it; you are told when it starts
    /// and before it ends. Needs no root.
    ///
    /// Exit status: 0 sent, 2 refused (the reason is printed).
    Request {
        /// The rule (its id, as the notice or `interdict explain` names it).
        #[arg(long)]
        rule: String,
        /// For how many days.
        #[arg(long)]
        days: u64,
        /// Why you need it (shown to the reviewer).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        socket: SocketArgs,
    },
}

#[cfg(target_os = "linux")]
#[derive(Debug, clap::Args)]
struct SocketArgs {
    /// The agent's control socket.
    #[arg(long, value_name = "PATH", conflicts_with = "config")]
    socket: Option<PathBuf>,
    /// Find the control socket in this agent configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// A path given on the command line, or else the one the agent configuration (its defaults
/// without `--config`) names.
#[cfg(target_os = "linux")]
fn given_or_configured(
    given: &Option<PathBuf>,
    config: &Option<PathBuf>,
    pick: impl FnOnce(crate::agent::config::AgentConfig) -> PathBuf,
) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.clone());
    }
    match crate::agent::config::load(config.as_deref()) {
        Ok(c) => Ok(pick(c)),
        Err(e) => anyhow::bail!("{e}"),
    }
}

/// Without the Linux agent there is no agent configuration: a path must be given, else the
/// default applies.
#[cfg(not(target_os = "linux"))]
fn given_or_configured(
    given: &Option<PathBuf>,
    _config: &Option<PathBuf>,
    default: &str,
) -> anyhow::Result<PathBuf> {
    Ok(given.clone().unwrap_or_else(|| PathBuf::from(default)))
}

#[cfg(target_os = "linux")]
impl SocketArgs {
    fn path(&self) -> anyhow::Result<PathBuf> {
        given_or_configured(&self.socket, &self.config, |c| c.agent.control_socket)
    }
}

#[derive(Debug, clap::Args)]
struct StateArgs {
    /// The agent's state folder (holds `quarantine/`).
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    state_dir: Option<PathBuf>,
    /// Find the state folder in this agent configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl StateArgs {
    fn path(&self) -> anyhow::Result<PathBuf> {
        #[cfg(target_os = "linux")]
        return given_or_configured(&self.state_dir, &self.config, |c| c.agent.state_dir);
        #[cfg(not(target_os = "linux"))]
        return given_or_configured(&self.state_dir, &self.config, "/var/lib/interdict");
    }
}

#[derive(Debug, Subcommand)]
enum HashesCommand {
    /// Download releases from npm or PyPI, verify them against the registry's integrity value
    /// and print `sha256sum` lines (`HEX  NAME  size=BYTES`) of the files inside, for `policies/hashes/*.sha256`. For IT
    /// on a machine with registry access; the agent never does this.
    ///
    /// Exit status: 0 all fetched, 1 some file is identified by no family rule of --policy,
    /// 2 some spec or download failed (nothing is printed for it).
    Fetch(hashes::fetch::FetchArgs),
    /// Print a hash list again with `  size=BYTES` added to each `npm:PKG@VERSION:PATH` line
    /// that has no size, reading only the beginning of each release's tarball (an HTTP Range
    /// request: the tar header gives the size) instead of downloading it. Comments, other lines
    /// and existing sizes are copied unchanged. For IT on a machine with registry access; the
    /// agent never does this.
    ///
    /// The sizes are not checked against the registry's integrity value (that needs the whole
    /// tarball; `interdict hashes fetch` prints verified sizes).
    ///
    /// Exit status: 0 every digest line has a size, 1 some line was left without one (a
    /// warning names each), 2 error.
    Sizes(hashes::sizes::SizesArgs),
    /// List learned hashes: rule, digest, size, where and how each was first seen.
    List {
        #[command(flatten)]
        state: StateArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Forget learned hashes. The running agent applies it at once (through its control
    /// socket); with no agent running, the state folder's list is edited.
    ///
    /// Exit status: 0 done (also when nothing matched), 2 error.
    #[cfg(target_os = "linux")]
    Forget {
        /// The digest to forget (of every rule).
        #[arg(value_name = "DIGEST", required_unless_present_any = ["rule", "all"], conflicts_with_all = ["rule", "all"])]
        digest: Option<String>,
        /// Forget every digest learned for this rule.
        #[arg(long, value_name = "ID", conflicts_with = "all")]
        rule: Option<String>,
        /// Forget every learned digest.
        #[arg(long)]
        all: bool,
        /// The agent's control socket.
        #[arg(long, value_name = "PATH", conflicts_with = "config")]
        socket: Option<PathBuf>,
        /// The agent's state folder (used when the agent does not run).
        #[arg(long, value_name = "DIR", conflicts_with = "config")]
        state_dir: Option<PathBuf>,
        /// Find the socket and state folder in this agent configuration file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[cfg(target_os = "linux")]
#[derive(Debug, Subcommand)]
enum QuarantineCommand {
    /// List quarantined files.
    List {
        #[command(flatten)]
        state: StateArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Put a quarantined file back, with its bytes, owner, group and mode.
    Restore {
        /// The entry id (from `quarantine list`).
        id: String,
        #[command(flatten)]
        state: StateArgs,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate policy files: every problem at once, as FILE:LINE:COL: error[CODE]: message.
    ///
    /// Exit status: 0 when every file is valid (warnings allowed), 2 otherwise.
    Check {
        /// Policy files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Make a policy key (ed25519): the private key goes to FILE (0600, never over an existing
    /// file; keep it offline), the public key is printed (agents pin it:
    /// `[collector] policy_public_key`).
    Keygen {
        /// Where to write the private key.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Sign a policy (with the sha256_files it names) into a bundle for the collector to
    /// distribute. The policy must be valid.
    ///
    /// Exit status: 0 signed, 2 not (the diagnostics are printed).
    Sign {
        /// The private policy key.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The policy file.
        #[arg(value_name = "POLICY")]
        policy: PathBuf,
        /// Where to write the bundle.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The bundle version, higher than every one signed before: agents refuse a lower or
        /// equal one (default: the time now, in seconds since 1970, which only grows).
        #[arg(long, value_name = "N")]
        version: Option<u64>,
    },
    /// Check a bundle's signature against a public key (hex, or a file holding it; repeat it
    /// for a rotation overlap) and its policy.
    ///
    /// Exit status: 0 valid, 2 refused (the reason is printed).
    Verify {
        /// The policy public key.
        #[arg(long = "public-key", value_name = "PUB", required = true)]
        public_keys: Vec<String>,
        /// The bundle.
        #[arg(value_name = "BUNDLE")]
        bundle: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::ERROR
            } else {
                exit::OK
            });
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("interdict: error: {e:#}");
            ExitCode::from(exit::ERROR)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Policy(PolicyCommand::Check { files }) => Ok(policy_check(&files)),
        Command::Policy(PolicyCommand::Keygen { out }) => fleet::keygen(&out),
        Command::Policy(PolicyCommand::Sign {
            key,
            policy,
            out,
            version,
        }) => fleet::sign(&key, &policy, &out, version),
        Command::Policy(PolicyCommand::Verify {
            public_keys,
            bundle,
        }) => fleet::verify(&public_keys, &bundle),
        #[cfg(target_os = "linux")]
        Command::Exception(ExceptionCommand::Request {
            rule,
            days,
            reason,
            socket,
        }) => fleet::request(&socket.path()?, &rule, days, &reason),
        #[cfg(target_os = "linux")]
        Command::Agent { policy, config } => {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_target(false)
                .init();
            crate::agent::run(&policy, config.as_deref())
        }
        Command::Logs(cmd) => logs::run(cmd),
        Command::Hashes(HashesCommand::Fetch(args)) => hashes::fetch::fetch_command(&args),
        Command::Hashes(HashesCommand::Sizes(args)) => hashes::sizes::sizes_command(&args),
        Command::Hashes(HashesCommand::List { state, format }) => {
            hashes::list(&state.path()?, format)
        }
        #[cfg(target_os = "linux")]
        Command::Hashes(HashesCommand::Forget {
            digest,
            rule,
            all,
            socket,
            state_dir,
            config,
        }) => {
            use crate::policy::learned::Forget;
            let what = match (digest, rule, all) {
                (Some(d), _, _) => Forget::Digest(d),
                (_, Some(r), _) => Forget::Rule(r),
                _ => Forget::All,
            };
            let socket = given_or_configured(&socket, &config, |c| c.agent.control_socket)?;
            let state = given_or_configured(&state_dir, &config, |c| c.agent.state_dir)?;
            hashes::forget(&what, &socket, &state)
        }
        #[cfg(target_os = "linux")]
        Command::Quarantine(QuarantineCommand::List { state, format }) => {
            let store = crate::agent::enforce::quarantine::Store::open(&state.path()?)?;
            let entries = store.list();
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&entries)?),
                Format::Text => {
                    for e in &entries {
                        println!(
                            "{}  {}  rule {}  uid {} gid {} mode {:o}  {} bytes  sha256 {}  {}",
                            e.id,
                            e.time,
                            e.rule_id,
                            e.uid,
                            e.gid,
                            e.mode,
                            e.size,
                            e.sha256,
                            e.original_path.display()
                        );
                    }
                    println!("{} quarantined file(s)", entries.len());
                }
            }
            Ok(exit::OK)
        }
        #[cfg(target_os = "linux")]
        Command::Quarantine(QuarantineCommand::Restore { id, state }) => {
            let store = crate::agent::enforce::quarantine::Store::open(&state.path()?)?;
            let e = store.restore(&id)?;
            println!("restored {} to {}", e.id, e.original_path.display());
            Ok(exit::OK)
        }
        #[cfg(target_os = "linux")]
        Command::NotifyHelper => {
            crate::agent::enforce::notices::helper_main()?;
            Ok(exit::OK)
        }
        #[cfg(target_os = "linux")]
        Command::NotifyTest { user } => notify_test(&user),
        #[cfg(target_os = "linux")]
        Command::Doctor {
            policy,
            config,
            format,
        } => {
            let opts = doctor::Options {
                policy,
                config_given: config.is_some(),
                config: config.unwrap_or_else(|| PathBuf::from("/etc/interdict/agent.toml")),
            };
            let report = doctor::run(&opts);
            match format {
                Format::Text => print!("{}", doctor::render(&report)),
                Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            Ok(if report.healthy {
                exit::OK
            } else {
                exit::VIOLATIONS
            })
        }
        Command::Explain { path, policy } => {
            let Some(loaded) = policy_file::load_or_print(&policy) else {
                return Ok(exit::ERROR);
            };
            let stdout = std::io::stdout();
            crate::cli::explain::explain(&loaded, &path, &mut stdout.lock())
        }
        #[cfg(target_os = "linux")]
        Command::Status { socket, format } => {
            let line = crate::agent::control::request(&socket.path()?, "status")?;
            match format {
                Format::Json => print!("{line}"),
                Format::Text => {
                    let s: crate::agent::control::Status = serde_json::from_str(&line)?;
                    print!("{}", crate::agent::control::render(&s));
                }
            }
            Ok(exit::OK)
        }
        #[cfg(target_os = "linux")]
        Command::Reload { socket } => {
            let line = crate::agent::control::request(&socket.path()?, "reload")?;
            let r: crate::agent::control::ReloadReply = serde_json::from_str(&line)?;
            if r.applied {
                println!("{}", r.message);
                Ok(exit::OK)
            } else {
                eprintln!("{}", r.message);
                Ok(exit::ERROR)
            }
        }
        Command::Scan {
            policy,
            roots,
            no_processes,
            homes,
            state_dir,
            format,
        } => {
            // A root that does not exist is a mistake (a typo), not a compliant machine.
            let missing: Vec<String> = roots
                .iter()
                .filter(|r| r.symlink_metadata().is_err())
                .map(|r| format!("--root {}: no such file or folder", r.display()))
                .collect();
            if !missing.is_empty() {
                for m in missing {
                    eprintln!("interdict: error: {m}");
                }
                return Ok(exit::ERROR);
            }
            let Some(mut loaded) = policy_file::load_or_print(&policy) else {
                return Ok(exit::ERROR);
            };
            match crate::policy::learned::LearnedSet::load(&state_dir) {
                Ok(set) => {
                    set.apply(&mut loaded.policy);
                }
                Err(e) => eprintln!(
                    "interdict: learned hashes in {} not used: {e}",
                    state_dir.display()
                ),
            }
            let report = scan::run(
                &loaded,
                &ScanOptions {
                    roots,
                    no_processes,
                    progress: true,
                    homes,
                },
            );
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            match format {
                Format::Text => scan::render_text(&report, &mut out)?,
                Format::Json => {
                    serde_json::to_writer_pretty(&mut out, &report)?;
                    writeln!(out)?;
                }
            }
            out.flush().context("writing the report")?;
            Ok(if report.compliant() {
                exit::OK
            } else {
                exit::VIOLATIONS
            })
        }
    }
}

#[cfg(target_os = "linux")]
fn notify_test(user: &str) -> anyhow::Result<u8> {
    use crate::agent::enforce::notices::{DesktopBackend, LinuxDesktop, Notice, NoticeKind};
    let accounts = crate::inventory::host::Accounts::load();
    let uid = match user.parse::<u32>() {
        Ok(u) => u,
        Err(_) => accounts
            .uid_of(user)
            .ok_or_else(|| anyhow::anyhow!("no such user: {user}"))?,
    };
    let notice = Notice {
        kind: NoticeKind::Blocked,
        uid,
        rule_id: "notify-test".into(),
        tool: "Sample Tool (interdict notify-test)".into(),
        reason: "This is a test notification from IT; nothing was blocked".into(),
        risk: "low".into(),
        message: None,
        alternative: Some("Nothing to do".into()),
        more_info_url: None,
        path: "/nonexistent/sample-tool".into(),
        tty_nr: None,
    };
    match LinuxDesktop::default().notify(&notice) {
        Ok(()) => {
            println!("sent to {user} (uid {uid}): {}", notice.summary());
            Ok(exit::OK)
        }
        Err(e) => {
            eprintln!("not shown to {user} (uid {uid}): {e}");
            Ok(exit::ERROR)
        }
    }
}

fn policy_check(files: &[PathBuf]) -> u8 {
    let mut code = exit::OK;
    for file in files {
        match policy_file::load(file) {
            Ok(l) => {
                for w in &l.warnings.0 {
                    eprintln!("{w}");
                }
                let c = l.policy.selector_counts();
                let info = l.policy.info();
                println!(
                    "{}: ok: policy {} {} ({}), {} rules, {} selectors ({} names, {} paths, {} scripts, {} packages, {} sha256, {} family rules, {} configs), {} warnings",
                    file.display(),
                    info.name,
                    info.version,
                    info.mode,
                    l.policy.rules().len(),
                    c.total(),
                    c.names,
                    c.paths,
                    c.scripts,
                    c.packages,
                    c.sha256,
                    c.families,
                    c.configs,
                    l.warnings.0.len(),
                );
            }
            Err(LoadError::Invalid(d)) => {
                eprint!("{d}");
                eprintln!(
                    "{}: rejected: {} errors, {} warnings",
                    file.display(),
                    d.errors().count(),
                    d.warnings().count()
                );
                code = exit::ERROR;
            }
            Err(e @ LoadError::Io { .. }) => {
                eprintln!("{e}");
                code = exit::ERROR;
            }
        }
    }
    code
}

//! `interdict-collector`: see the library documentation. Exit codes: 0 clean stop (or an intact
//! log for `verify`), 1 `verify` found problems, 2 error.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use interdict_collector::{keys, App, Config, Store};

#[derive(Parser)]
#[command(
    name = "interdict-collector",
    version,
    about = "The interdict central violation log"
)]
struct Cli {
    /// Configuration file (TOML; see the README). Flags given here override it.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// The SQLite database (created when missing, 0600 in a 0700 directory).
    #[arg(long, global = true)]
    db: Option<PathBuf>,
    /// Use PostgreSQL instead of SQLite: libpq-style parameters (`host=/run/postgresql
    /// user=interdict dbname=interdict`) or a `postgresql://` URL. Several collectors may share
    /// one database (and must then share the signing key).
    #[arg(
        long,
        value_name = "PARAMS",
        global = true,
        env = "INTERDICT_COLLECTOR_POSTGRES",
        hide_env_values = true
    )]
    postgres: Option<String>,
    /// The collector's signing key (default: `signing.key` beside the database; created 0600).
    #[arg(long, value_name = "FILE", global = true)]
    signing_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API. Makes and prints the enroll secret on the first start only.
    Serve {
        /// Address to listen on (default 127.0.0.1:8787).
        #[arg(long)]
        listen: Option<String>,
        /// Hosts not heard from in this many seconds are flagged silent (default 900).
        #[arg(long)]
        silent_after_s: Option<u64>,
        /// Serve HTTPS with this PEM certificate chain (with --tls-key).
        #[arg(long, value_name = "PEM", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, value_name = "PEM", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Require client certificates signed by this PEM CA (mutual TLS).
        #[arg(long, value_name = "PEM")]
        tls_client_ca: Option<PathBuf>,
        /// Prune events received more than N days ago, hourly (default: keep everything).
        #[arg(long, value_name = "N")]
        retain_days: Option<u64>,
    },
    /// The enroll secret (kept hashed: it is shown only when made).
    EnrollSecret {
        #[command(subcommand)]
        action: SecretAction,
    },
    /// Reviewers: read-only tokens.
    Reviewer {
        #[command(subcommand)]
        action: ReviewerAction,
    },
    /// Hosts.
    Host {
        #[command(subcommand)]
        action: HostAction,
    },
    /// Same as `host reset`.
    #[command(hide = true)]
    ResetHost {
        /// The host id.
        host_id: String,
    },
    /// Re-derive every host's chain from the stored bytes and report; exit 1 on any problem.
    Verify,
    /// Prune now what retention (--retain-days) would prune.
    Prune {
        /// Prune events received more than N days ago.
        #[arg(long, value_name = "N")]
        retain_days: Option<u64>,
    },
    /// Print the collector's public key (hex), which reviewers pin.
    Key,
}

#[derive(Subcommand)]
enum SecretAction {
    /// Make a new enroll secret and print it; the old one stops working (enrolled hosts keep
    /// their tokens).
    Rotate,
}

#[derive(Subcommand)]
enum ReviewerAction {
    /// Create (or replace) a reviewer's token and print it.
    Add {
        /// The reviewer's name.
        name: String,
    },
    /// Revoke a reviewer's token.
    Revoke {
        /// The reviewer's name.
        name: String,
    },
    /// List reviewers.
    List,
}

#[derive(Subcommand)]
enum HostAction {
    /// Revoke a host's token so that it can enroll again (a reinstalled machine). Its chain
    /// state is kept: a new spool starting over at 1 shows up as a finding.
    Reset {
        /// The host id.
        host_id: String,
    },
    /// Delete a host: its token, events and chains (a decommissioned machine). A signed note of
    /// the deletion is kept, so verification reports it instead of missing records.
    Delete {
        /// The host id.
        host_id: String,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    // Everything the collector creates is its own: the database, its journals, the key.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    match run(Cli::parse()) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("interdict-collector: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn open(cfg: &Config) -> anyhow::Result<Store> {
    if let Some(p) = &cfg.postgres {
        return Store::open_postgres(p).context("connect to PostgreSQL");
    }
    let db = &cfg.db;
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("create {}", dir.display()))?;
        }
    }
    Store::open(db).with_context(|| format!("open {}", db.display()))
}

fn key(cfg: &Config) -> anyhow::Result<ed25519_dalek::SigningKey> {
    let p = cfg.signing_key_path();
    keys::load_or_create(&p).context("the collector's signing key")
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let mut cfg = interdict_collector::config::load(cli.config.as_deref())?;
    if let Some(db) = cli.db {
        cfg.db = db;
    }
    if let Some(p) = cli.postgres {
        cfg.postgres = Some(p);
    }
    if let Some(k) = cli.signing_key {
        cfg.signing_key = Some(k);
    }
    let store = open(&cfg)?;
    match cli.command {
        Command::EnrollSecret {
            action: SecretAction::Rotate,
        } => {
            println!("{}", store.rotate_enroll_secret()?);
            eprintln!("the old enroll secret no longer works; enrolled hosts keep their tokens");
        }
        Command::Reviewer { action } => match action {
            ReviewerAction::Add { name } => println!("{}", store.add_reviewer(&name)?),
            ReviewerAction::Revoke { name } => {
                if !store.revoke_reviewer(&name)? {
                    anyhow::bail!("no reviewer {name}");
                }
                eprintln!("{name}'s token no longer works");
            }
            ReviewerAction::List => {
                for n in store.reviewers()? {
                    println!("{}", interdict_chain::printable(&n));
                }
            }
        },
        Command::Host {
            action: HostAction::Reset { host_id },
        }
        | Command::ResetHost { host_id } => {
            if !store.reset_host(&host_id)? {
                anyhow::bail!("no host {host_id}");
            }
            eprintln!("{host_id} may enroll again");
        }
        Command::Host {
            action: HostAction::Delete { host_id },
        } => {
            if !store.delete_host(&host_id, &key(&cfg)?)? {
                anyhow::bail!("no host {host_id}");
            }
            eprintln!("{host_id} deleted (a signed note of the deletion is kept)");
        }
        Command::Key => println!("{}", keys::public_hex(&key(&cfg)?)),
        Command::Verify => {
            let reports = store.verify(&keys::public_hex(&key(&cfg)?))?;
            let mut ok = true;
            for r in &reports {
                ok &= r.intact();
                println!(
                    "{} {}: {} record(s)",
                    if r.intact() { "intact" } else { "BROKEN" },
                    interdict_chain::printable(&r.host_id),
                    r.records
                );
                for p in &r.problems {
                    println!(
                        "  {} chain {} seq {}..{}: {}",
                        p.kind,
                        p.epoch,
                        p.from_seq,
                        p.to_seq,
                        interdict_chain::printable(&p.detail)
                    );
                }
                for n in &r.notes {
                    println!("  note: {}", interdict_chain::printable(n));
                }
            }
            return Ok(if ok { 0 } else { 1 });
        }
        Command::Prune { retain_days } => {
            let days = retain_days.unwrap_or(cfg.retain_days);
            if days == 0 {
                anyhow::bail!(
                    "no retention: give --retain-days N (or retain_days in the configuration)"
                );
            }
            let before = interdict_collector::store::now_ms() - days as i64 * 86_400_000;
            let n = store.prune(before, &key(&cfg)?)?;
            eprintln!("pruned {n} event(s) received more than {days} day(s) ago");
        }
        Command::Serve {
            listen,
            silent_after_s,
            tls_cert,
            tls_key,
            tls_client_ca,
            retain_days,
        } => {
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if let Some(s) = silent_after_s {
                cfg.silent_after_s = s;
            }
            if tls_cert.is_some() {
                cfg.tls_cert = tls_cert;
                cfg.tls_key = tls_key;
            }
            if tls_client_ca.is_some() {
                cfg.tls_client_ca = tls_client_ca;
            }
            if let Some(d) = retain_days {
                cfg.retain_days = d;
            }
            let tls = match (&cfg.tls_cert, &cfg.tls_key) {
                (Some(cert), Some(key)) => Some(
                    interdict_collector::tls_acceptor(&interdict_collector::TlsFiles {
                        cert: cert.clone(),
                        key: key.clone(),
                        client_ca: cfg.tls_client_ca.clone(),
                    })
                    .context("TLS")?,
                ),
                _ if cfg.tls_client_ca.is_some() => {
                    anyhow::bail!("a client CA needs TLS: give the certificate and key too")
                }
                _ => None,
            };
            let scheme = if tls.is_some() { "https" } else { "http" };
            let where_ = match &cfg.postgres {
                Some(_) => "PostgreSQL".to_string(),
                None => cfg.db.display().to_string(),
            };
            match store.ensure_enroll_secret()? {
                Some(s) => eprintln!(
                    "interdict-collector: new enroll secret {s} (agents: [collector] enroll_secret); it is shown only now, kept hashed; `enroll-secret rotate` makes a new one"
                ),
                None => eprintln!(
                    "interdict-collector: enroll secret set (kept hashed; `interdict-collector enroll-secret rotate` makes a new one)"
                ),
            }
            let key = key(&cfg)?;
            let fds = interdict_collector::server::raise_fd_limit();
            eprintln!(
                "interdict-collector: database {where_}, signing key {} (public {}), open-files limit {fds}",
                cfg.signing_key_path().display(),
                keys::public_hex(&key)
            );
            let rt = tokio::runtime::Runtime::new()?;
            let listen = cfg.listen.clone();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&listen)
                    .await
                    .with_context(|| format!("listen on {listen}"))?;
                eprintln!(
                    "interdict-collector: listening on {scheme}://{}",
                    listener.local_addr()?
                );
                let app = Arc::new(App::new(store, cfg, key));
                let stop = async {
                    let mut term =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                            .expect("SIGTERM handler");
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                };
                interdict_collector::serve(listener, app, tls, stop).await?;
                anyhow::Ok(())
            })?;
        }
    }
    Ok(0)
}

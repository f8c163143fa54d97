//! `interdict-collector`: see the library documentation. Exit codes: 0 clean stop, 2 error.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use interdict_collector::{App, Store};

#[derive(Parser)]
#[command(
    name = "interdict-collector",
    version,
    about = "The interdict central violation log"
)]
struct Cli {
    /// The SQLite database (created when missing).
    #[arg(
        long,
        default_value = "/var/lib/interdict-collector/collector.db",
        global = true
    )]
    db: PathBuf,
    /// Use PostgreSQL instead of SQLite: libpq-style parameters (`host=/run/postgresql
    /// user=interdict dbname=interdict`) or a `postgresql://` URL. Several collectors may share
    /// one database.
    #[arg(
        long,
        value_name = "PARAMS",
        global = true,
        env = "INTERDICT_COLLECTOR_POSTGRES",
        hide_env_values = true
    )]
    postgres: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API. Prints the enroll secret on first start.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: String,
        /// Hosts not heard from in this many seconds are flagged silent.
        #[arg(long, default_value_t = 900)]
        silent_after_s: i64,
        /// Serve HTTPS with this PEM certificate chain (with --tls-key).
        #[arg(long, value_name = "PEM", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, value_name = "PEM", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Require client certificates signed by this PEM CA (mutual TLS).
        #[arg(long, value_name = "PEM", requires = "tls_cert")]
        tls_client_ca: Option<PathBuf>,
    },
    /// Print the enroll secret (created when missing).
    EnrollSecret,
    /// Create (or replace) a read-only reviewer token and print it.
    Reviewer {
        /// The reviewer's name.
        name: String,
    },
    /// Revoke a host's token so that it can enroll again (a reinstalled machine). Its chain
    /// state is kept: a new spool starting over at 1 shows up as a finding.
    ResetHost {
        /// The host id.
        host_id: String,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("interdict-collector: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn open(db: &std::path::Path) -> anyhow::Result<Store> {
    if let Some(dir) = db.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    Store::open(db).with_context(|| format!("open {}", db.display()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let store = match &cli.postgres {
        Some(p) => Store::open_postgres(p).context("connect to PostgreSQL")?,
        None => open(&cli.db)?,
    };
    match cli.command {
        Command::EnrollSecret => println!("{}", store.enroll_secret()?),
        Command::Reviewer { name } => println!("{}", store.add_reviewer(&name)?),
        Command::ResetHost { host_id } => {
            if !store.reset_host(&host_id)? {
                anyhow::bail!("no host {host_id}");
            }
            eprintln!("{host_id} may enroll again");
        }
        Command::Serve {
            listen,
            silent_after_s,
            tls_cert,
            tls_key,
            tls_client_ca,
        } => {
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => Some(
                    interdict_collector::tls_acceptor(&interdict_collector::TlsFiles {
                        cert,
                        key,
                        client_ca: tls_client_ca,
                    })
                    .map_err(|e| anyhow::anyhow!("TLS: {e}"))?,
                ),
                _ => None,
            };
            let scheme = if tls.is_some() { "https" } else { "http" };
            let secret = store.enroll_secret()?;
            let where_ = match &cli.postgres {
                Some(_) => "PostgreSQL".to_string(),
                None => cli.db.display().to_string(),
            };
            eprintln!(
                "interdict-collector: database {where_}, enroll secret {secret} (agents: [collector] enroll_secret)"
            );
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&listen)
                    .await
                    .with_context(|| format!("listen on {listen}"))?;
                eprintln!(
                    "interdict-collector: listening on {scheme}://{}",
                    listener.local_addr()?
                );
                let app = Arc::new(App {
                    store,
                    silent_after_ms: silent_after_s * 1000,
                });
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
    Ok(())
}

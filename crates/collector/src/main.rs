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
    },
    /// Print the enroll secret (created when missing).
    EnrollSecret,
    /// Create (or replace) a read-only reviewer token and print it.
    Reviewer {
        /// The reviewer's name.
        name: String,
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
    let store = open(&cli.db)?;
    match cli.command {
        Command::EnrollSecret => println!("{}", store.enroll_secret()?),
        Command::Reviewer { name } => println!("{}", store.add_reviewer(&name)?),
        Command::Serve {
            listen,
            silent_after_s,
        } => {
            let secret = store.enroll_secret()?;
            eprintln!(
                "interdict-collector: database {}, enroll secret {secret} (agents: [collector] enroll_secret)",
                cli.db.display()
            );
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&listen)
                    .await
                    .with_context(|| format!("listen on {listen}"))?;
                eprintln!(
                    "interdict-collector: listening on http://{}",
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
                interdict_collector::serve(listener, app, stop).await?;
                anyhow::Ok(())
            })?;
        }
    }
    Ok(())
}

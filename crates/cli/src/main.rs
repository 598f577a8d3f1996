//! `privacy`: the operators' and auditors' command line over the four services' gRPC APIs —
//! verify every log, stream events, read consent, requests, erasures, disclosures and holds,
//! rebuild projections, export any list as JSON Lines or CSV.

#![forbid(unsafe_code)]

mod commands;
mod failure;
mod render;
mod settings;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use failure::{EXIT_CODES, Failure};
use render::Format;
use settings::{ConnectionArgs, Service};

const AFTER_HELP: &str = "\
Settings: flags, then PRIVACY_* environment variables, then the config file
($XDG_CONFIG_HOME/privacy/config.toml or --config), then scripts/dev's local endpoints.
Times are RFC 3339 (2026-11-24T09:00:00Z) or a date (2026-11-24, midnight UTC).";

#[derive(Debug, Parser)]
#[command(
    name = "privacy",
    version,
    about = "Operate and audit Privacy Ledger: verify the logs; read consent, requests, \
             erasures, disclosures and holds",
    after_help = format!("{AFTER_HELP}\n\n{EXIT_CODES}"),
    arg_required_else_help = true
)]
struct Cli {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Write JSON (a list is an array; a followed stream is JSON Lines) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Recompute every service's hash chain; one summary (exit 6 if any is broken).
    Verify {
        /// Only these services (repeatable) [default: all four].
        #[arg(long, value_enum)]
        service: Vec<Service>,
    },
    /// Each service's projections: version, checkpoint against the log's head, digest.
    Status {
        /// Only these services (repeatable) [default: all four].
        #[arg(long, value_enum)]
        service: Vec<Service>,
        /// Versions and checkpoints only: no digests or entry counts, so no service walks its
        /// views (cheap enough to poll for lag; a full status reads every view).
        #[arg(long)]
        checkpoints_only: bool,
    },
    /// Stored events, filtered by tenant, subject, type and time (--follow keeps streaming).
    Events(commands::EventsArgs),
    /// Consent: is it in force, the history of a subject's choices, a record's receipt.
    #[command(subcommand)]
    Consent(commands::ConsentCommand),
    /// Data-subject requests: list, show, extend the deadline, complete.
    #[command(subcommand)]
    Requests(commands::RequestsCommand),
    /// Erasures: start one, follow its orders and shreds, print its certificate.
    #[command(subcommand)]
    Erasure(commands::ErasureCommand),
    /// Disclosures: a subject's accounting, the recipients to notify, flagged ones.
    #[command(subcommand)]
    Disclosures(commands::DisclosuresCommand),
    /// Legal holds: list, place, release.
    #[command(subcommand)]
    Holds(commands::HoldsCommand),
    /// Drop and replay a service's projections, showing progress (operator token).
    Rebuild {
        /// The service whose projections to rebuild.
        #[arg(long, value_enum)]
        service: Service,
        /// Only these projections (repeatable) [default: every one].
        #[arg(long)]
        projection: Vec<String>,
    },
    /// Write any list as JSON Lines or CSV, to standard output or a file.
    Export {
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        /// Write here instead of standard output (replaced if it exists).
        #[arg(long, short = 'o', value_name = "PATH")]
        out: Option<PathBuf>,
        #[command(subcommand)]
        list: commands::ListCommand,
    },
    /// Print a shell completion script (e.g. `privacy completions bash > /etc/bash_completion.d/privacy`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Jsonl,
    Csv,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "privacy", &mut script);
        return match std::io::Write::write_all(&mut std::io::stdout(), &script) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                eprintln!("privacy: cannot write the script: {e}");
                ExitCode::from(failure::exit::FAILED)
            }
            _ => ExitCode::from(failure::exit::OK),
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("privacy: cannot start: {e}");
            return ExitCode::from(failure::exit::FAILED);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::from(failure::exit::OK),
        Err(failure) => {
            if !matches!(failure, Failure::Closed) {
                eprintln!("privacy: {failure}");
            }
            ExitCode::from(failure.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let settings = cli.connection.resolve()?;
    let format = if cli.json {
        Format::Json
    } else {
        Format::Table
    };
    let ctx = commands::Context::new(settings, format)?;
    match cli.command {
        Command::Verify { service } => ctx.verify(&Service::chosen(service)).await,
        Command::Status {
            service,
            checkpoints_only,
        } => {
            ctx.status(&Service::chosen(service), checkpoints_only)
                .await
        }
        Command::Events(args) => ctx.list(commands::ListCommand::Events(args), None).await,
        Command::Consent(c) => ctx.consent(c).await,
        Command::Requests(c) => ctx.requests(c).await,
        Command::Erasure(c) => ctx.erasure(c).await,
        Command::Disclosures(c) => ctx.disclosures(c).await,
        Command::Holds(c) => ctx.holds(c).await,
        Command::Rebuild {
            service,
            projection,
        } => ctx.rebuild(service, projection).await,
        Command::Export { format, out, list } => {
            let format = match format {
                ExportFormat::Jsonl => Format::Jsonl,
                ExportFormat::Csv => Format::Csv,
            };
            ctx.with_format(format).list(list, out.as_ref()).await
        }
        Command::Completions { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}

//! The `dispatcher` command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use dispatcher::config::Config;
use tracing_subscriber::EnvFilter;

// jemalloc with the dispatcher's options (see `dispatcher::alloc`).
dispatcher::use_jemalloc!();

#[derive(Parser)]
#[command(
    name = "dispatcher",
    version,
    about = "Fan-out dispatcher: Kafka events to webhook endpoints"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the dispatcher until SIGTERM or SIGINT.
    Run {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file and list every problem in it.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Re-inject dead-lettered deliveries, keeping their delivery ids.
    Replay(dispatcher::replay::ReplayArgs),
    /// Endpoints through the management API: list, get, apply -f FILE,
    /// delete, pause, resume.
    Endpoints(dispatcher::cli::EndpointsArgs),
    /// Run the whole pipeline on this machine: embedded Kafka, a producer of
    /// seed events, local webhook receivers (one of them slow), a summary.
    Demo(dispatcher::demo::DemoArgs),
    /// Create or check the dispatcher's own topics (dead-letter, retry
    /// tiers, spill, endpoints) on the configured brokers.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
}

#[derive(Subcommand)]
enum TopicsAction {
    /// Create the missing ones (existing ones are left as they are).
    Create {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List what is missing or wrong; exits non-zero if anything is.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo and the endpoints client print their own output; logs would
    // drown it unless asked for.
    init_logging(
        cli.log_format,
        matches!(cli.command, Command::Demo(_) | Command::Endpoints(_)),
    );
    let result = match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Run { config } => runtime().and_then(|rt| rt.block_on(run(&config))),
        Command::Demo(args) => runtime().and_then(|rt| rt.block_on(dispatcher::demo::run(args))),
        Command::Replay(args) => runtime().and_then(|rt| rt.block_on(replay(args))),
        Command::Topics { action } => runtime().and_then(|rt| rt.block_on(topics(action))),
        Command::Endpoints(args) => {
            runtime().and_then(|rt| rt.block_on(dispatcher::cli::run(args)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn topics(action: TopicsAction) -> anyhow::Result<()> {
    let path = match &action {
        TopicsAction::Create { config } | TopicsAction::Check { config } => config,
    };
    let config = Config::load(path)?;
    let bootstrap = config.kafka.brokers.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "{}: kafka.brokers is not set (the embedded Kafka creates its topics itself)",
            path.display()
        )
    })?;
    match action {
        TopicsAction::Create { .. } => {
            let created = dispatcher::topics::create_missing(&config, &bootstrap).await?;
            for t in dispatcher::topics::own_topics(&config) {
                let what = if created.contains(&t.name) {
                    "created"
                } else {
                    "exists"
                };
                println!("{what:8} {} ({})", t.name, t.role);
            }
            Ok(())
        }
        TopicsAction::Check { .. } => {
            let problems = dispatcher::topics::check(&config, &bootstrap).await?;
            if problems.is_empty() {
                println!("ok: every topic of the dispatcher exists");
                return Ok(());
            }
            for p in &problems {
                println!("{p}");
            }
            anyhow::bail!("{} problem(s) with the dispatcher's topics", problems.len())
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn init_logging(format: LogFormat, quiet_default: bool) {
    // The demo prints its own progress; logs would drown it unless asked for.
    let default = if quiet_default { "warn" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn validate(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    println!(
        "{}: ok ({} endpoint{}, topics {:?}, {})",
        path.display(),
        config.endpoints.len(),
        if config.endpoints.len() == 1 { "" } else { "s" },
        config.kafka.topics,
        match &config.kafka.brokers {
            Some(b) => format!("brokers {b}"),
            None => "embedded Kafka".to_owned(),
        }
    );
    Ok(())
}

async fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let running = dispatcher::app::start(config).await?;
    tracing::info!(
        bootstrap = %running.bootstrap,
        admin = %running.admin_addr,
        api = %running.api_addr.map_or_else(|| "off (no api.tokens)".to_owned(), |a| a.to_string()),
        "dispatcher running"
    );
    tokio::select! {
        signal = wait_for_signal() => signal?,
        _ = running.failed() => {}
    }
    running.shutdown().await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn replay(args: dispatcher::replay::ReplayArgs) -> anyhow::Result<()> {
    let s = dispatcher::replay::run(args).await?;
    println!(
        "{} dead letters scanned, {} matched, {} {}, {} not replayable (records that never became deliveries), {} left for endpoints that neither the config nor the endpoint store has, {} refused by the retry topic",
        s.scanned,
        s.matched,
        if s.dry_run { s.matched } else { s.replayed },
        if s.dry_run {
            "would be replayed (dry run)"
        } else {
            "replayed"
        },
        s.undecodable,
        s.not_configured,
        s.failed
    );
    let mut by: Vec<_> = s.by_endpoint.iter().collect();
    by.sort();
    for (endpoint, n) in by {
        println!("  {endpoint}: {n}");
    }
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        r = tokio::signal::ctrl_c() => { r.context("waiting for SIGINT")?; tracing::info!("SIGINT received") }
    }
    Ok(())
}

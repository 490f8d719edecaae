//! The `ferry` binary: `ferry serve` runs every part in one process; the other verbs are clients
//! of a running server's control API.

mod bench;
mod cli;
mod serve;
mod telemetry;

use clap::{Parser, Subcommand};

/// mimalloc: events are allocated by the ingress's threads and freed by the log writer and
/// the triggers' tasks; glibc's malloc serialises such cross-thread frees on its arena locks
/// (measured: a third of the ingress rate lost to futex waits under `ferry bench ingress`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Knative-style eventing, serving and pipelines in one Rust binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    server: cli::client::ServerArg,
}

#[derive(Subcommand)]
enum Command {
    /// Run Ferry: event log, ingress, control API (until SIGTERM/SIGINT).
    Serve(Box<serve::ServeArgs>),
    /// Create or update resources from YAML files (multi-document), directories or stdin (-).
    Apply(cli::apply::ApplyArgs),
    /// List resources, or show one.
    Get(cli::get::GetArgs),
    /// Show one resource in detail.
    Describe(cli::get::DescribeArgs),
    /// Delete a resource.
    Delete(cli::get::DeleteArgs),
    /// List the resource types the server serves.
    ApiResources(cli::get::ApiResourcesArgs),
    /// Send one CloudEvent to a broker (binary mode).
    Send(cli::send::SendArgs),
    /// Print a broker's events, one per line.
    Tail(cli::tail::TailArgs),
    /// A trigger's dead letters: list, replay, purge.
    #[command(subcommand)]
    Dlq(cli::dlq::DlqCommand),
    /// The output of a revision's instances or of a run's steps
    /// (`ferry logs revision|pipelinerun|taskrun NAME [-f]`).
    Logs(cli::logs::LogsArgs),
    /// Cancel a PipelineRun (`--graceful`: then finally; `--stop`: let running tasks finish)
    /// or a TaskRun.
    Cancel(cli::cancel::CancelArgs),
    /// API tokens (`--auth tokens`): create (prints the token once), list, revoke.
    #[command(subcommand)]
    Token(cli::token::TokenCommand),
    /// Benchmarks on this machine's loopback.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve`'s configuration first: it says where spans go.
    let serve_config = match &cli.command {
        Command::Serve(args) => match args.as_ref().clone().resolve() {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let otlp = serve_config
        .as_ref()
        .and_then(|c| c.otlp_endpoint.as_deref());
    let telemetry = match telemetry::init(otlp) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = cli.server;
    let result = runtime.block_on(async {
        // The configuration file is the client verbs' only (`serve` and `bench` ignore it).
        let server = match &cli.command {
            Command::Serve(_) | Command::Bench(_) => server,
            _ => server.with_config_file()?,
        };
        match cli.command {
            Command::Serve(_) => match serve_config {
                Some(config) => serve::run(config).await,
                None => Ok(()),
            },
            Command::Apply(mut args) => {
                args.server = server;
                cli::apply::run(args).await
            }
            Command::Get(mut args) => {
                args.server = server;
                cli::get::get(args).await
            }
            Command::Describe(mut args) => {
                args.server = server;
                cli::get::describe(args).await
            }
            Command::Delete(mut args) => {
                args.server = server;
                cli::get::delete(args).await
            }
            Command::ApiResources(mut args) => {
                args.server = server;
                cli::get::api_resources(args).await
            }
            Command::Send(mut args) => {
                args.server = server;
                cli::send::run(args).await
            }
            Command::Tail(mut args) => {
                args.server = server;
                cli::tail::run(args).await
            }
            Command::Dlq(cmd) => cli::dlq::run(cmd.with_server(server)).await,
            Command::Logs(mut args) => {
                args.server = server;
                cli::logs::run(args).await
            }
            Command::Cancel(mut args) => {
                args.server = server;
                cli::cancel::run(args).await
            }
            Command::Token(cmd) => cli::token::run(cmd, server).await,
            Command::Bench(cmd) => bench::run(cmd).await,
        }
    });
    drop(runtime);
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

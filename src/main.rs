//! The `kubewsgi` command: parses the CLI and hands over to one subsystem.

use anyhow::Context;
use clap::{Parser, Subcommand};
use kubewsgi::telemetry::{self, LogFormat};
use kubewsgi::{controller, crd, proxy, run, worker};

/// Run Python WSGI apps on Kubernetes: front proxy, worker server and operator in one binary.
#[derive(Parser, Debug)]
#[command(name = "kubewsgi", version, about)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        env = "KUBEWSGI_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve an app locally with proxy and worker server exactly as in a pod.
    Run(run::RunArgs),
    /// The worker server: master + worker processes embedding CPython (gunicorn role).
    Worker(worker::WorkerArgs),
    /// The front proxy: buffering, static files, TLS, limits, admission queue (nginx role).
    Proxy(proxy::ProxyArgs),
    /// The operator reconciling WsgiApp resources.
    Controller(controller::ControllerArgs),
    /// Print the WsgiApp CustomResourceDefinition as YAML.
    Crd,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format, "info");
    match cli.command {
        Command::Run(args) => run::main(args, cli.log_format).context("kubewsgi run"),
        Command::Worker(args) => worker::main(args).context("kubewsgi worker"),
        Command::Proxy(args) => proxy::main(args).context("kubewsgi proxy"),
        Command::Controller(args) => controller::main(args).context("kubewsgi controller"),
        Command::Crd => {
            use std::io::Write;
            match std::io::stdout().write_all(crd::crd_yaml().as_bytes()) {
                // `kubewsgi crd | head`: the reader has all it wanted.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                r => r.context("writing the CRD"),
            }
        }
    }
}

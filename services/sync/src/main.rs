use std::process::ExitCode;

use clap::Parser;

/// Natter's sync service: per-user update logs, device cursors, catch-up.
#[derive(Debug, Parser)]
#[command(name = "natter-sync", version)]
struct Args {
    #[command(flatten)]
    infra: natter_server::InfraArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    natter_server::run_binary("sync", &args.infra, natter_sync::start).await
}

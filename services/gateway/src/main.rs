use std::process::ExitCode;

use clap::Parser;

/// The Natter gateway: device sessions over gRPC and WebSocket.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    infra: natter_server::InfraArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    natter_server::run_binary("gateway", &args.infra, natter_gateway::start).await
}

use std::process::ExitCode;

use clap::Parser;

/// Natter's storage service: conversations, members and messages.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    infra: natter_server::InfraArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    natter_server::run_binary("storage", &args.infra, natter_storage::start).await
}

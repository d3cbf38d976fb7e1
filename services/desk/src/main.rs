use std::process::ExitCode;

use clap::Parser;

/// Natter's support desk service.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    infra: natter_server::InfraArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    natter_server::run_binary("desk", &args.infra, natter_desk::start).await
}

//! `natter`: every Natter service in one binary.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use natter_server::{InfraArgs, run_binary, run_with};

mod demo;
mod dev;
mod operate;
mod token;

#[derive(Debug, Parser)]
#[command(name = "natter", version, about = "Natter: self-hosted business chat")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run all five services in one process. With no --nats and no --cql
    /// this needs nothing installed: an in-process bus and an embedded
    /// store under --data-dir. Also serves a demo: a sample business
    /// website with the chat widget, and an agent console.
    Dev(dev::DevArgs),
    /// Run the gateway (device connections) alone.
    Gateway(InfraArgs),
    /// Run the storage service (conversations and messages) alone.
    Storage(InfraArgs),
    /// Run the sync service (update logs, cursors, catch-up) alone.
    Sync(InfraArgs),
    /// Run the fanout service (delivery to members) alone.
    Fanout(InfraArgs),
    /// Run the desk service (teams, agents, routing to them) alone.
    Desk(InfraArgs),
    /// Print a signed token for a user, using the HS256 secret from the
    /// settings (development and tests; production tokens come from the
    /// business's own identity service).
    Token(token::TokenArgs),
    /// Create or upgrade the CQL schema, then exit.
    Migrate(InfraArgs),
    /// Check settings before deploying them.
    #[command(subcommand)]
    Config(operate::ConfigCommand),
    /// Ask a running service whether it is serving (gRPC health); exits 0
    /// if it is, 1 if not or if it does not answer.
    Health(operate::HealthArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        // Five services in one future: box it rather than grow main's stack.
        Command::Dev(args) => {
            let demo_addr = args.demo_addr;
            Box::pin(run_with(
                "natter",
                args.infra.settings_with(dev::defaults),
                |settings, shutdown| dev::run(settings, demo_addr, shutdown),
            ))
            .await
        }
        Command::Gateway(args) => run_binary("gateway", &args, natter_gateway::start).await,
        Command::Storage(args) => run_binary("storage", &args, natter_storage::start).await,
        Command::Sync(args) => run_binary("sync", &args, natter_sync::start).await,
        Command::Fanout(args) => run_binary("fanout", &args, natter_fanout::start).await,
        Command::Desk(args) => run_binary("desk", &args, natter_desk::start).await,
        Command::Token(args) => token::print(&args),
        Command::Migrate(args) => run_binary("migrate", &args, dev::migrate).await,
        Command::Config(command) => operate::config(&command),
        Command::Health(args) => operate::health(&args).await,
    }
}

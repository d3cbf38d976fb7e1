//! `natter-load`: drives a running Natter gateway with devices and
//! measures it. `natter-load --help` lists the scenarios; README.md says
//! how the published figures were taken.

use std::process::ExitCode;

use clap::Parser as _;

mod cli;
mod clock;
mod gateway;
mod idle;
mod pairs;
mod plan;
mod report;
mod setup;
mod stats;
mod system;

use crate::cli::{Cli, Command};
use crate::report::Report;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = cli.threads {
        runtime.worker_threads(threads.max(1));
    }
    let result = runtime
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run(cli.command)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("natter-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Pairs(args) => {
            let json = args.output.json;
            Report::Pairs(pairs::run(args).await?).print(json)
        }
        Command::Idle(args) => {
            let json = args.output.json;
            let report = idle::run(args).await?;
            let opened = report.opened;
            Report::Idle(report).print(json)?;
            anyhow::ensure!(opened > 0, "no session opened");
            Ok(())
        }
    }
}

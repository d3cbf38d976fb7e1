//! `natter-load`: drives a running Natter gateway with devices and
//! measures it. `natter-load --help` lists the scenarios; README.md says
//! how the published figures were taken.

use std::process::ExitCode;

use clap::Parser as _;

mod catchup;
mod centrifugo;
mod cli;
mod clock;
mod costs;
mod gateway;
mod idle;
mod plan;
mod report;
mod setup;
mod slo;
mod stats;
mod storm;
mod system;
mod topology;
mod traffic;

use crate::cli::{Cli, Command};
use crate::report::Report;
use crate::slo::EXIT_SLO_MISSED;

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
        Ok(missed) if missed.is_empty() => ExitCode::SUCCESS,
        Ok(missed) => {
            for objective in missed {
                eprintln!("natter-load: objective missed: {objective}");
            }
            ExitCode::from(EXIT_SLO_MISSED)
        }
        Err(e) => {
            eprintln!("natter-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the scenario and prints its report (`desk-setup`: one line);
/// returns the objectives it missed.
async fn run(command: Command) -> anyhow::Result<Vec<String>> {
    let (report, json, slo) = match command {
        Command::DeskSetup(args) => {
            println!("{}", setup::desk(&args).await?);
            return Ok(Vec::new());
        }
        Command::Traffic(args) => {
            let (json, slo) = (args.output.json, args.slo.clone());
            (
                Report::Traffic(Box::new(traffic::run(args).await?)),
                json,
                slo,
            )
        }
        Command::Idle(args) => {
            let (json, slo) = (args.output.json, args.slo.clone());
            (Report::Idle(idle::run(args).await?), json, slo)
        }
        Command::ReconnectStorm(args) => {
            let (json, slo) = (args.output.json, args.slo.clone());
            (Report::ReconnectStorm(storm::run(args).await?), json, slo)
        }
        Command::CatchUp(args) => {
            let (json, slo) = (args.output.json, args.slo.clone());
            (Report::CatchUp(catchup::run(args).await?), json, slo)
        }
    };
    report.print(json)?;
    if let Report::Idle(idle) = &report {
        anyhow::ensure!(idle.opened > 0, "no session opened");
    }
    Ok(slo.check(&report.observed()))
}

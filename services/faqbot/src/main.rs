use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Natter's sample FAQ bot: answers customers from their business's FAQ,
/// and offers a person when unsure.
#[derive(Debug, Parser)]
struct Args {
    /// The gateway's gRPC endpoint.
    #[arg(
        long,
        env = "NATTER_FAQBOT_GATEWAY",
        default_value = "http://127.0.0.1:7000"
    )]
    gateway: String,
    /// A file holding the bot's JWT (role `bot`), minted by the business.
    #[arg(long, env = "NATTER_FAQBOT_TOKEN_FILE")]
    token_file: PathBuf,
    /// The bot's device id, stable across restarts.
    #[arg(long, env = "NATTER_FAQBOT_DEVICE_ID", default_value = "faqbot")]
    device_id: String,
    /// Seconds between reads of the FAQ.
    #[arg(long, env = "NATTER_FAQBOT_REFRESH_SECONDS", default_value_t = 30)]
    refresh_seconds: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    natter_telemetry::init("faqbot", natter_telemetry::LogFormat::Json, "info");
    let token = match std::fs::read_to_string(&args.token_file) {
        Ok(token) => token.trim().to_owned(),
        Err(e) => {
            eprintln!(
                "cannot read --token-file {}: {e}",
                args.token_file.display()
            );
            return ExitCode::from(64);
        }
    };
    let config = natter_faqbot::Config {
        bot: natter_bot::Config {
            device_id: args.device_id,
            ..natter_bot::Config::new(args.gateway, token)
        },
        refresh: Duration::from_secs(args.refresh_seconds.max(1)),
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    match natter_faqbot::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("natter-faqbot: {e}");
            ExitCode::FAILURE
        }
    }
}

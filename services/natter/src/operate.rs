//! Operators' commands: check a settings file, probe a running service.

use std::process::ExitCode;
use std::time::Duration;

use natter_server::InfraArgs;
use natter_server::config::EXIT_BAD_CONFIG;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ConfigCommand {
    /// Load the settings as a service would (file, then NATTER_*
    /// variables, then flags), validate them, and print the effective
    /// settings as TOML with secrets masked. Exits 64 if they are invalid.
    Check(InfraArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct HealthArgs {
    /// The service's gRPC address, host:port.
    addr: String,
    /// The service name to ask about (`natter.v1.GatewayService`, ...);
    /// empty asks about the server as a whole.
    #[arg(long, default_value = "")]
    service: String,
    /// How long to wait for an answer.
    #[arg(long, default_value_t = 5)]
    timeout_seconds: u64,
}

pub(crate) fn config(command: &ConfigCommand) -> ExitCode {
    let ConfigCommand::Check(args) = command;
    match args.settings() {
        Ok(settings) => match toml::to_string_pretty(&settings) {
            Ok(printed) => {
                eprintln!("natter config check: the settings are valid");
                print!("{printed}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("natter config check: cannot print the settings: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("natter config check: {e}");
            ExitCode::from(EXIT_BAD_CONFIG as u8)
        }
    }
}

/// Exits 0 when the service answers SERVING, 1 otherwise, as Kubernetes'
/// exec probes and `grpc_health_probe` do.
pub(crate) async fn health(args: &HealthArgs) -> ExitCode {
    let timeout = Duration::from_secs(args.timeout_seconds);
    let asked = tokio::time::timeout(timeout, async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", args.addr))
            .map_err(|e| format!("bad address {}: {e}", args.addr))?
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", args.addr))?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await
            .map_err(|status| format!("{}: {}", status.code(), status.message()))?;
        Ok::<_, String>(answer.into_inner().status())
    })
    .await
    .unwrap_or_else(|_| Err(format!("no answer within {}s", args.timeout_seconds)));
    match asked {
        Ok(status) => {
            println!("{}", status.as_str_name());
            if status == ServingStatus::Serving {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("natter health: {e}");
            ExitCode::FAILURE
        }
    }
}

//! What every binary does before and around its service: flags, settings,
//! telemetry, signals, exit codes.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, EXIT_BAD_CONFIG, load_config};
use crate::settings::Settings;

/// Flags that point a binary at its infrastructure; each overrides the
/// matching setting from the file and the environment.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct InfraArgs {
    /// A TOML settings file.
    #[arg(long, env = "NATTER_CONFIG")]
    pub config: Option<PathBuf>,
    /// NATS server URLs, comma-separated (sets bus.nats_url).
    #[arg(long)]
    pub nats: Option<String>,
    /// CQL contact points, host:port, comma-separated (sets store.cql_nodes).
    #[arg(long, value_delimiter = ',')]
    pub cql: Vec<String>,
    /// Where the embedded store keeps its data (sets store.data_dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl InfraArgs {
    /// Loads, overrides and validates the settings.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        self.settings_with(|_| {})
    }

    /// Like [`settings`](Self::settings), letting `adjust` fill in what the
    /// file and environment left unset before validation.
    pub fn settings_with(
        &self,
        adjust: impl FnOnce(&mut Settings),
    ) -> Result<Settings, ConfigError> {
        let mut settings: Settings = load_config(self.config.as_deref())?;
        adjust(&mut settings);
        if let Some(nats) = &self.nats {
            settings.bus.nats_url = nats.clone();
        }
        if !self.cql.is_empty() {
            settings.store.cql_nodes = self.cql.clone();
        }
        if let Some(dir) = &self.data_dir {
            settings.store.data_dir = dir.clone();
        }
        settings.validate()?;
        Ok(settings)
    }
}

/// Why a service could not start or stopped on its own.
#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("bus: {0}")]
    Bus(#[from] natter_bus::BusError),
    #[error("bus: {0}")]
    Contract(#[from] natter_contract::ContractError),
    #[error("store: {0}")]
    Store(#[from] natter_store::StoreError),
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
    #[error("grpc: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("grpc reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// The body of a service binary's `main`: loads settings from `args`
/// (exiting 64 on bad settings), sets up logging, runs `service` until
/// SIGTERM or Ctrl-C, and turns its result into the exit code.
pub async fn run_binary<F, Fut>(name: &'static str, args: &InfraArgs, service: F) -> ExitCode
where
    F: FnOnce(Settings, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), StartError>>,
{
    run_with(name, args.settings(), service).await
}

/// [`run_binary`] for settings the caller loaded itself.
pub async fn run_with<F, Fut>(
    name: &'static str,
    settings: Result<Settings, ConfigError>,
    service: F,
) -> ExitCode
where
    F: FnOnce(Settings, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), StartError>>,
{
    let settings = match settings {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("natter {name}: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    let format = if settings.log_format == "pretty" {
        natter_telemetry::LogFormat::Pretty
    } else {
        natter_telemetry::LogFormat::Json
    };
    natter_telemetry::init(name, format, "info");
    let shutdown = CancellationToken::new();
    if !settings.metrics_addr.is_empty() {
        // Before the service takes its handles, so that they record.
        natter_telemetry::metrics();
        match crate::bind("metrics", &settings.metrics_addr).await {
            Ok(listener) => {
                tokio::spawn(crate::metrics::serve(listener, shutdown.clone()));
            }
            Err(e) => {
                tracing::error!(service = name, error = %e, "cannot serve metrics");
                return ExitCode::FAILURE;
            }
        }
    }
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        crate::shutdown::signal().await;
        trigger.cancel();
    });
    // On the heap: a service's start-up future is large, and the binaries
    // should not each carry it on their stack.
    match Box::pin(service(settings, shutdown)).await {
        Ok(()) => {
            tracing::info!(service = name, "stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(service = name, error = %e, "service failed");
            ExitCode::FAILURE
        }
    }
}

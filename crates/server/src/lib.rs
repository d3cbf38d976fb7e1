//! The shell every Natter service shares, so each service's `main` is a few
//! lines: load and validate config before binding anything, serve gRPC with
//! health and reflection, authenticate callers and report store failures
//! as statuses, hold partitions through leases, and shut down gracefully
//! on SIGTERM.

mod auth;
pub mod clock;
pub mod config;
mod grpc;
pub mod launch;
mod listen;
pub mod metrics;
pub mod partitions;
pub mod settings;
pub mod shutdown;
mod store_status;

pub use auth::authenticate;
pub use config::{ConfigError, load_config};
pub use grpc::GrpcServer;
pub use launch::{InfraArgs, StartError, run_binary, run_with};
pub use listen::{bind, listen};
pub use settings::{Infra, Settings, Stores, Stripe};
pub use store_status::store_status;

//! The shell every Natter service shares, so each service's `main` is a few
//! lines: load and validate config before binding anything, serve gRPC with
//! health and reflection, and shut down gracefully on SIGTERM.

pub mod config;
mod grpc;
pub mod shutdown;

pub use config::{ConfigError, load_config};
pub use grpc::GrpcServer;

//! The end-to-end harness: run Natter as its users would (the real binaries
//! on real infrastructure) and drive it as clients would.

pub mod analytics;
pub mod bots;
pub mod cluster;
pub mod desk;
pub mod device;
pub mod payments;
pub mod scenarios;
pub mod webhooks;

pub use cluster::{Cluster, Mode, Service, authed};
pub use device::{Closed, Device, Outbound, Transport};

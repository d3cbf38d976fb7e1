//! The conformance suite against the in-process bus. All checks share one
//! bus, as the services of one process do; each opens it under a prefix of
//! its own.

use std::sync::LazyLock;

use natter_bus::Bus;
use natter_bus_local::LocalBus;

static BUS: LazyLock<LocalBus> = LazyLock::new(|| LocalBus::new("natter").expect("valid prefix"));

async fn bus(prefix: &str) -> LocalBus {
    BUS.with_prefix(prefix).expect("valid prefix")
}

natter_bus::bus_conformance!(bus);

#[test]
fn streams_live_in_memory() {
    assert!(!BUS.keeps_streams());
}

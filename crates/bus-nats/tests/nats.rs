//! The conformance suite against a real NATS server with JetStream, from
//! `NATTER_TEST_NATS_URL` (set by `scripts/test`). Each factory call is a
//! new connection, as a new process would make.

use natter_bus::Bus;
use natter_bus_nats::NatsBus;

async fn bus(prefix: &str) -> NatsBus {
    let url = natter_testkit::nats_url();
    NatsBus::connect(&url, prefix)
        .await
        .unwrap_or_else(|err| panic!("{err}; run the tests with `scripts/test`, which starts NATS"))
}

natter_bus::bus_conformance!(bus);

#[tokio::test]
async fn streams_outlive_the_process() {
    assert!(bus(&natter_testkit::unique_name("t")).await.keeps_streams());
}

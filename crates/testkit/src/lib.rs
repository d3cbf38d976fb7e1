//! What every test against real infrastructure needs: where the servers
//! are, and names no other test uses, so tests run in parallel on one NATS
//! server and one CQL node.
//!
//! The servers are started by `scripts/test`, which exports their addresses.
//! A missing or unreachable server fails the test with instructions; it
//! never skips it.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The NATS server (with JetStream) tests use, as a `nats://` URL.
pub fn nats_url() -> String {
    let url = required_env("NATTER_TEST_NATS_URL", "NATS");
    let address = url.trim_start_matches("nats://");
    ensure_reachable("NATS", "NATTER_TEST_NATS_URL", address);
    url
}

/// The CQL node (Cassandra or ScyllaDB) tests use, as `host:port`.
pub fn cql_node() -> String {
    let node = required_env("NATTER_TEST_CQL", "CQL");
    ensure_reachable("CQL", "NATTER_TEST_CQL", &node);
    node
}

/// The CQL node's datacenter, for `NetworkTopologyStrategy`.
pub fn cql_datacenter() -> String {
    std::env::var("NATTER_TEST_CQL_DC").unwrap_or_else(|_| "datacenter1".to_owned())
}

/// A name no other test run uses: a letter, then 16 hex digits, so it is a
/// valid CQL keyspace and NATS subject token.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..16])
}

fn required_env(var: &str, server: &str) -> String {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{var} is not set: this test needs a real {server} server. \
             Run the tests with `scripts/test`, which starts NATS and Cassandra, \
             or start them with `scripts/test up` and export the variables it prints"
        ),
    }
}

fn ensure_reachable(server: &str, var: &str, address: &str) {
    let reachable = address.to_socket_addrs().is_ok_and(|mut addrs| {
        addrs.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
    });
    assert!(
        reachable,
        "{server} is not reachable at {address} (from {var}). \
         Is it running? `scripts/test up` starts it"
    );
}

//! What every test against real infrastructure needs: where the servers
//! are, and names no other test uses, so tests run in parallel on one NATS
//! server and one CQL node.
//!
//! The servers are started by `scripts/test`, which exports their addresses.
//! A missing or unreachable server fails the test with instructions; it
//! never skips it.

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

/// The NATS server (with JetStream) tests use, as a `nats://` URL.
pub fn nats_url() -> String {
    let url = required_env("NATTER_TEST_NATS_URL", "NATS");
    let address = url.trim_start_matches("nats://");
    ensure_reachable("NATS", "NATTER_TEST_NATS_URL", address);
    url
}

/// The nats-server binary, for tests that run a server of their own.
pub fn nats_server_binary() -> PathBuf {
    let path = PathBuf::from(required_env("NATTER_TEST_NATS_SERVER", "nats-server"));
    assert!(
        path.is_file(),
        "NATTER_TEST_NATS_SERVER={} is not a file",
        path.display()
    );
    path
}

/// The CQL node (Cassandra or ScyllaDB) tests use, as `host:port`.
pub fn cql_node() -> String {
    let node = required_env("NATTER_TEST_CQL", "CQL");
    ensure_reachable("CQL", "NATTER_TEST_CQL", &node);
    node
}

/// The stripe-mock (Stripe's API mock) payment tests use, as an
/// `http://` URL.
pub fn stripe_url() -> String {
    let url = required_env("NATTER_TEST_STRIPE_URL", "stripe-mock");
    let address = url.trim_start_matches("http://").trim_end_matches('/');
    ensure_reachable("stripe-mock", "NATTER_TEST_STRIPE_URL", address);
    url
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

/// A port for a server a test starts. Asking the OS for port 0 and
/// releasing it races: the OS hands the same port to outgoing connections
/// (the CQL driver's, NATS clients') before the server binds it. So ports
/// come from below the Linux ephemeral range (32768 and up), from a counter
/// that keeps this process's tests apart, skipping any in use.
pub fn free_port() -> SocketAddr {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = (std::process::id() % 200) as u16 * 50;
    loop {
        let port = 20_000 + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().expect("a bound address");
        }
    }
}

/// A binary of the workspace, built beside the test executable
/// (`target/<profile>`); `scripts/test` builds them before running tests.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`), \
         which `scripts/test` does",
        path.display()
    );
    path
}

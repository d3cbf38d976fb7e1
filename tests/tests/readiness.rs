//! Readiness means something: a service reports NOT_SERVING while it has
//! lost NATS or its database, and SERVING again once it is back, without a
//! restart. Each is lost by cutting a relay between the service and the
//! tests' server, which the other tests share and which must keep running.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Relays TCP from `at` to `target` until cut; connections open at the
/// cut are closed with it.
struct Relay {
    at: SocketAddr,
    target: String,
    tasks: JoinSet<()>,
}

impl Relay {
    async fn start(target: String) -> Relay {
        let mut relay = Relay {
            at: natter_testkit::free_port(),
            target,
            tasks: JoinSet::new(),
        };
        relay.restore().await;
        relay
    }

    async fn restore(&mut self) {
        let listener = TcpListener::bind(self.at).await.expect("the relay's port");
        let target = self.target.clone();
        self.tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
    }

    fn cut(&mut self) {
        // Aborting the accept loop drops its listener and, with its
        // JoinSet, every connection it relays.
        self.tasks.abort_all();
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn status(addr: SocketAddr) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    Some(answer.into_inner().status())
}

async fn until(addr: SocketAddr, want: ServingStatus, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if status(addr).await == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{addr} never said {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts `binary` on `settings` (the auth section added), and waits until
/// it serves on `grpc`.
async fn serving(binary: &str, grpc: SocketAddr, settings: &str) -> (Killed, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(natter_testkit::unique_name("readiness"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("natter.toml");
    std::fs::write(
        &config,
        format!("[auth]\nhs256_secret = \"a-secret-that-is-at-least-32-bytes-long\"\n\n{settings}"),
    )
    .expect("settings file");
    let service = Killed(
        Command::new(natter_testkit::binary(binary))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {binary}: {e}")),
    );
    until(grpc, ServingStatus::Serving, Duration::from_secs(60)).await;
    (service, dir)
}

/// The service on `grpc` goes NOT_SERVING once `relay` is cut, and SERVING
/// once it is restored (the database's driver reconnects with a backoff of
/// some seconds).
async fn cut_and_restore(relay: &mut Relay, grpc: SocketAddr) {
    relay.cut();
    until(grpc, ServingStatus::NotServing, Duration::from_secs(15)).await;
    relay.restore().await;
    until(grpc, ServingStatus::Serving, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_is_not_ready_while_nats_is_lost() {
    let nats = natter_testkit::nats_url();
    let mut relay = Relay::start(nats.trim_start_matches("nats://").to_owned()).await;
    let grpc = natter_testkit::free_port();
    let (_fanout, dir) = serving(
        "natter-fanout",
        grpc,
        &format!(
            "[bus]\nnats_url = \"nats://{}\"\nprefix = {:?}\npartitions = 2\n\n\
             [fanout]\ngrpc_addr = \"{grpc}\"\n",
            relay.at,
            natter_testkit::unique_name("ready"),
        ),
    )
    .await;

    cut_and_restore(&mut relay, grpc).await;
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_is_not_ready_while_its_database_is_lost() {
    let mut relay = Relay::start(natter_testkit::cql_node()).await;
    let grpc = natter_testkit::free_port();
    let name = natter_testkit::unique_name("ready");
    let (_storage, dir) = serving(
        "natter-storage",
        grpc,
        &format!(
            "[bus]\nnats_url = {:?}\nprefix = {name:?}\npartitions = 2\n\n\
             [store]\ncql_nodes = [\"{}\"]\nkeyspace = {:?}\ndatacenter = {:?}\n\
             replication_factor = 1\n\n[storage]\ngrpc_addr = \"{grpc}\"\n",
            natter_testkit::nats_url(),
            relay.at,
            name.replace('-', "_"),
            natter_testkit::cql_datacenter(),
        ),
    )
    .await;

    cut_and_restore(&mut relay, grpc).await;
    std::fs::remove_dir_all(&dir).expect("clean up");
}

//! Readiness means something: a service reports NOT_SERVING while it has
//! lost NATS, and SERVING again once NATS is back, without a restart. NATS
//! is lost by cutting a relay between the service and the tests' NATS
//! server, which the other tests share and which must keep running.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_is_not_ready_while_nats_is_lost() {
    let nats = natter_testkit::nats_url();
    let mut relay = Relay::start(nats.trim_start_matches("nats://").to_owned()).await;
    let grpc = natter_testkit::free_port();
    let dir = std::env::temp_dir().join(natter_testkit::unique_name("readiness"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("natter.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nhs256_secret = \"a-secret-that-is-at-least-32-bytes-long\"\n\n\
             [bus]\nnats_url = \"nats://{}\"\nprefix = {:?}\npartitions = 2\n\n\
             [fanout]\ngrpc_addr = \"{grpc}\"\n",
            relay.at,
            natter_testkit::unique_name("ready"),
        ),
    )
    .expect("settings file");
    let _fanout = Killed(
        Command::new(natter_testkit::binary("natter-fanout"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .spawn()
            .expect("start natter-fanout"),
    );
    until(grpc, ServingStatus::Serving, Duration::from_secs(30)).await;

    relay.cut();
    until(grpc, ServingStatus::NotServing, Duration::from_secs(10)).await;

    relay.restore().await;
    until(grpc, ServingStatus::Serving, Duration::from_secs(30)).await;
    std::fs::remove_dir_all(&dir).expect("clean up");
}

//! Runs Natter's real binaries as child processes: the five services
//! separately on real NATS and Cassandra, or all of them in one process
//! on the embedded defaults.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use natter_auth::{Identity, Signer};
use natter_core::{Role, TenantId, UserId};
use natter_proto::v1::conversation_service_client::ConversationServiceClient;
use natter_proto::v1::desk_service_client::DeskServiceClient;
use natter_proto::v1::event_service_client::EventServiceClient;
use natter_proto::v1::fanout_service_client::FanoutServiceClient;
use natter_proto::v1::sync_service_client::SyncServiceClient;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const SECRET: &str = "end-to-end-test-secret-of-at-least-32-bytes";

/// How the system under test runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Five processes on the test NATS server and Cassandra node.
    Separate,
    /// `natter dev`: one process, in-process bus, embedded store.
    Single,
}

/// One of the processes a cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Gateway,
    Storage,
    Sync,
    Fanout,
    Desk,
    /// All five in one process (`natter dev`).
    All,
    /// A second storage process beside the first, on its own gRPC port:
    /// it holds the partitions the first does not (none while the first
    /// runs), and takes them over when it goes.
    StandbyStorage,
}

impl Service {
    fn log_name(self) -> String {
        match self {
            Service::StandbyStorage => "natter-storage-standby.log".to_owned(),
            other => format!("{}.log", other.command().0),
        }
    }

    pub const SEPARATE: [Service; 5] = [
        Service::Storage,
        Service::Sync,
        Service::Fanout,
        Service::Desk,
        Service::Gateway,
    ];

    fn command(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Service::Gateway => ("natter-gateway", &[]),
            Service::Storage | Service::StandbyStorage => ("natter-storage", &[]),
            Service::Sync => ("natter-sync", &[]),
            Service::Fanout => ("natter-fanout", &[]),
            Service::Desk => ("natter-desk", &[]),
            Service::All => ("natter", &["dev", "--demo-addr", "off"]),
        }
    }
}

/// Addresses of a running cluster.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub gateway_grpc: SocketAddr,
    pub gateway_http: SocketAddr,
    pub storage: SocketAddr,
    pub sync: SocketAddr,
    pub fanout: SocketAddr,
    pub desk: SocketAddr,
    /// The desk's HTTP endpoint for payment webhooks.
    pub desk_http: SocketAddr,
    /// The standby storage process's gRPC address, once started.
    pub standby_storage: SocketAddr,
}

/// A running Natter; every process is killed when it drops.
#[derive(Debug)]
pub struct Cluster {
    pub mode: Mode,
    pub addrs: Addrs,
    config: PathBuf,
    dir: PathBuf,
    children: HashMap<Service, Child>,
    /// Where each process serves `/metrics`.
    metrics: HashMap<Service, SocketAddr>,
    signer: Signer,
    tenant: TenantId,
}

/// The Stripe webhook signing secret of clusters that take payments.
pub const STRIPE_WEBHOOK_SECRET: &str = "whsec_end_to_end_test_secret";

impl Cluster {
    pub async fn start(mode: Mode) -> Cluster {
        Self::start_with(mode, false).await
    }

    /// A cluster whose desk takes payments through the test stripe-mock.
    pub async fn start_paying(mode: Mode) -> Cluster {
        Self::start_with(mode, true).await
    }

    async fn start_with(mode: Mode, payments: bool) -> Cluster {
        let name = natter_testkit::unique_name("e2e");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).expect("create the cluster's directory");
        let addrs = Addrs {
            gateway_grpc: natter_testkit::free_port(),
            gateway_http: natter_testkit::free_port(),
            storage: natter_testkit::free_port(),
            sync: natter_testkit::free_port(),
            fanout: natter_testkit::free_port(),
            desk: natter_testkit::free_port(),
            desk_http: natter_testkit::free_port(),
            standby_storage: natter_testkit::free_port(),
        };
        let infra = match mode {
            Mode::Separate => format!(
                "[bus]\nnats_url = {:?}\nprefix = {name:?}\npartitions = 4\n\n\
                 [store]\ncql_nodes = [{:?}]\nkeyspace = {name:?}\ndatacenter = {:?}\nreplication_factor = 1\n",
                natter_testkit::nats_url(),
                natter_testkit::cql_node(),
                natter_testkit::cql_datacenter(),
            ),
            Mode::Single => format!(
                "[bus]\nprefix = {name:?}\npartitions = 4\n\n[store]\ndata_dir = {:?}\n",
                dir.join("data")
            ),
        };
        let config = dir.join("natter.toml");
        let settings = format!(
            "log_format = \"json\"\ngrace_period_seconds = 2\n\n{infra}\n\
             [auth]\nhs256_secret = {SECRET:?}\n\n\
             [gateway]\ngrpc_addr = \"{}\"\nhttp_addr = \"{}\"\n\n\
             [storage]\ngrpc_addr = \"{}\"\n\n[sync]\ngrpc_addr = \"{}\"\n\n[fanout]\ngrpc_addr = \"{}\"\n\n\
             [desk]\ngrpc_addr = \"{}\"\nhttp_addr = \"{}\"\n",
            addrs.gateway_grpc,
            addrs.gateway_http,
            addrs.storage,
            addrs.sync,
            addrs.fanout,
            addrs.desk,
            addrs.desk_http,
        );
        let settings = if payments {
            format!(
                "{settings}\n[desk.stripe]\napi_key = \"sk_test_123\"\napi_base = {:?}\n\
                 webhook_secrets = [\"whsec_an_older_secret_still_valid\", {STRIPE_WEBHOOK_SECRET:?}]\n",
                natter_testkit::stripe_url(),
            )
        } else {
            settings
        };
        std::fs::write(&config, settings).expect("write the cluster's settings");

        let mut cluster = Cluster {
            mode,
            addrs,
            config,
            dir,
            children: HashMap::new(),
            metrics: HashMap::new(),
            signer: Signer::hs256(SECRET.as_bytes()),
            tenant: TenantId::new(natter_testkit::unique_name("tenant")).expect("tenant id"),
        };
        for service in cluster.services() {
            cluster.spawn(service);
        }
        for service in cluster.services() {
            cluster.wait_serving(service).await;
        }
        cluster
    }

    /// What a process's `/metrics` says now, in Prometheus' text format.
    pub async fn scrape(&self, service: Service) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.metrics[&service];
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{service:?} serves no metrics on {addr}: {e}"));
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: natter\r\n\r\n")
            .await
            .expect("ask for the metrics");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .await
            .expect("read the metrics");
        let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        body.to_owned()
    }

    /// The processes this cluster runs.
    pub fn services(&self) -> Vec<Service> {
        match self.mode {
            Mode::Separate => Service::SEPARATE.to_vec(),
            Mode::Single => vec![Service::All],
        }
    }

    fn spawn(&mut self, service: Service) {
        let (binary, args) = service.command();
        let path = natter_testkit::binary(binary);
        let log = self.dir.join(service.log_name());
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open the service log");
        let mut command = Command::new(&path);
        let metrics = *self
            .metrics
            .entry(service)
            .or_insert_with(natter_testkit::free_port);
        command.env("NATTER_METRICS_ADDR", metrics.to_string());
        if service == Service::StandbyStorage {
            command.env(
                "NATTER_STORAGE__GRPC_ADDR",
                self.addrs.standby_storage.to_string(),
            );
        }
        let child = command
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(out.try_clone().expect("clone the log handle")))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
        self.children.insert(service, child);
    }

    async fn wait_serving(&mut self, service: Service) {
        let addrs = match service {
            Service::Gateway => vec![self.addrs.gateway_grpc],
            Service::Storage => vec![self.addrs.storage],
            Service::StandbyStorage => vec![self.addrs.standby_storage],
            Service::Sync => vec![self.addrs.sync],
            Service::Fanout => vec![self.addrs.fanout],
            Service::Desk => vec![self.addrs.desk],
            Service::All => vec![
                self.addrs.gateway_grpc,
                self.addrs.storage,
                self.addrs.sync,
                self.addrs.fanout,
                self.addrs.desk,
            ],
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        for addr in addrs {
            loop {
                if let Some(child) = self.children.get_mut(&service)
                    && let Ok(Some(status)) = child.try_wait()
                {
                    panic!(
                        "{service:?} exited with {status} while starting; log:\n{}",
                        self.log_tail(service)
                    );
                }
                if serving(addr).await {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{service:?} is not serving on {addr} after 90 s; log:\n{}",
                    self.log_tail(service)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Starts a process this cluster does not run yet and waits until it
    /// serves.
    pub async fn start_service(&mut self, service: Service) {
        self.spawn(service);
        self.wait_serving(service).await;
    }

    /// Kills a process with SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self, service: Service) {
        if let Some(mut child) = self.children.remove(&service) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits up to `within` for the process to exit;
    /// returns its exit status, or `None` if it did not exit in time.
    pub fn terminate(
        &mut self,
        service: Service,
        within: Duration,
    ) -> Option<std::process::ExitStatus> {
        let mut child = self.children.remove(&service)?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Starts a killed process again and waits until it serves.
    pub async fn restart(&mut self, service: Service) {
        self.kill(service);
        self.spawn(service);
        self.wait_serving(service).await;
    }

    /// The last lines a process logged, for failure messages.
    pub fn log_tail(&self, service: Service) -> String {
        let log = self.dir.join(service.log_name());
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The tenant this cluster's tests act in.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// A token for `user` in this cluster's tenant.
    pub fn token(&self, user: &str, role: Role) -> String {
        self.token_in(&self.tenant.clone(), user, role)
    }

    pub fn token_in(&self, tenant: &TenantId, user: &str, role: Role) -> String {
        let identity = Identity {
            tenant: tenant.clone(),
            user: UserId::new(user).expect("user id"),
            role,
        };
        self.signer.token(&identity, 3600).expect("sign a token")
    }

    pub async fn conversations(&self) -> ConversationServiceClient<Channel> {
        ConversationServiceClient::new(channel(self.addrs.storage).await)
    }

    pub async fn sync(&self) -> SyncServiceClient<Channel> {
        SyncServiceClient::new(channel(self.addrs.sync).await)
    }

    pub async fn fanout(&self) -> FanoutServiceClient<Channel> {
        FanoutServiceClient::new(channel(self.addrs.fanout).await)
    }

    pub async fn desk(&self) -> DeskServiceClient<Channel> {
        DeskServiceClient::new(channel(self.addrs.desk).await)
    }

    pub async fn events(&self) -> EventServiceClient<Channel> {
        EventServiceClient::new(channel(self.addrs.desk).await)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, mut child) in self.children.drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A request carrying `token` as its bearer.
pub fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    request
}

pub async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"))
}

async fn serving(addr: SocketAddr) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
        return false;
    };
    let Ok(channel) = endpoint
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
    else {
        return false;
    };
    let check = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    check.is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving)
}

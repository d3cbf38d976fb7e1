//! The settings every service shares: where the bus and the store are, how
//! tokens are verified, the domain limits, and how long shutdown may take.
//! One file configures a whole install; each service reads its own section
//! beside these.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use natter_auth::Verifier;
use natter_bus::Bus;
use natter_contract::Topology;
use natter_core::Limits;
use natter_store::{ConversationStore, DeskStore, SyncStore};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// A secret setting: a string that is never printed. Its `Debug` says
/// whether it is set, not what it is, so logging the settings is safe.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

/// Masked too: settings are serialized only as the defaults, where secrets
/// are empty, and to be printed (`natter config check`).
impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.masked())
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn masked(&self) -> &'static str {
        if self.0.is_empty() { "" } else { "<redacted>" }
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<unset>"
        } else {
            self.masked()
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub bus: BusSettings,
    pub store: StoreSettings,
    pub auth: AuthSettings,
    pub limits: LimitSettings,
    /// How long a service waits for open calls and streams after SIGTERM.
    pub grace_period_seconds: u64,
    /// `json` (one object per line) or `pretty`.
    pub log_format: String,
    /// Client connections to the gRPC APIs are closed after this long, so
    /// that long-lived streams rebalance over new replicas; 0: never.
    pub grpc_max_connection_age_seconds: u64,
    /// Where the process serves `GET /metrics` for Prometheus, host:port;
    /// empty: nowhere. One per process (`natter dev` serves all five
    /// services' metrics on one).
    pub metrics_addr: String,
    pub gateway: GatewaySettings,
    pub storage: ServiceSettings,
    pub sync: SyncSettings,
    pub fanout: FanoutSettings,
    pub desk: DeskSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bus: BusSettings::default(),
            store: StoreSettings::default(),
            auth: AuthSettings::default(),
            limits: LimitSettings::default(),
            grace_period_seconds: 10,
            log_format: "json".into(),
            grpc_max_connection_age_seconds: 0,
            metrics_addr: String::new(),
            gateway: GatewaySettings::default(),
            storage: ServiceSettings::at("127.0.0.1:7200"),
            sync: SyncSettings::default(),
            fanout: FanoutSettings::default(),
            desk: DeskSettings::default(),
        }
    }
}

/// A service with only a gRPC address to configure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceSettings {
    /// Where the service's gRPC API listens.
    pub grpc_addr: String,
}

impl ServiceSettings {
    fn at(addr: &str) -> Self {
        Self {
            grpc_addr: addr.into(),
        }
    }
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self::at("127.0.0.1:0")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeskSettings {
    /// Where the desk's gRPC API listens.
    pub grpc_addr: String,
    /// Where the desk's HTTP endpoint for payment providers' webhooks
    /// (`POST /v1/payments/stripe`) listens; empty for none (`natter dev`
    /// listens on 127.0.0.1:7580 when Stripe is configured).
    pub http_addr: String,
    /// Payments through Stripe; without an API key the desk asks for none.
    pub stripe: StripeSettings,
}

impl Default for DeskSettings {
    fn default() -> Self {
        Self {
            grpc_addr: "127.0.0.1:7500".into(),
            http_addr: String::new(),
            stripe: StripeSettings::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StripeSettings {
    /// The secret API key (`sk_live_…`, `sk_test_…`); or `api_key_file`.
    pub api_key: Secret,
    /// A file holding the secret API key.
    pub api_key_file: PathBuf,
    /// Stripe's API; a stripe-mock's address in tests.
    pub api_base: String,
    /// The endpoint's signing secrets (`whsec_…`): a delivery signed with
    /// any of them is taken, so a new one can be added before the old one
    /// goes.
    pub webhook_secrets: Vec<Secret>,
    /// A file holding more signing secrets, one a line.
    pub webhook_secrets_file: PathBuf,
    /// How old a signed delivery may be, in seconds.
    pub tolerance_seconds: u64,
    /// Where the checkout page sends a customer who paid, and one who went
    /// back; the business's own pages.
    pub success_url: String,
    pub cancel_url: String,
}

impl Default for StripeSettings {
    fn default() -> Self {
        Self {
            api_key: Secret::default(),
            api_key_file: PathBuf::new(),
            api_base: "https://api.stripe.com".into(),
            webhook_secrets: Vec::new(),
            webhook_secrets_file: PathBuf::new(),
            tolerance_seconds: 300,
            success_url: "https://example.com/paid".into(),
            cancel_url: "https://example.com/not-paid".into(),
        }
    }
}

/// The Stripe settings with their secrets read, for the desk.
#[derive(Clone, PartialEq, Eq)]
pub struct Stripe {
    pub api_key: String,
    pub api_base: String,
    pub webhook_secrets: Vec<String>,
    pub tolerance: Duration,
    pub success_url: String,
    pub cancel_url: String,
}

impl std::fmt::Debug for Stripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stripe")
            .field("api_base", &self.api_base)
            .field("webhook_secrets", &self.webhook_secrets.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySettings {
    /// Where `GatewayService.Connect` (gRPC) listens.
    pub grpc_addr: String,
    /// Where the WebSocket endpoint `GET /v1/connect` listens.
    pub http_addr: String,
    /// Frames queued for one device before it counts as too slow and is
    /// disconnected (it catches up on reconnect).
    pub outbound_queue: usize,
    /// Live updates held for one device while its catch-up runs; those
    /// beyond it are fetched from the log instead.
    pub max_held_updates: usize,
    /// Conversations one session may watch at once.
    pub max_watches: usize,
    /// Largest client frame accepted, in bytes.
    pub max_frame_bytes: usize,
    /// How long a new connection may take to say hello.
    pub hello_timeout_seconds: u64,
    /// How long a send waits for storage before the device is told to retry.
    pub send_timeout_seconds: u64,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            grpc_addr: "127.0.0.1:7100".into(),
            http_addr: "127.0.0.1:8080".into(),
            outbound_queue: 256,
            max_held_updates: 1024,
            max_watches: 16,
            max_frame_bytes: 128 * 1024,
            hello_timeout_seconds: 10,
            send_timeout_seconds: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncSettings {
    pub grpc_addr: String,
    /// Updates kept per user; a device further behind must resync.
    pub retained_updates: u64,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            grpc_addr: "127.0.0.1:7300".into(),
            retained_updates: 100_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FanoutSettings {
    pub grpc_addr: String,
    /// Typing signals older than this are dropped.
    pub typing_ttl_seconds: u64,
}

impl Default for FanoutSettings {
    fn default() -> Self {
        Self {
            grpc_addr: "127.0.0.1:7400".into(),
            typing_ttl_seconds: 10,
        }
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusSettings {
    /// NATS server URLs, comma-separated. Empty: the in-process bus, which
    /// only works when all services run in one process. Printed without
    /// the passwords or tokens they may hold.
    #[serde(serialize_with = "serialize_without_passwords")]
    pub nats_url: String,
    /// Prepended to every subject and stream name.
    pub prefix: String,
    /// Partitions of each durable stream.
    pub partitions: u32,
    /// Copies of each stream: 1 on a single server, 3 in a cluster.
    pub replicas: usize,
    /// A NATS credentials file (user JWT and nkey seed); empty: none.
    pub credentials_file: PathBuf,
    /// The CA (PEM) that signed the servers' certificates; set, TLS is
    /// required.
    pub tls_ca_file: PathBuf,
    /// A client certificate and its key (PEM), for servers that verify
    /// clients; both or neither.
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
}

impl Default for BusSettings {
    fn default() -> Self {
        Self {
            nats_url: String::new(),
            prefix: "natter".into(),
            partitions: 16,
            replicas: 1,
            credentials_file: PathBuf::new(),
            tls_ca_file: PathBuf::new(),
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
        }
    }
}

impl std::fmt::Debug for BusSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusSettings")
            .field("nats_url", &natter_bus_nats::redacted(&self.nats_url))
            .field("prefix", &self.prefix)
            .field("partitions", &self.partitions)
            .field("replicas", &self.replicas)
            .field("credentials_file", &self.credentials_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .finish()
    }
}

fn serialize_without_passwords<S: serde::Serializer>(
    urls: &str,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&natter_bus_nats::redacted(urls))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// CQL contact points (`host:port`). Empty: the embedded store.
    pub cql_nodes: Vec<String>,
    pub keyspace: String,
    /// The local datacenter of the CQL cluster.
    pub datacenter: String,
    pub replication_factor: u32,
    /// Where the embedded store keeps its file.
    pub data_dir: PathBuf,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            cql_nodes: Vec::new(),
            keyspace: "natter".into(),
            datacenter: "datacenter1".into(),
            replication_factor: 3,
            data_dir: PathBuf::from("natter-data"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// HS256 secret, at least 32 bytes (development).
    pub hs256_secret: Secret,
    /// A file holding the HS256 secret (for Kubernetes secrets).
    pub hs256_secret_file: PathBuf,
    /// A JWKS file with the RS256 or EdDSA keys tokens are signed with.
    pub jwks_file: PathBuf,
    /// The `iss` every token must carry; empty: not checked.
    pub issuer: String,
    /// An audience every token's `aud` must include; empty: not checked.
    pub audience: String,
    /// How far ahead a token may expire; 0: no limit.
    pub max_token_lifetime_seconds: u64,
    /// Keys bound to one tenant each: tokens of a tenant listed here are
    /// verified with its keys alone. With tenants, the shared keys above
    /// are optional (they serve the tenants not listed).
    pub tenants: std::collections::BTreeMap<String, TenantKeys>,
    /// How often key files are read again, so that rotated keys take
    /// effect without a restart; 0: never.
    pub keys_reload_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantKeys {
    /// The tenant's JWKS file (RS256 or EdDSA keys).
    pub jwks_file: PathBuf,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            hs256_secret: Secret::default(),
            hs256_secret_file: PathBuf::new(),
            jwks_file: PathBuf::new(),
            issuer: String::new(),
            audience: String::new(),
            max_token_lifetime_seconds: 24 * 3600,
            tenants: std::collections::BTreeMap::new(),
            keys_reload_seconds: 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    pub max_message_bytes: usize,
    pub max_members: usize,
    pub max_page_size: u32,
    /// Rooms with more members than this deliver new messages only to
    /// devices watching them, not through every member's update log.
    pub big_room_members: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            max_message_bytes: limits.max_message_bytes,
            max_members: limits.max_members,
            max_page_size: limits.max_page_size,
            big_room_members: limits.big_room_members,
        }
    }
}

impl Settings {
    /// Checks everything that can be checked without connecting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.bus.nats_url;
        if !url.is_empty()
            && !url
                .split(',')
                .all(|u| u.starts_with("nats://") || u.starts_with("tls://"))
        {
            return Err(ConfigError::key(
                "bus.nats_url",
                "must be nats:// or tls:// URLs, comma-separated",
            ));
        }
        if self.bus.tls_cert_file.as_os_str().is_empty()
            != self.bus.tls_key_file.as_os_str().is_empty()
        {
            return Err(ConfigError::key(
                "bus.tls_cert_file",
                "set both bus.tls_cert_file and bus.tls_key_file, or neither",
            ));
        }
        for (key, path) in [
            ("bus.credentials_file", &self.bus.credentials_file),
            ("bus.tls_ca_file", &self.bus.tls_ca_file),
            ("bus.tls_cert_file", &self.bus.tls_cert_file),
            ("bus.tls_key_file", &self.bus.tls_key_file),
        ] {
            if !path.as_os_str().is_empty() && !path.is_file() {
                return Err(ConfigError::key(
                    key,
                    format!("{} is not a file", path.display()),
                ));
            }
        }
        if !(1..=1024).contains(&self.bus.partitions) {
            return Err(ConfigError::key("bus.partitions", "must be 1 to 1024"));
        }
        if self.bus.replicas == 0 {
            return Err(ConfigError::key("bus.replicas", "must be at least 1"));
        }
        natter_bus::Prefix::new(&self.bus.prefix)
            .map_err(|e| ConfigError::key("bus.prefix", e.to_string()))?;
        if self.store.cql_nodes.is_empty() && self.store.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::key(
                "store.data_dir",
                "is required when store.cql_nodes is empty",
            ));
        }
        if self.limits.max_message_bytes == 0 || self.limits.max_message_bytes > 1 << 20 {
            return Err(ConfigError::key(
                "limits.max_message_bytes",
                "must be 1 byte to 1 MiB",
            ));
        }
        if self.limits.max_members == 0 {
            return Err(ConfigError::key("limits.max_members", "must be positive"));
        }
        if self.limits.max_page_size == 0 {
            return Err(ConfigError::key("limits.max_page_size", "must be positive"));
        }
        for (key, addr) in [
            ("gateway.grpc_addr", &self.gateway.grpc_addr),
            ("gateway.http_addr", &self.gateway.http_addr),
            ("storage.grpc_addr", &self.storage.grpc_addr),
            ("sync.grpc_addr", &self.sync.grpc_addr),
            ("fanout.grpc_addr", &self.fanout.grpc_addr),
            ("desk.grpc_addr", &self.desk.grpc_addr),
        ] {
            addr.parse::<std::net::SocketAddr>()
                .map_err(|e| ConfigError::key(key, format!("{addr:?} is not host:port: {e}")))?;
        }
        for (key, value) in [
            ("gateway.outbound_queue", self.gateway.outbound_queue),
            ("gateway.max_held_updates", self.gateway.max_held_updates),
            ("gateway.max_watches", self.gateway.max_watches),
            ("limits.big_room_members", self.limits.big_room_members),
            ("gateway.max_frame_bytes", self.gateway.max_frame_bytes),
            (
                "gateway.hello_timeout_seconds",
                self.gateway.hello_timeout_seconds as usize,
            ),
            (
                "gateway.send_timeout_seconds",
                self.gateway.send_timeout_seconds as usize,
            ),
            ("sync.retained_updates", self.sync.retained_updates as usize),
        ] {
            if value == 0 {
                return Err(ConfigError::key(key, "must be positive"));
            }
        }
        if !matches!(self.log_format.as_str(), "json" | "pretty") {
            return Err(ConfigError::key("log_format", "must be json or pretty"));
        }
        for (key, addr) in [
            ("desk.http_addr", &self.desk.http_addr),
            ("metrics_addr", &self.metrics_addr),
        ] {
            if !addr.is_empty() {
                addr.parse::<std::net::SocketAddr>().map_err(|e| {
                    ConfigError::key(key, format!("{addr:?} is not host:port: {e}"))
                })?;
            }
        }
        self.stripe()?;
        self.verifier().map(drop)
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_message_bytes: self.limits.max_message_bytes,
            max_members: self.limits.max_members,
            max_page_size: self.limits.max_page_size,
            big_room_members: self.limits.big_room_members,
            ..Limits::default()
        }
    }

    pub fn topology(&self) -> Topology {
        Topology {
            partitions: std::num::NonZeroU32::new(self.bus.partitions)
                .unwrap_or(std::num::NonZeroU32::MIN),
            ..Topology::default()
        }
    }

    /// The Stripe settings with their secrets read from their files;
    /// `None` without an API key (the desk then takes no payments).
    pub fn stripe(&self) -> Result<Option<Stripe>, ConfigError> {
        let stripe = &self.desk.stripe;
        let api_key = match (
            stripe.api_key.is_empty(),
            stripe.api_key_file.as_os_str().is_empty(),
        ) {
            (true, true) => return Ok(None),
            (false, true) => stripe.api_key.expose().to_owned(),
            (true, false) => read("desk.stripe.api_key_file", &stripe.api_key_file)?
                .trim()
                .to_owned(),
            (false, false) => {
                return Err(ConfigError::key(
                    "desk.stripe",
                    "set api_key or api_key_file, not both",
                ));
            }
        };
        if api_key.is_empty() || api_key.chars().any(char::is_whitespace) {
            return Err(ConfigError::key(
                "desk.stripe.api_key",
                "must be one word without spaces",
            ));
        }
        let mut secrets: Vec<String> = stripe
            .webhook_secrets
            .iter()
            .map(|s| s.expose().to_owned())
            .collect();
        if !stripe.webhook_secrets_file.as_os_str().is_empty() {
            let file = read(
                "desk.stripe.webhook_secrets_file",
                &stripe.webhook_secrets_file,
            )?;
            secrets.extend(
                file.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned),
            );
        }
        if secrets.iter().any(|s| s.len() < 16) {
            return Err(ConfigError::key(
                "desk.stripe.webhook_secrets",
                "each secret must be at least 16 bytes",
            ));
        }
        for (key, url) in [
            ("desk.stripe.api_base", &stripe.api_base),
            ("desk.stripe.success_url", &stripe.success_url),
            ("desk.stripe.cancel_url", &stripe.cancel_url),
        ] {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(ConfigError::key(key, "must be an http or https URL"));
            }
        }
        if stripe.tolerance_seconds == 0 {
            return Err(ConfigError::key(
                "desk.stripe.tolerance_seconds",
                "must be positive",
            ));
        }
        Ok(Some(Stripe {
            api_key,
            api_base: stripe.api_base.trim_end_matches('/').to_owned(),
            webhook_secrets: secrets,
            tolerance: Duration::from_secs(stripe.tolerance_seconds),
            success_url: stripe.success_url.clone(),
            cancel_url: stripe.cancel_url.clone(),
        }))
    }

    pub fn grpc_max_connection_age(&self) -> Option<Duration> {
        (self.grpc_max_connection_age_seconds > 0)
            .then(|| Duration::from_secs(self.grpc_max_connection_age_seconds))
    }

    pub fn grace_period(&self) -> Duration {
        Duration::from_secs(self.grace_period_seconds)
    }

    /// The token verifier the auth settings describe: exactly one of the
    /// secret, the secret file or the JWKS file.
    pub fn verifier(&self) -> Result<Verifier, ConfigError> {
        let auth = &self.auth;
        let policy = natter_auth::Policy {
            issuer: (!auth.issuer.is_empty()).then(|| auth.issuer.clone()),
            audience: (!auth.audience.is_empty()).then(|| auth.audience.clone()),
            max_lifetime_seconds: (auth.max_token_lifetime_seconds > 0)
                .then_some(auth.max_token_lifetime_seconds),
        };
        Ok(self.keys()?.with_policy(policy))
    }

    /// The keys alone, read from the settings and their files.
    pub fn keys(&self) -> Result<Verifier, ConfigError> {
        let mut verifier = self.shared_keys()?;
        for (tenant, keys) in &self.auth.tenants {
            let key = format!("auth.tenants.{tenant}.jwks_file");
            let jwks = std::fs::read_to_string(&keys.jwks_file).map_err(|e| {
                ConfigError::key(
                    &key,
                    format!("cannot read {}: {e}", keys.jwks_file.display()),
                )
            })?;
            verifier = verifier
                .with_tenant_jwks(tenant, &jwks)
                .map_err(|e| ConfigError::key(&key, e.to_string()))?;
        }
        Ok(verifier)
    }

    fn shared_keys(&self) -> Result<Verifier, ConfigError> {
        let auth = &self.auth;
        let given = [
            !auth.hs256_secret.is_empty(),
            !auth.hs256_secret_file.as_os_str().is_empty(),
            !auth.jwks_file.as_os_str().is_empty(),
        ];
        match given {
            [true, false, false] => Verifier::hs256(auth.hs256_secret.expose().as_bytes())
                .map_err(|e| ConfigError::key("auth.hs256_secret", e.to_string())),
            [false, true, false] => {
                let secret = read("auth.hs256_secret_file", &auth.hs256_secret_file)?;
                Verifier::hs256(secret.trim_end().as_bytes())
                    .map_err(|e| ConfigError::key("auth.hs256_secret_file", e.to_string()))
            }
            [false, false, true] => {
                let jwks = read("auth.jwks_file", &auth.jwks_file)?;
                Verifier::jwks(&jwks).map_err(|e| ConfigError::key("auth.jwks_file", e.to_string()))
            }
            [false, false, false] if !auth.tenants.is_empty() => Ok(Verifier::tenants_only()),
            _ => Err(ConfigError::key(
                "auth",
                "set exactly one of hs256_secret, hs256_secret_file and jwks_file \
                 (or none, with keys under auth.tenants)",
            )),
        }
    }

    /// Connects to NATS, or makes the in-process bus when no URL is set.
    pub async fn connect_bus(&self) -> Result<Arc<dyn Bus>, natter_bus::BusError> {
        if self.bus.nats_url.is_empty() {
            // In memory: the storage service keeps what must survive a crash in its store.
            return Ok(Arc::new(natter_bus_local::LocalBus::new(&self.bus.prefix)?));
        }
        let bus = &self.bus;
        let mut config = natter_bus_nats::NatsConfig::new(&bus.nats_url, &bus.prefix);
        config.replicas = bus.replicas;
        let given = |path: &PathBuf| (!path.as_os_str().is_empty()).then(|| path.clone());
        config.credentials_file = given(&bus.credentials_file);
        config.tls_ca_file = given(&bus.tls_ca_file);
        config.tls_client = given(&bus.tls_cert_file).zip(given(&bus.tls_key_file));
        Ok(Arc::new(
            natter_bus_nats::NatsBus::connect_with(config).await?,
        ))
    }

    /// Opens the stores: the CQL cluster (running its migrations) or the
    /// embedded store under `data_dir`.
    pub async fn open_stores(&self) -> Result<Stores, natter_store::StoreError> {
        if self.store.cql_nodes.is_empty() {
            let store = Arc::new(natter_store_embedded::EmbeddedStore::open(
                &self.store.data_dir,
                self.limits(),
            )?);
            return Ok(Stores {
                conversations: store.clone(),
                sync: store.clone(),
                desk: store,
            });
        }
        let mut config =
            natter_store_cql::CqlConfig::new(self.store.cql_nodes.clone(), &self.store.keyspace);
        config.datacenter = self.store.datacenter.clone();
        config.replication_factor = self.store.replication_factor;
        config.limits = self.limits();
        let store = Arc::new(natter_store_cql::CqlStore::connect(config).await?);
        Ok(Stores {
            conversations: store.clone(),
            sync: store.clone(),
            desk: store,
        })
    }
}

/// What every service process connects to before it serves.
#[derive(Clone)]
pub struct Infra {
    pub bus: Arc<dyn Bus>,
    pub verifier: Arc<Verifier>,
    /// Unique among the processes of an install: names this process's
    /// reply subjects.
    pub instance: String,
}

impl std::fmt::Debug for Infra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Infra")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Connects the bus, makes sure the durable streams exist, and loads the
    /// token keys, for a process named after `service`.
    pub async fn infra(&self, service: &str) -> Result<Infra, crate::StartError> {
        let bus = self.connect_bus().await?;
        natter_contract::ensure_streams(bus.as_ref(), &self.topology()).await?;
        let verifier = Arc::new(self.verifier()?);
        if self.auth.keys_reload_seconds > 0 {
            tokio::spawn(reload_keys(self.clone(), Arc::downgrade(&verifier)));
        }
        Ok(Infra {
            bus,
            verifier,
            instance: format!("{service}-{}", uuid::Uuid::now_v7().simple()),
        })
    }
}

/// Every trait of the storage boundary, from one backend.
#[derive(Clone)]
pub struct Stores {
    pub conversations: Arc<dyn ConversationStore>,
    pub sync: Arc<dyn SyncStore>,
    pub desk: Arc<dyn DeskStore>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stores")
    }
}

/// Reads the key files again every `auth.keys_reload_seconds`, for as long
/// as the verifier is in use: a rotated key (a Kubernetes Secret updated in
/// place) takes effect without a restart. Keys that do not load leave the
/// last good ones in place.
pub async fn reload_keys(settings: Settings, verifier: std::sync::Weak<Verifier>) {
    let every = Duration::from_secs(settings.auth.keys_reload_seconds);
    loop {
        tokio::time::sleep(every).await;
        let Some(verifier) = verifier.upgrade() else {
            return;
        };
        match settings.keys() {
            Ok(keys) => verifier.replace_keys(keys),
            Err(e) => {
                tracing::warn!(error = %e, "cannot reload the token keys; keeping the last ones")
            }
        }
    }
}

fn read(key: &'static str, path: &std::path::Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::key(key, format!("cannot read {}: {e}", path.display())))
}

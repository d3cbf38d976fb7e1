//! Natter's storage traits on ScyllaDB, with Apache Cassandra 5 as a
//! drop-in stand-in: [`CqlStore`] implements
//! [`ConversationStore`](natter_store::ConversationStore),
//! [`SyncStore`](natter_store::SyncStore) and
//! [`DeskStore`](natter_store::DeskStore).
//!
//! The schema, its partition bounds and how messages and update logs are
//! written are described in `SCHEMA.md` beside this crate's manifest. The
//! rules it keeps:
//!
//! - every statement and batch touches one partition, and every read has a
//!   LIMIT;
//! - no partition grows without bound: messages and update logs are split
//!   into buckets of 1024 positions, members into 16 hashed shards, a
//!   user's conversations by hour;
//! - only portable CQL: no materialized views, no secondary indexes, no
//!   multi-partition batches; LWT (Paxos) where a write must not race, and
//!   never on the message or update-log write path;
//! - `messages` and `user_logs` rows are written only with the writer's
//!   version as their timestamp, so the newer owner's write of a seq or
//!   cursor stands;
//! - normal reads and writes at `LOCAL_QUORUM`, LWTs at the configured
//!   serial consistency (`LOCAL_SERIAL` by default).
//!
//! Stored content and events are protobuf bytes from
//! `natter_proto::codec`; what does not decode is `StoreError::Corrupt`.

mod announcements;
mod conversations;
mod db;
mod desk;
mod layout;
mod leases;
mod messages;
mod migrations;
mod sequences;
mod statements;
mod sync;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use natter_core::{Invalid, Limits};
use natter_store::{Page, Result, StoreError};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::statement::{Consistency, SerialConsistency};

use crate::db::Db;
use crate::statements::Statements;

/// Upper bound on the devices one user may register, revoked ones
/// included (`Limits` has no such bound yet). Keeps the `devices`
/// partition of a user small.
pub const MAX_DEVICES_PER_USER: usize = 100;

/// How to reach the cluster and lay out the keyspace.
#[derive(Clone)]
pub struct CqlConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// Lower-case letters, digits and `_`, starting with a letter; at most
    /// 48 characters.
    pub keyspace: String,
    /// The local datacenter: requests go there, and a keyspace created by
    /// the migrations replicates there (`NetworkTopologyStrategy`).
    pub datacenter: String,
    /// Replicas per datacenter for a keyspace the migrations create.
    pub replication_factor: u32,
    pub limits: Limits,
    /// Client-side deadline of one request. Keep it above the server's own
    /// timeouts, so a conditional write is answered rather than abandoned.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub credentials: Option<Credentials>,
    /// `LocalSerial` when each conversation, user and lease is
    /// changed from one datacenter at a time; `Serial` when processes in
    /// several datacenters compete for them.
    pub serial_consistency: SerialConsistency,
    /// How long start-up waits for another process's migration.
    pub migration_timeout: Duration,
}

impl CqlConfig {
    /// A configuration with the defaults: datacenter `datacenter1` (what
    /// Cassandra's SimpleSnitch reports), replication factor 3.
    pub fn new(nodes: Vec<String>, keyspace: impl Into<String>) -> Self {
        Self {
            nodes,
            keyspace: keyspace.into(),
            datacenter: "datacenter1".into(),
            replication_factor: 3,
            limits: Limits::default(),
            request_timeout: Duration::from_secs(12),
            connect_timeout: Duration::from_secs(5),
            credentials: None,
            serial_consistency: SerialConsistency::LocalSerial,
            migration_timeout: Duration::from_secs(600),
        }
    }

    fn validate(&self) -> Result<()> {
        let ks = &self.keyspace;
        let valid_keyspace = ks.len() <= 48
            && ks.starts_with(|c: char| c.is_ascii_lowercase())
            && ks
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_keyspace {
            return Err(Invalid::new(
                "keyspace",
                format!(
                    "{ks:?} must be 1 to 48 lower-case letters, digits or '_', starting with a letter"
                ),
            )
            .into());
        }
        if self.datacenter.is_empty()
            || self
                .datacenter
                .chars()
                .any(|c| c == '\'' || c == '"' || c.is_control())
        {
            return Err(Invalid::new(
                "datacenter",
                format!("{:?} is not a datacenter name", self.datacenter),
            )
            .into());
        }
        if self.replication_factor == 0 {
            return Err(Invalid::new("replication_factor", "must be at least 1").into());
        }
        if self.nodes.is_empty() {
            return Err(Invalid::new("nodes", "name at least one contact point").into());
        }
        Ok(())
    }

    fn serial_read_consistency(&self) -> Consistency {
        match self.serial_consistency {
            SerialConsistency::Serial => Consistency::Serial,
            SerialConsistency::LocalSerial => Consistency::LocalSerial,
        }
    }

    async fn session(&self) -> Result<Session> {
        self.validate()?;
        let policy = DefaultPolicy::builder()
            .prefer_datacenter(self.datacenter.clone())
            .token_aware(true)
            .permit_dc_failover(false)
            .build();
        let profile = ExecutionProfile::builder()
            .consistency(Consistency::LocalQuorum)
            .serial_consistency(Some(self.serial_consistency))
            .request_timeout(Some(self.request_timeout))
            .load_balancing_policy(policy)
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(&self.nodes)
            .connection_timeout(self.connect_timeout)
            .default_execution_profile_handle(profile.into_handle());
        if let Some(credentials) = &self.credentials {
            builder = builder.user(&credentials.username, &credentials.password);
        }
        builder.build().await.map_err(|e| {
            StoreError::Unavailable(format!("cannot connect to cql nodes {:?}: {e}", self.nodes))
        })
    }
}

impl fmt::Debug for CqlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CqlConfig")
            .field("nodes", &self.nodes)
            .field("keyspace", &self.keyspace)
            .field("datacenter", &self.datacenter)
            .field("replication_factor", &self.replication_factor)
            .field("limits", &self.limits)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("credentials", &self.credentials)
            .field("serial_consistency", &self.serial_consistency)
            .field("migration_timeout", &self.migration_timeout)
            .finish()
    }
}

/// Password authentication.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The storage traits on one CQL session.
#[derive(Debug)]
pub struct CqlStore {
    session: Session,
    statements: Statements,
    limits: Limits,
}

impl CqlStore {
    /// Connects, applies pending schema migrations (waiting for another
    /// process that is applying them), and prepares every statement.
    pub async fn connect(config: CqlConfig) -> Result<Self> {
        let session = config.session().await?;
        migrations::run(&session, &config).await?;
        let statements =
            Statements::prepare(&session, &config.keyspace, config.serial_read_consistency())
                .await?;
        Ok(Self {
            session,
            statements,
            limits: config.limits,
        })
    }

    /// Applies pending schema migrations and returns the versions this
    /// call applied: the `migrate` step of a deployment.
    pub async fn migrate(config: &CqlConfig) -> Result<Vec<i32>> {
        let session = config.session().await?;
        migrations::run(&session, config).await
    }

    /// The driver session, for operational tooling and tests.
    pub fn session(&self) -> &Session {
        &self.session
    }

    fn db(&self) -> Db<'_> {
        Db {
            session: &self.session,
        }
    }

    fn page_size(&self, requested: u32) -> u32 {
        self.limits.page_size(requested).max(1)
    }
}

/// Wall-clock milliseconds, for `applied_at` and `written_at` stamps and
/// the migration lock.
pub(crate) fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A page from up to `size + 1` items in list order: the extra item only
/// tells that there is a next page.
pub(crate) fn page<T, K>(mut items: Vec<T>, size: u32, key: impl Fn(&T) -> K) -> Page<T, K> {
    let size = size as usize;
    let next = if items.len() > size {
        items.truncate(size);
        items.last().map(key)
    } else {
        None
    };
    Page { items, next }
}

//! Versioned schema migrations, applied in order and recorded in
//! `schema_migrations`.
//!
//! Concurrent start-up is safe: the process that wins an LWT on the lock
//! (static columns of the one `schema_migrations` partition) applies what is
//! pending; the others wait for it and then find nothing to do. A lock whose
//! holder died expires after [`LOCK_LEASE`]. Every migration statement is
//! idempotent (`IF NOT EXISTS`), so a run cut short is simply repeated.
//!
//! Only two statements run before the lock exists: `CREATE KEYSPACE` and
//! `CREATE TABLE schema_migrations`, each `IF NOT EXISTS` and each skipped
//! when `system_schema` already lists its object. On a multi-node cluster,
//! run the `migrate` step once before starting many processes, so that two
//! nodes never race to create the same table.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use natter_store::{Result, StoreError};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::unprepared::Statement;
use scylla::value::CqlTimestamp;
use uuid::Uuid;

use crate::db::{Db, driver_error};
use crate::{CqlConfig, layout, now_millis};

/// One schema change. Versions start at 1 and never change once released;
/// a new change is a new file and a new entry.
#[derive(Debug)]
pub(crate) struct Migration {
    pub(crate) version: i32,
    pub(crate) name: &'static str,
    pub(crate) cql: &'static str,
}

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        cql: include_str!("migrations/0001_initial.cql"),
    },
    Migration {
        version: 2,
        name: "announcements",
        cql: include_str!("migrations/0002_announcements.cql"),
    },
    Migration {
        version: 3,
        name: "device cursors",
        cql: include_str!("migrations/0003_device_cursors.cql"),
    },
    Migration {
        version: 4,
        name: "conversation lifecycles",
        cql: include_str!("migrations/0004_conversation_lifecycles.cql"),
    },
    Migration {
        version: 5,
        name: "desk records",
        cql: include_str!("migrations/0005_desk_records.cql"),
    },
];

/// The one partition of `schema_migrations`.
const SCOPE: &str = "natter";

/// How long a migration lock is honoured if its holder never releases it.
const LOCK_LEASE: Duration = Duration::from_secs(300);

/// Schema changes wait for every node to agree, which takes a while.
const DDL_TIMEOUT: Duration = Duration::from_secs(120);

/// Rows read from `schema_migrations`: one per version, plus the lock.
const MAX_VERSIONS: i32 = 10_000;

/// How long a freshly created table may take to become usable everywhere.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `step` until it stops failing with `Unavailable`, for at most
/// [`SETTLE_TIMEOUT`]. Right after another process created a table, this
/// node may list it in `system_schema` before it can serve it (Cassandra
/// answers "Unknown CF"); waiting for schema agreement and retrying is
/// the cure.
pub(crate) async fn settled<T, F, Fut>(mut step: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        match step().await {
            Err(StoreError::Unavailable(e)) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "schema not settled yet; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            done => return done,
        }
    }
}

/// Applies every pending migration; returns the versions this call applied.
pub(crate) async fn run(session: &Session, config: &CqlConfig) -> Result<Vec<i32>> {
    let ks = &config.keyspace;
    ensure_keyspace(session, config).await?;
    ensure_migrations_table(session, ks).await?;
    let db = Db { session };
    let statements = settled(|| LockStatements::prepare(session, config)).await?;
    let owner = Uuid::now_v7();
    let deadline = Instant::now() + config.migration_timeout;
    loop {
        let state = statements.state(&db).await?;
        if state.pending().is_empty() {
            return Ok(Vec::new());
        }
        let now = now_millis();
        let lock_free = state.lock_until.is_none_or(|until| until <= now);
        if lock_free {
            let until = CqlTimestamp(now + millis(LOCK_LEASE));
            let taken = match db
                .try_lwt(&statements.acquire, (owner, until, SCOPE, state.lock_owner))
                .await
            {
                Ok(outcome) => outcome?.applied,
                // Unknown outcome: the linearizable read tells.
                Err(_) => statements.state(&db).await?.lock_owner == Some(owner),
            };
            if taken {
                let applied = apply_pending(session, &db, &statements, config).await;
                let released = db
                    .lwt(
                        "release migration lock",
                        &statements.release,
                        (SCOPE, owner),
                    )
                    .await;
                if let Err(e) = released {
                    tracing::warn!(error = %e, "migration lock not released; it expires on its own");
                }
                return applied;
            }
        }
        if Instant::now() >= deadline {
            return Err(StoreError::Unavailable(format!(
                "schema migration lock of keyspace {ks} is held by {:?}; gave up after {:?}",
                state.lock_owner, config.migration_timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn apply_pending(
    session: &Session,
    db: &Db<'_>,
    statements: &LockStatements,
    config: &CqlConfig,
) -> Result<Vec<i32>> {
    // Re-read under the lock: another process may have finished meanwhile.
    let state = statements.state(db).await?;
    let mut applied = Vec::new();
    for migration in state.pending() {
        tracing::info!(
            keyspace = %config.keyspace,
            version = migration.version,
            name = migration.name,
            "applying schema migration"
        );
        for cql in split_statements(migration.cql, &config.keyspace) {
            ddl(session, cql).await?;
        }
        db.write(
            "record migration",
            &statements.record,
            (
                SCOPE,
                migration.version,
                migration.name,
                checksum(migration.cql),
                CqlTimestamp(now_millis()),
            ),
        )
        .await?;
        applied.push(migration.version);
    }
    Ok(applied)
}

async fn ensure_keyspace(session: &Session, config: &CqlConfig) -> Result<()> {
    let exists = Db { session }
        .row::<(String,)>(
            "look up keyspace",
            &prepare_plain(
                session,
                "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?",
            )
            .await?,
            (&config.keyspace,),
        )
        .await?
        .is_some();
    if !exists {
        let tablets = if uses_tablets(session).await {
            // ScyllaDB refuses LWT in keyspaces with tablets (through
            // 2025.3 at least), and every write path here needs LWT.
            " AND tablets = {'enabled': false}"
        } else {
            ""
        };
        ddl(
            session,
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = \
                 {{'class': 'NetworkTopologyStrategy', '{}': {}}} AND durable_writes = true{tablets}",
                config.keyspace, config.datacenter, config.replication_factor
            ),
        )
        .await?;
    }
    Ok(())
}

/// Whether the cluster is a ScyllaDB that can create keyspaces with
/// tablets: only those have `system.tablets` (Cassandra and older
/// ScyllaDB refuse the query).
async fn uses_tablets(session: &Session) -> bool {
    session
        .query_unpaged("SELECT table_id FROM system.tablets LIMIT 1", ())
        .await
        .is_ok()
}

async fn ensure_migrations_table(session: &Session, ks: &str) -> Result<()> {
    let exists = Db { session }
        .row::<(String,)>(
            "look up schema_migrations",
            &prepare_plain(
                session,
                "SELECT table_name FROM system_schema.tables \
                 WHERE keyspace_name = ? AND table_name = 'schema_migrations'",
            )
            .await?,
            (ks,),
        )
        .await?
        .is_some();
    if !exists {
        ddl(
            session,
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.schema_migrations (
                    scope text,
                    version int,
                    name text,
                    checksum text,
                    applied_at timestamp,
                    lock_owner uuid STATIC,
                    lock_until timestamp STATIC,
                    PRIMARY KEY ((scope), version)
                )"
            ),
        )
        .await?;
    }
    Ok(())
}

async fn ddl(session: &Session, cql: String) -> Result<()> {
    let mut statement = Statement::new(cql);
    statement.set_request_timeout(Some(DDL_TIMEOUT));
    session
        .query_unpaged(statement, ())
        .await
        .map_err(|e| driver_error("schema change", e))?;
    Ok(())
}

pub(crate) async fn await_schema_agreement(session: &Session) -> Result<()> {
    session
        .await_schema_agreement()
        .await
        .map_err(|e| StoreError::Unavailable(format!("cql schema agreement: {e}")))?;
    Ok(())
}

async fn prepare_plain(session: &Session, cql: &str) -> Result<PreparedStatement> {
    session
        .prepare(cql)
        .await
        .map_err(|e| StoreError::Unavailable(format!("cql prepare {cql:?}: {e}")))
}

struct LockStatements {
    state: PreparedStatement,
    acquire: PreparedStatement,
    release: PreparedStatement,
    record: PreparedStatement,
}

impl LockStatements {
    async fn prepare(session: &Session, config: &CqlConfig) -> Result<Self> {
        await_schema_agreement(session).await?;
        let ks = &config.keyspace;
        let mut state = prepare_plain(
            session,
            &format!(
                "SELECT version, checksum, lock_owner, lock_until FROM {ks}.schema_migrations \
                 WHERE scope = ? LIMIT {MAX_VERSIONS}"
            ),
        )
        .await?;
        // Linearizable, so a lock just taken or released is seen.
        state.set_consistency(config.serial_read_consistency());
        Ok(Self {
            state,
            acquire: prepare_plain(
                session,
                &format!(
                    "UPDATE {ks}.schema_migrations SET lock_owner = ?, lock_until = ? \
                     WHERE scope = ? IF lock_owner = ?"
                ),
            )
            .await?,
            release: prepare_plain(
                session,
                &format!(
                    "UPDATE {ks}.schema_migrations SET lock_owner = null, lock_until = null \
                     WHERE scope = ? IF lock_owner = ?"
                ),
            )
            .await?,
            record: prepare_plain(
                session,
                &format!(
                    "INSERT INTO {ks}.schema_migrations (scope, version, name, checksum, applied_at) \
                     VALUES (?, ?, ?, ?, ?)"
                ),
            )
            .await?,
        })
    }

    async fn state(&self, db: &Db<'_>) -> Result<State> {
        type Row = (
            Option<i32>,
            Option<String>,
            Option<Uuid>,
            Option<CqlTimestamp>,
        );
        let rows: Vec<Row> = db
            .rows("read schema_migrations", &self.state, (SCOPE,))
            .await?;
        let mut state = State::default();
        for (version, checksum, owner, until) in rows {
            // Static columns repeat on every row (or stand alone).
            state.lock_owner = owner;
            state.lock_until = until.map(|t| t.0);
            if let Some(version) = version {
                state.applied.insert(version, checksum.unwrap_or_default());
            }
        }
        state.verify()?;
        Ok(state)
    }
}

#[derive(Debug, Default)]
struct State {
    applied: BTreeMap<i32, String>,
    lock_owner: Option<Uuid>,
    lock_until: Option<i64>,
}

impl State {
    /// Refuses a schema whose applied migrations differ from this build's.
    /// Versions newer than this build knows are fine: a newer release
    /// already migrated, and migrations only add.
    fn verify(&self) -> Result<()> {
        for migration in MIGRATIONS {
            if let Some(stored) = self.applied.get(&migration.version) {
                let expected = checksum(migration.cql);
                if *stored != expected {
                    return Err(StoreError::FailedPrecondition(format!(
                        "schema migration {} ({}) was applied with checksum {stored}, \
                         this build has {expected}",
                        migration.version, migration.name
                    )));
                }
            }
        }
        if let Some(newest) = self.applied.keys().next_back()
            && MIGRATIONS.iter().all(|m| m.version < *newest)
        {
            tracing::warn!(
                version = newest,
                "schema is newer than this build; running on it"
            );
        }
        Ok(())
    }

    fn pending(&self) -> Vec<&'static Migration> {
        MIGRATIONS
            .iter()
            .filter(|m| !self.applied.contains_key(&m.version))
            .collect()
    }
}

/// The statements of a migration file: `--` comments dropped, split at
/// `;`, the keyspace filled in. Migration files hold no string literals
/// with `;` or `--` in them.
pub(crate) fn split_statements(cql: &str, keyspace: &str) -> Vec<String> {
    cql.lines()
        .map(|line| line.split_once("--").map_or(line, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
        .split(';')
        .map(str::trim)
        .filter(|statement| !statement.is_empty())
        .map(|statement| statement.replace("{keyspace}", keyspace))
        .collect()
}

/// The recorded fingerprint of a migration's text (FNV-1a, hex).
pub(crate) fn checksum(cql: &str) -> String {
    format!("{:016x}", layout::fnv1a(cql.as_bytes()))
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_from_one() {
        for (i, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, i as i32 + 1);
        }
    }

    #[test]
    fn migrations_create_tables_idempotently() {
        let count = |migration: &Migration| split_statements(migration.cql, "ks").len();
        assert_eq!(count(&MIGRATIONS[0]), 9);
        assert_eq!(count(&MIGRATIONS[1]), 1);
        for migration in MIGRATIONS {
            for statement in split_statements(migration.cql, "ks") {
                assert!(
                    statement.starts_with("CREATE TABLE IF NOT EXISTS ks."),
                    "{statement}"
                );
                assert!(!statement.contains("--"));
            }
        }
    }

    /// A released migration never changes: a keyspace that recorded the
    /// old checksum refuses to start. Before the first release 0001 is
    /// edited in place, and this pin changes with it.
    #[test]
    fn checksums_are_stable() {
        assert_eq!(checksum(""), "cbf29ce484222325");
        assert_eq!(checksum(MIGRATIONS[0].cql), "3f3e0cfe14d93e04");
        assert_eq!(checksum(MIGRATIONS[1].cql), "fd965feb97e12e23");
    }
}

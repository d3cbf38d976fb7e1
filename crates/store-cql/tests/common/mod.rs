//! What the CQL store's tests share: the node `scripts/test` started, a
//! keyspace per test binary, and raw access for simulating crashes.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use natter_core::Limits;
use natter_store_cql::{CqlConfig, CqlStore};
use scylla::client::session::Session;

/// A configuration for the test node: replication factor 1, and request
/// timeouts above the node's own (10 s for reads and writes).
pub(crate) fn config(keyspace: &str, limits: Limits) -> CqlConfig {
    CqlConfig {
        datacenter: natter_testkit::cql_datacenter(),
        replication_factor: 1,
        limits,
        request_timeout: Duration::from_secs(15),
        connect_timeout: Duration::from_secs(10),
        ..CqlConfig::new(vec![natter_testkit::cql_node()], keyspace)
    }
}

/// Test keyspaces are named `cqlt_<unix seconds>_<random>`, so a later
/// run can tell the ones an earlier run left behind.
const PREFIX: &str = "cqlt_";

/// How old a test keyspace must be before another run drops it: no run
/// of these tests takes this long.
const STALE_AFTER: Duration = Duration::from_secs(3 * 3600);

/// A keyspace name no other test or run uses.
pub(crate) fn unique_keyspace() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    natter_testkit::unique_name(&format!("{PREFIX}{secs}"))
}

/// The keyspace this test binary shares between its tests. Creating a
/// keyspace and its tables takes Cassandra seconds, so tests share one and
/// keep apart by unique tenants and conversation ids instead. It is left
/// for the node's disposal (`scripts/test` throws the node away) or for a
/// later run's sweep.
pub(crate) fn shared_keyspace() -> &'static str {
    static KEYSPACE: OnceLock<String> = OnceLock::new();
    KEYSPACE.get_or_init(unique_keyspace)
}

/// A store on the shared keyspace. Every test gets its own session: each
/// `#[tokio::test]` has its own runtime, which a session cannot outlive.
pub(crate) async fn store(limits: Limits) -> CqlStore {
    let store = CqlStore::connect(config(shared_keyspace(), limits))
        .await
        .expect("connect to the test CQL node");
    static SWEPT: AtomicBool = AtomicBool::new(false);
    if !SWEPT.swap(true, Ordering::SeqCst) {
        drop_stale_keyspaces(store.session()).await;
    }
    store
}

/// Drops the test keyspaces of runs long finished, so a node kept up
/// between runs (`scripts/test up`) does not fill with tables.
async fn drop_stale_keyspaces(session: &Session) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let listed = session
        .query_unpaged("SELECT keyspace_name FROM system_schema.keyspaces", ())
        .await
        .ok()
        .and_then(|result| result.into_rows_result().ok());
    let Some(rows) = listed else { return };
    let Ok(names) = rows.rows::<(String,)>() else {
        return;
    };
    for (name,) in names.flatten() {
        let created = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|created| now.saturating_sub(created) > STALE_AFTER.as_secs()) {
            drop_keyspace(session, &name).await;
        }
    }
}

/// Drops a keyspace, best effort: the node is thrown away after the run.
pub(crate) async fn drop_keyspace(session: &Session, keyspace: &str) {
    let dropped = session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
        .await;
    if let Err(e) = dropped {
        eprintln!("could not drop keyspace {keyspace}: {e}");
    }
}

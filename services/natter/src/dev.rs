//! `natter dev`: the four services in one process, sharing one bus and one
//! store, each on its own port exactly as when they run apart.

use natter_auth::{Identity, Signer};
use natter_core::{Role, TenantId, UserId};
use natter_server::{Infra, Settings, StartError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The HS256 secret `natter dev` uses when none is configured. It is in the
/// source, so anything signed with it is public: development only.
const DEV_SECRET: &str = "natter-dev-secret-not-for-production-use";

/// Fills in what a fresh machine has not configured.
pub(crate) fn defaults(settings: &mut Settings) {
    let auth = &settings.auth;
    if auth.hs256_secret.is_empty()
        && auth.hs256_secret_file.as_os_str().is_empty()
        && auth.jwks_file.as_os_str().is_empty()
    {
        settings.auth.hs256_secret = DEV_SECRET.into();
    }
}

pub(crate) async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), StartError> {
    let Infra {
        bus,
        verifier,
        instance,
    } = settings.infra("dev").await?;
    let stores = settings.open_stores().await?;

    let gateway_grpc = TcpListener::bind(&settings.gateway.grpc_addr).await?;
    let gateway_http = TcpListener::bind(&settings.gateway.http_addr).await?;
    let storage = TcpListener::bind(&settings.storage.grpc_addr).await?;
    let sync = TcpListener::bind(&settings.sync.grpc_addr).await?;
    let fanout = TcpListener::bind(&settings.fanout.grpc_addr).await?;
    banner(
        &settings,
        [
            ("gateway (gRPC)", gateway_grpc.local_addr()?.to_string()),
            (
                "gateway (WebSocket)",
                format!("ws://{}/v1/connect", gateway_http.local_addr()?),
            ),
            ("storage", storage.local_addr()?.to_string()),
            ("sync", sync.local_addr()?.to_string()),
            ("fanout", fanout.local_addr()?.to_string()),
        ],
    );

    let gateway = natter_gateway::run(
        &settings,
        natter_gateway::Deps {
            bus: bus.clone(),
            verifier: verifier.clone(),
            instance: format!("{instance}-gateway"),
        },
        gateway_grpc,
        gateway_http,
        shutdown.clone(),
    );
    let storage = natter_storage::run(
        &settings,
        natter_storage::Deps {
            bus: bus.clone(),
            verifier: verifier.clone(),
            conversations: stores.conversations,
            instance: format!("{instance}-storage"),
        },
        storage,
        shutdown.clone(),
    );
    let sync = natter_sync::run(
        &settings,
        natter_sync::Deps {
            bus: bus.clone(),
            verifier: verifier.clone(),
            store: stores.sync,
            instance: format!("{instance}-sync"),
        },
        sync,
        shutdown.clone(),
    );
    let fanout = natter_fanout::run(
        &settings,
        natter_fanout::Deps {
            bus,
            verifier,
            instance: format!("{instance}-fanout"),
        },
        fanout,
        shutdown.clone(),
    );
    // One service failing stops the others.
    let stop_all = |result: Result<(), StartError>| {
        shutdown.cancel();
        result
    };
    let (g, st, sy, f) = tokio::join!(
        async { stop_all(gateway.await) },
        async { stop_all(storage.await) },
        async { stop_all(sync.await) },
        async { stop_all(fanout.await) },
    );
    g.and(st).and(sy).and(f)
}

/// Creates or upgrades the CQL schema (`natter migrate --cql HOST:PORT`).
pub(crate) async fn migrate(settings: Settings, _: CancellationToken) -> Result<(), StartError> {
    if settings.store.cql_nodes.is_empty() {
        return Err(natter_server::config::ConfigError::key(
            "store.cql_nodes",
            "migrate needs a CQL cluster (--cql HOST:PORT)",
        )
        .into());
    }
    let stores = settings.open_stores().await?;
    drop(stores);
    tracing::info!(keyspace = %settings.store.keyspace, "schema is up to date");
    Ok(())
}

fn banner(settings: &Settings, addrs: [(&str, String); 5]) {
    let mut text = String::from("\nNatter is running: all four services in one process.\n\n");
    for (name, addr) in addrs {
        text.push_str(&format!("  {name:<20} {addr}\n"));
    }
    let bus = if settings.bus.nats_url.is_empty() {
        "in-process".to_owned()
    } else {
        settings.bus.nats_url.clone()
    };
    let store = if settings.store.cql_nodes.is_empty() {
        format!("embedded, in {}", settings.store.data_dir.display())
    } else {
        format!("CQL at {}", settings.store.cql_nodes.join(","))
    };
    text.push_str(&format!(
        "  {:<20} {bus}\n  {:<20} {store}\n",
        "bus", "store"
    ));
    if settings.auth.hs256_secret == DEV_SECRET {
        text.push_str(
            "\nTokens are signed with the built-in development secret.\n\
             Mint one with: natter token --tenant demo --user alice --role customer\n",
        );
        if let Some(token) = demo_token() {
            text.push_str(&format!(
                "A customer token for demo/visitor, valid 24 h:\n  {token}\n"
            ));
        }
    }
    eprintln!("{text}");
}

fn demo_token() -> Option<String> {
    let identity = Identity {
        tenant: TenantId::new("demo").ok()?,
        user: UserId::new("visitor").ok()?,
        role: Role::Customer,
    };
    Signer::hs256(DEV_SECRET.as_bytes())
        .token(&identity, 24 * 3600)
        .ok()
}

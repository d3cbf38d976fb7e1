//! `natter dev`: the five services in one process, sharing one bus and one
//! store, each on its own port exactly as when they run apart, and the
//! demo (`demo.rs`) beside them.

use natter_auth::{Identity, Signer};
use natter_core::{Role, TenantId, UserId};
use natter_server::{Infra, InfraArgs, Settings, StartError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::demo;

#[derive(Debug, clap::Args)]
pub(crate) struct DevArgs {
    #[command(flatten)]
    pub(crate) infra: InfraArgs,
    /// Where the demo listens: a sample business website with the chat
    /// widget, and an agent console at /agent. `off` serves no demo.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub(crate) demo_addr: String,
}

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
    // Payments need the webhook endpoint: listen where the docs say.
    let stripe = &settings.desk.stripe;
    if settings.desk.http_addr.is_empty()
        && !(stripe.api_key.is_empty() && stripe.api_key_file.as_os_str().is_empty())
    {
        settings.desk.http_addr = "127.0.0.1:7580".into();
    }
}

pub(crate) async fn run(
    settings: Settings,
    demo_addr: String,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let Infra {
        bus,
        verifier,
        instance,
    } = settings.infra("dev").await?;
    let stores = settings.open_stores().await?;

    let gateway_grpc = natter_server::listen(&settings.gateway.grpc_addr).await?;
    let gateway_http = natter_server::listen(&settings.gateway.http_addr).await?;
    let storage = natter_server::listen(&settings.storage.grpc_addr).await?;
    let sync = natter_server::listen(&settings.sync.grpc_addr).await?;
    let fanout = natter_server::listen(&settings.fanout.grpc_addr).await?;
    let desk = natter_server::listen(&settings.desk.grpc_addr).await?;
    let desk_http = match settings.desk.http_addr.as_str() {
        "" => None,
        addr => Some(natter_server::listen(addr).await?),
    };
    let gateway_http_addr = gateway_http.local_addr()?;
    let mut addrs = vec![
        ("gateway (gRPC)", gateway_grpc.local_addr()?.to_string()),
        (
            "gateway (WebSocket)",
            format!("ws://{gateway_http_addr}/v1/connect"),
        ),
        (
            "chat widget",
            format!("http://{gateway_http_addr}/widget.js"),
        ),
        ("storage", storage.local_addr()?.to_string()),
        ("sync", sync.local_addr()?.to_string()),
        ("fanout", fanout.local_addr()?.to_string()),
        ("desk", desk.local_addr()?.to_string()),
    ];
    if let Some(http) = &desk_http {
        addrs.push((
            "payment webhooks",
            format!("http://{}/v1/payments/stripe", http.local_addr()?),
        ));
    }
    // The demo is a convenience: when it cannot run, the services still do.
    let demo = match demo_listener(&settings, &demo_addr).await {
        Ok(Some(listener)) => {
            let addr = listener.local_addr()?;
            addrs.push(("demo website", format!("http://{addr}/")));
            addrs.push(("demo agent console", format!("http://{addr}/agent")));
            Some((
                listener,
                demo::Config {
                    storage: storage.local_addr()?,
                    desk: desk.local_addr()?,
                    gateway_http: gateway_http_addr,
                    gateway_grpc: gateway_grpc.local_addr()?,
                    secret: settings.auth.hs256_secret.expose().to_owned(),
                },
            ))
        }
        Ok(None) => None,
        Err(why) => {
            addrs.push(("demo", format!("not served: {why}")));
            None
        }
    };
    banner(&settings, &addrs);
    let demo = async {
        if let Some((listener, config)) = demo
            && let Err(e) = demo::serve(listener, config, shutdown.clone()).await
        {
            tracing::warn!(error = %e, "the demo stopped");
        }
    };

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
    let desk = natter_desk::run(
        &settings,
        natter_desk::Deps {
            bus: bus.clone(),
            verifier: verifier.clone(),
            store: stores.desk,
            instance: format!("{instance}-desk"),
            http: desk_http,
        },
        desk,
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
    let (g, st, sy, f, d, ()) = tokio::join!(
        async { stop_all(gateway.await) },
        async { stop_all(storage.await) },
        async { stop_all(sync.await) },
        async { stop_all(fanout.await) },
        async { stop_all(desk.await) },
        demo,
    );
    g.and(st).and(sy).and(f).and(d)
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

/// The demo's listener; `None` when it is switched off, `Err` when it
/// cannot run here.
async fn demo_listener(settings: &Settings, addr: &str) -> Result<Option<TcpListener>, String> {
    if addr == "off" {
        return Ok(None);
    }
    if settings.auth.hs256_secret.is_empty() {
        return Err("it mints tokens, which needs auth.hs256_secret".into());
    }
    natter_server::listen(addr)
        .await
        .map(Some)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}

fn banner(settings: &Settings, addrs: &[(&str, String)]) {
    let mut text = String::from("\nNatter is running: all five services in one process.\n\n");
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
    if settings.auth.hs256_secret.expose() == DEV_SECRET {
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

//! Webhook delivery: one task per endpoint, started by the holder, that
//! reads its tenant's event log from where it stands and POSTs each event
//! it wants, one at a time, in log order, until the endpoint answers 2xx.
//! Failures are tried again after a backoff with jitter; ten in a row
//! pause the webhook on the event that failed, until `ReplayWebhook`. The
//! task alone writes where it stands (`WebhookState` records), after each
//! event, so a new holder carries on from there: an event may go out twice
//! across a takeover, never be skipped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use natter_core::{Invalid, TenantId};
use natter_proto::convert::parse_id;
use natter_proto::v1;
use natter_store::{DeskKind, DeskStore, DeskWrite, StoreError};
use prost::Message as _;
use sha2::Sha256;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::events::{self, wanted};

/// Failures in a row that pause a webhook.
const PAUSE_AFTER: u32 = 10;
/// How long one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(300);
/// How often an idle deliverer looks at the log without being woken.
const IDLE_LOOK: Duration = Duration::from_secs(5);
/// Events read at once.
const READ_PAGE: u32 = 100;
const MIN_SECRET_BYTES: usize = 16;
const MAX_SECRETS: usize = 5;
const MAX_TYPES: usize = 20;

/// A webhook's settings as given, checked.
pub(crate) fn settings(mut wire: v1::Webhook) -> Result<v1::Webhook, Invalid> {
    let _: natter_core::TeamId = parse_id("webhook.webhook_id", &wire.webhook_id)?;
    let url = reqwest::Url::parse(&wire.url)
        .map_err(|e| Invalid::new("webhook.url", format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Invalid::new("webhook.url", "must be http or https"));
    }
    if wire.secrets.is_empty()
        || wire.secrets.len() > MAX_SECRETS
        || wire.secrets.iter().any(|s| s.len() < MIN_SECRET_BYTES)
    {
        return Err(Invalid::new(
            "webhook.secrets",
            "1 to 5 secrets of at least 16 bytes each",
        ));
    }
    if wire.event_types.len() > MAX_TYPES {
        return Err(Invalid::new("webhook.event_types", "at most 20"));
    }
    // What delivery reports is the deliverer's, never the caller's.
    wire.state = 0;
    wire.next_seq = 0;
    wire.failures = 0;
    wire.last_error.clear();
    Ok(wire)
}

/// Where a webhook's delivery stands, as kept in its `WebhookState`.
fn stand(webhook: &v1::Webhook) -> v1::Webhook {
    v1::Webhook {
        webhook_id: webhook.webhook_id.clone(),
        state: webhook.state,
        next_seq: webhook.next_seq,
        failures: webhook.failures,
        last_error: webhook.last_error.clone(),
        ..v1::Webhook::default()
    }
}

/// The `natter-signature` header of `body` sent at `t`: one HMAC-SHA256
/// per secret over "<t>.<body>".
pub(crate) fn signature(secrets: &[String], t: i64, body: &[u8]) -> String {
    let mut header = format!("t={t}");
    for secret in secrets {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
            continue;
        };
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        header.push_str(",v1=");
        header.push_str(&hex);
    }
    header
}

/// What the holder tells a running deliverer.
struct Running {
    /// Wakes it when its tenant's log grew.
    wake: Arc<Notify>,
    /// Its settings and where it stands, as it reports them.
    now: watch::Receiver<v1::Webhook>,
    /// Replays from a seq.
    replay: watch::Sender<Option<u64>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The deliverers of every loaded tenant's webhooks.
pub(crate) struct Webhooks {
    store: Arc<dyn DeskStore>,
    http: reqwest::Client,
    running: HashMap<(TenantId, String), Running>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("running", &self.running.len())
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    pub(crate) fn new(store: Arc<dyn DeskStore>, stop: CancellationToken) -> Self {
        let http = reqwest::Client::builder()
            .timeout(POST_TIMEOUT)
            .user_agent("natter-webhooks")
            .build()
            .unwrap_or_default();
        Self {
            store,
            http,
            running: HashMap::new(),
            stop,
        }
    }

    /// Starts (or restarts with new settings) the deliverer of `webhook`,
    /// from where its state record says, or from `start` for a new one.
    pub(crate) async fn start(
        &mut self,
        tenant: &TenantId,
        webhook: v1::Webhook,
        start: u64,
    ) -> Result<(), StoreError> {
        self.stop_one(tenant, &webhook.webhook_id).await;
        let kept = self
            .store
            .desk_record(tenant, DeskKind::WebhookState, &webhook.webhook_id)
            .await?
            .and_then(|r| v1::Webhook::decode(r.body.as_slice()).ok());
        let mut webhook = webhook;
        match kept {
            Some(kept) => {
                webhook.state = kept.state;
                webhook.next_seq = kept.next_seq;
                webhook.failures = kept.failures;
                webhook.last_error = kept.last_error;
            }
            None => {
                webhook.state = v1::WebhookState::Active.into();
                webhook.next_seq = start;
                let first = DeskWrite::Put {
                    kind: DeskKind::WebhookState,
                    id: webhook.webhook_id.clone(),
                    body: stand(&webhook).encode_to_vec(),
                };
                self.store.write_desk(tenant, &[first]).await?;
            }
        }
        let (report, now) = watch::channel(webhook.clone());
        let (replay, replays) = watch::channel(None);
        let wake = Arc::new(Notify::new());
        let stop = self.stop.child_token();
        let deliverer = Deliverer {
            store: self.store.clone(),
            http: self.http.clone(),
            tenant: tenant.clone(),
            webhook,
            report,
            replays,
            wake: wake.clone(),
            stop: stop.clone(),
        };
        let task = tokio::spawn(deliverer.run());
        let key = (tenant.clone(), now.borrow().webhook_id.clone());
        self.running.insert(
            key,
            Running {
                wake,
                now,
                replay,
                stop,
                task,
            },
        );
        Ok(())
    }

    pub(crate) async fn stop_one(&mut self, tenant: &TenantId, id: &str) {
        if let Some(running) = self.running.remove(&(tenant.clone(), id.to_owned())) {
            running.stop.cancel();
            let _ = running.task.await;
        }
    }

    pub(crate) async fn stop_all(&mut self) {
        for (_, running) in self.running.drain() {
            running.stop.cancel();
            let _ = running.task.await;
        }
    }

    /// The tenant's log grew.
    pub(crate) fn wake(&self, tenant: &TenantId) {
        for ((t, _), running) in &self.running {
            if t == tenant {
                running.wake.notify_one();
            }
        }
    }

    /// The tenant's webhooks as they stand, in id order.
    pub(crate) fn list(&self, tenant: &TenantId) -> Vec<v1::Webhook> {
        let mut all: Vec<v1::Webhook> = self
            .running
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|(_, r)| r.now.borrow().clone())
            .collect();
        all.sort_by(|a, b| a.webhook_id.cmp(&b.webhook_id));
        all
    }

    /// Has the deliverer start over after `after_seq`, active again;
    /// `None` for a webhook that is not running.
    pub(crate) fn replay(&self, tenant: &TenantId, id: &str, after_seq: u64) -> Option<()> {
        let running = self.running.get(&(tenant.clone(), id.to_owned()))?;
        running.replay.send_replace(Some(after_seq + 1));
        running.wake.notify_one();
        Some(())
    }
}

struct Deliverer {
    store: Arc<dyn DeskStore>,
    http: reqwest::Client,
    tenant: TenantId,
    webhook: v1::Webhook,
    report: watch::Sender<v1::Webhook>,
    replays: watch::Receiver<Option<u64>>,
    wake: Arc<Notify>,
    stop: CancellationToken,
}

impl Deliverer {
    async fn run(mut self) {
        let mut backoff = FIRST_RETRY;
        while !self.stop.is_cancelled() {
            let replay = match self.replays.has_changed() {
                Ok(true) => *self.replays.borrow_and_update(),
                _ => None,
            };
            if let Some(from) = replay {
                self.webhook.next_seq = from;
                self.webhook.failures = 0;
                self.webhook.state = v1::WebhookState::Active.into();
                self.webhook.last_error.clear();
                backoff = FIRST_RETRY;
                self.keep().await;
            }
            if self.webhook.state() == v1::WebhookState::Paused {
                self.idle(None).await;
                continue;
            }
            let after = self.webhook.next_seq.saturating_sub(1);
            let events = match events::read(&*self.store, &self.tenant, after, READ_PAGE).await {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the event log; retrying");
                    self.idle(Some(FIRST_RETRY)).await;
                    continue;
                }
            };
            if events.is_empty() {
                self.idle(Some(IDLE_LOOK)).await;
                continue;
            }
            for event in events {
                if self.stop.is_cancelled() || self.replays.has_changed().unwrap_or(false) {
                    break;
                }
                if wanted(&self.webhook.event_types, &event.r#type) {
                    match self.post(&event).await {
                        Ok(()) => {
                            backoff = FIRST_RETRY;
                            self.webhook.failures = 0;
                            self.webhook.last_error.clear();
                        }
                        Err(why) => {
                            self.webhook.failures += 1;
                            self.webhook.last_error = why;
                            if self.webhook.failures >= PAUSE_AFTER {
                                self.webhook.state = v1::WebhookState::Paused.into();
                                tracing::warn!(
                                    webhook = self.webhook.webhook_id,
                                    seq = event.seq,
                                    "webhook paused"
                                );
                            }
                            self.keep().await;
                            // With jitter, so endpoints that failed
                            // together are not retried together.
                            let wait = backoff.mul_f64(0.5 + fastrand::f64());
                            backoff = (backoff * 2).min(MAX_RETRY);
                            self.idle(Some(wait)).await;
                            break;
                        }
                    }
                }
                self.webhook.next_seq = event.seq + 1;
                self.keep().await;
            }
        }
    }

    /// Waits for more events, a replay, `stop` or `at_most`.
    async fn idle(&mut self, at_most: Option<Duration>) {
        let timeout = async {
            match at_most {
                Some(wait) => tokio::time::sleep(wait).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = self.stop.cancelled() => {}
            () = self.wake.notified() => {}
            _ = self.replays.changed() => {}
            () = timeout => {}
        }
    }

    async fn post(&self, event: &v1::TenantEvent) -> Result<(), String> {
        let body = serde_json::to_vec(event).map_err(|e| e.to_string())?;
        let t = natter_server::clock::now().as_millis() / 1000;
        let answer = self
            .http
            .post(&self.webhook.url)
            .header("content-type", "application/json")
            .header("natter-event-id", &event.event_id)
            .header("natter-event-type", &event.r#type)
            .header(
                "natter-signature",
                signature(&self.webhook.secrets, t, &body),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        if answer.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", answer.status()))
        }
    }

    /// Writes where delivery stands and tells the holder.
    async fn keep(&self) {
        self.report.send_replace(self.webhook.clone());
        let write = DeskWrite::Put {
            kind: DeskKind::WebhookState,
            id: self.webhook.webhook_id.clone(),
            body: stand(&self.webhook).encode_to_vec(),
        };
        if let Err(e) = self.store.write_desk(&self.tenant, &[write]).await {
            tracing::warn!(error = %e, "cannot keep where a webhook stands");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_secret_signs_the_timestamp_and_the_body() {
        let secrets = [
            "old-secret-of-16-bytes".to_owned(),
            "new-secret-of-16-bytes".to_owned(),
        ];
        let header = signature(&secrets, 1_700_000_000, b"{}");
        let parts: Vec<&str> = header.split(',').collect();
        assert_eq!(parts[0], "t=1700000000");
        assert_eq!(parts.len(), 3);
        let mut mac = Hmac::<Sha256>::new_from_slice(secrets[1].as_bytes()).unwrap();
        mac.update(b"1700000000.{}");
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(parts[2], format!("v1={expected}"));
    }

    #[test]
    fn settings_are_checked() {
        let good = v1::Webhook {
            webhook_id: "crm".into(),
            url: "https://crm.example.com/natter".into(),
            secrets: vec!["a-secret-of-16-bytes".into()],
            failures: 3,
            ..v1::Webhook::default()
        };
        assert_eq!(settings(good.clone()).unwrap().failures, 0);
        let field = |w| settings(w).unwrap_err().field;
        assert_eq!(
            field(v1::Webhook {
                url: "ftp://x".into(),
                ..good.clone()
            }),
            "webhook.url"
        );
        assert_eq!(
            field(v1::Webhook {
                secrets: vec!["short".into()],
                ..good
            }),
            "webhook.secrets"
        );
    }
}

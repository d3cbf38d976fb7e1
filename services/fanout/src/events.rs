//! The EVENTS consumer: every durable conversation event becomes one
//! `UserEvent` per user it concerns, appended by the holder of the user's
//! partition in sync: one `UserEvents` request per partition for each
//! EVENTS message, so a write of many messages costs one append per
//! partition it reaches, not one per recipient and message.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use natter_bus::Bus;
use natter_contract::{Backoff, ContractError, Handled, Holders, encode, subjects};
use natter_core::{ConversationId, Event, Invalid, TenantId, UserId};
use natter_proto::bus::v1::{AppendOutcome, ConversationEvent, ConversationEvents, UserEvent};
use natter_proto::convert::{parse_id, required};
use natter_proto::v1;
use prost::Message as _;
use prost::encoding::{WireType, encode_key, encode_varint};

use crate::directory::Directory;
use crate::members::Members;
use crate::stats::Stats;

/// How long one append may take, the holder's write included; then the
/// delivery is tried again.
const APPEND_TIMEOUT: Duration = Duration::from_secs(5);

/// First and longest wait before an event is handled again after a failure.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Expands conversation events to the users they concern.
#[derive(Debug)]
pub(crate) struct Expander {
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) holders: Holders,
    /// Rooms above this many members get messages on the room subject only.
    pub(crate) big_room_members: usize,
    pub(crate) directory: Arc<Directory>,
    pub(crate) stats: Arc<Stats>,
}

impl Expander {
    /// Handles one delivery of the EVENTS stream: the events of one write
    /// or change, in order. `Done` only once every recipient's user event
    /// is in its log; `Retry` if anything failed, and the next attempt
    /// appends again (what landed keeps its cursor).
    #[tracing::instrument(skip_all, fields(delivered, events, first))]
    pub(crate) async fn handle(&self, batch: ConversationEvents, delivered: u32) -> Handled {
        let span = tracing::Span::current();
        span.record("delivered", delivered);
        span.record("events", batch.events.len());
        let mut expanded = Expanded::default();
        for message in batch.events {
            let _pending = self.stats.event_received();
            let (tenant, wire, event) = match parse(message) {
                Ok(parsed) => parsed,
                Err(e) => {
                    // Asking again cannot fix it, and holding it would block
                    // the partition: report and skip.
                    tracing::error!(error = %e, "invalid conversation event dropped");
                    continue;
                }
            };
            if expanded.partitions.is_empty() {
                span.record("first", event.key().as_str());
            }
            if let Err(delay) = self
                .expand(&tenant, wire, &event, delivered, &mut expanded)
                .await
            {
                return Handled::Retry(delay);
            }
        }
        match self.append(expanded).await {
            Ok(()) => Handled::Done,
            Err(e) => {
                let delay = retry_delay(delivered);
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot append user events; retrying");
                Handled::Retry(delay)
            }
        }
    }

    /// Adds `event`'s user events to `out`, and tells the room's watchers
    /// of a message. `Err` with the delay before a retry if the members
    /// cannot be listed now.
    async fn expand(
        &self,
        tenant: &TenantId,
        wire: v1::Event,
        event: &Event,
        delivered: u32,
        out: &mut Expanded,
    ) -> Result<(), Duration> {
        if let Event::Membership(change) = event {
            self.directory.apply(tenant, change);
        }
        let members = match self
            .directory
            .members(tenant, event.conversation_id())
            .await
        {
            Ok(members) => members,
            Err(e) if e.is_permanent() => {
                tracing::error!(error = %e, "no member list for the event; delivering to the affected user only");
                Arc::new(Members::default())
            }
            Err(e) => {
                let delay = retry_delay(delivered);
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot list members; retrying");
                return Err(delay);
            }
        };
        if let v1::Event {
            kind: Some(v1::event::Kind::Message(message)),
        } = &wire
        {
            self.publish_to_room(tenant, event.conversation_id(), message.clone())
                .await;
        }
        let common = UserEvent {
            tenant_id: tenant.to_string(),
            user_id: String::new(),
            event: Some(wire),
        }
        .encode_to_vec();
        for user in recipients(event, &members, self.big_room_members) {
            let partition = self.holders.user_partition(tenant, user);
            out.add(partition, &payload(&common, user));
        }
        Ok(())
    }

    /// Tells the gateways of devices watching the conversation. Core NATS,
    /// at most once: a watching device that misses it sees the gap at the
    /// next message and reads it from storage.
    async fn publish_to_room(
        &self,
        tenant: &TenantId,
        conversation: ConversationId,
        message: v1::Message,
    ) {
        let frame = v1::ServerFrame {
            frame: Some(v1::server_frame::Frame::Message(message)),
        };
        let subject = subjects::room(tenant, conversation);
        if let Err(e) = self.bus.publish(&subject, encode(&frame)).await {
            tracing::warn!(error = %e, "cannot publish to the room's watchers");
        }
    }

    /// Asks the holder of each partition the user events fall in to
    /// append them, all at once.
    async fn append(&self, expanded: Expanded) -> Result<(), AppendError> {
        let asked = expanded
            .partitions
            .into_iter()
            .map(|(partition, events)| self.holders.append(partition, events, APPEND_TIMEOUT));
        let mut failed = Ok(());
        for outcome in join_all(asked).await {
            match outcome {
                Ok(AppendOutcome {
                    failure: None,
                    written,
                }) => self.stats.updates_written.add(u64::from(written)),
                Ok(AppendOutcome {
                    failure: Some(failure),
                    ..
                }) => failed = Err(AppendError::Refused(failure.message)),
                Err(e) => failed = Err(AppendError::Unreachable(e)),
            }
        }
        failed
    }
}

/// Why user events are not known to be in their logs.
#[derive(Debug, thiserror::Error)]
enum AppendError {
    #[error(transparent)]
    Unreachable(#[from] ContractError),
    #[error("sync refused: {0}")]
    Refused(String),
}

/// User events by user partition, each partition's as the encoded
/// `UserEvents` it will be.
#[derive(Debug, Default)]
struct Expanded {
    partitions: Vec<(u32, Vec<u8>)>,
}

impl Expanded {
    /// Appends one encoded `UserEvent` to its partition's `UserEvents`.
    fn add(&mut self, partition: u32, user_event: &[u8]) {
        let at = match self.partitions.iter().position(|(p, _)| *p == partition) {
            Some(at) => at,
            None => {
                self.partitions.push((partition, Vec::new()));
                self.partitions.len() - 1
            }
        };
        let (_, buf) = &mut self.partitions[at];
        encode_key(1, WireType::LengthDelimited, buf);
        encode_varint(user_event.len() as u64, buf);
        buf.extend_from_slice(user_event);
    }
}

fn parse(message: ConversationEvent) -> Result<(TenantId, v1::Event, Event), Invalid> {
    let tenant = parse_id("tenant_id", &message.tenant_id)?;
    let wire = required("event", message.event)?;
    let event = Event::try_from(wire.clone())?;
    Ok((tenant, wire, event))
}

/// Rooms up to this size share membership changes and read receipts with
/// every member. In larger rooms those reach only the user they are about:
/// otherwise filling a 10,000-member room would write 50 million log
/// entries, and every read in it 10,000.
pub(crate) const SHARED_SIGNALS_MAX_MEMBERS: usize = 100;

/// Whose update log receives `event`: every current member for a message,
/// unless the room has more than `big_room_members` (then nobody: watching
/// devices read it); for a membership change or a read marker, every
/// member of a small room, and always the user it is about, so a leaver
/// learns they left and a joiner that they joined even when the member
/// list has moved on since.
pub(crate) fn recipients<'a>(
    event: &'a Event,
    members: &'a Members,
    big_room_members: usize,
) -> Vec<&'a UserId> {
    let concerned = match event {
        Event::Membership(change) => Some(&change.user_id),
        Event::Read(marker) => Some(&marker.user_id),
        Event::Message(_) if members.len() > big_room_members => return Vec::new(),
        Event::Message(_) => None,
    };
    let shared = concerned.is_none() || members.len() <= SHARED_SIGNALS_MAX_MEMBERS;
    let mut out: Vec<&UserId> = Vec::with_capacity(if shared { members.len() + 1 } else { 1 });
    if shared {
        out.extend(members.iter());
    }
    if let Some(user) = concerned.filter(|user| !shared || !members.contains(user)) {
        out.push(user);
    }
    out
}

/// A `UserEvent` for `user`: its `user_id` field followed by the fields the
/// event's recipients share, encoded once per event. Protobuf decodes
/// fields in any order, so this is the message prost would encode.
fn payload(common: &[u8], user: &UserId) -> Vec<u8> {
    let id = user.as_str().as_bytes();
    let mut buf = Vec::with_capacity(common.len() + id.len() + 4);
    encode_key(2, WireType::LengthDelimited, &mut buf);
    encode_varint(id.len() as u64, &mut buf);
    buf.extend_from_slice(id);
    buf.extend_from_slice(common);
    buf
}

/// Doubles from [`RETRY_FIRST`] with each delivery, up to [`RETRY_MAX`].
fn retry_delay(delivered: u32) -> Duration {
    Backoff::nth(RETRY_FIRST, RETRY_MAX, delivered)
}

#[cfg(test)]
mod tests {
    use natter_core::{MembershipChange, MembershipKind, ReadMarker, Role, Seq, Timestamp};

    use super::*;

    const BIG: usize = 1_000;

    fn user(name: &str) -> UserId {
        UserId::new(name).unwrap()
    }

    fn change(name: &str, kind: MembershipKind) -> Event {
        Event::Membership(MembershipChange {
            conversation_id: ConversationId::generate(),
            user_id: user(name),
            role: Role::Customer,
            kind,
            at: Timestamp::from_millis(5),
        })
    }

    fn sorted(mut users: Vec<&UserId>) -> Vec<&str> {
        users.sort();
        users.into_iter().map(UserId::as_str).collect()
    }

    #[test]
    fn members_receive_reads_and_the_affected_user_their_change() {
        let members: Members = ["a", "b"].into_iter().map(user).collect();
        let read = Event::Read(ReadMarker {
            conversation_id: ConversationId::generate(),
            user_id: user("a"),
            seq: Seq::new(1),
        });
        assert_eq!(sorted(recipients(&read, &members, BIG)), ["a", "b"]);
        let left = change("c", MembershipKind::Left);
        assert_eq!(sorted(recipients(&left, &members, BIG)), ["a", "b", "c"]);
        let joined = change("a", MembershipKind::Joined);
        assert_eq!(sorted(recipients(&joined, &members, BIG)), ["a", "b"]);
    }

    #[test]
    fn big_rooms_keep_joins_and_reads_to_the_user_concerned() {
        let members: Members = (0..=SHARED_SIGNALS_MAX_MEMBERS)
            .map(|i| user(&format!("u{i}")))
            .collect();
        let joined = change("u7", MembershipKind::Joined);
        assert_eq!(sorted(recipients(&joined, &members, BIG)), ["u7"]);
        let left = change("gone", MembershipKind::Left);
        assert_eq!(sorted(recipients(&left, &members, BIG)), ["gone"]);
        let read = Event::Read(ReadMarker {
            conversation_id: ConversationId::generate(),
            user_id: user("u3"),
            seq: Seq::new(1),
        });
        assert_eq!(sorted(recipients(&read, &members, BIG)), ["u3"]);
    }

    #[test]
    fn big_rooms_keep_messages_out_of_the_logs() {
        let members: Members = (0..=3).map(|i| user(&format!("u{i}"))).collect();
        let message = Event::Message(natter_core::Message {
            id: natter_core::MessageId::generate(),
            conversation_id: ConversationId::generate(),
            seq: Seq::new(1),
            sender_id: user("u0"),
            client_message_id: natter_core::ClientMessageId::new("c1").unwrap(),
            sent_at: Timestamp::from_millis(5),
            content: natter_core::Content::Text("hi".into()),
        });
        assert_eq!(recipients(&message, &members, 4).len(), 4);
        assert!(recipients(&message, &members, 3).is_empty());
    }

    /// The fields a joined event's recipients share, encoded.
    fn common_of_a_join() -> (v1::Event, Vec<u8>) {
        let wire = v1::Event::from(change("c", MembershipKind::Joined));
        let common = UserEvent {
            tenant_id: "acme".into(),
            user_id: String::new(),
            event: Some(wire.clone()),
        }
        .encode_to_vec();
        (wire, common)
    }

    #[test]
    fn payloads_decode_as_the_user_event() {
        let (wire, common) = common_of_a_join();
        let decoded = UserEvent::decode(payload(&common, &user("bob")).as_slice()).unwrap();
        assert_eq!(
            decoded,
            UserEvent {
                tenant_id: "acme".into(),
                user_id: "bob".into(),
                event: Some(wire),
            }
        );
    }

    #[test]
    fn a_partitions_user_events_decode_as_one_message() {
        let (_, common) = common_of_a_join();
        let mut expanded = Expanded::default();
        for name in ["ann", "bob"] {
            expanded.add(1, &payload(&common, &user(name)));
        }
        expanded.add(2, &payload(&common, &user("cy")));
        let [(1, one), (2, two)] = &expanded.partitions[..] else {
            panic!("two partitions: {:?}", expanded.partitions);
        };
        let users = |bytes: &[u8]| -> Vec<String> {
            natter_proto::bus::v1::UserEvents::decode(bytes)
                .unwrap()
                .events
                .into_iter()
                .map(|e| e.user_id)
                .collect()
        };
        assert_eq!(users(one), ["ann", "bob"]);
        assert_eq!(users(two), ["cy"]);
    }
}

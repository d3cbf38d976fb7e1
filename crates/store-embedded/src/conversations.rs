//! [`ConversationStore`]: conversations, members and messages.

use std::collections::HashMap;
use std::ops::Bound;

use async_trait::async_trait;
use natter_core::{
    Content, Conversation, ConversationId, Lifecycle, Member, MembershipChange, MembershipKind,
    Message, NewConversation, ReadMarker, Role, Seq, TenantId, Timestamp, UserId,
    validate_member_list,
};
use natter_store::{
    Announcement, ConversationStore, MessageRange, Page, PageRequest, Result, StoreError,
    validate_write,
};
use redb::{AccessGuard, ReadableTable};

use crate::record::{
    ConversationRecord, conversation_id, decode_member, decode_message, encode_member,
    encode_message, uuid_key,
};
use crate::tables::{ANNOUNCEMENTS, CONVERSATIONS, MEMBERS, MEMBERSHIPS, MESSAGES};
use crate::{EmbeddedStore, TxResult, into_page};

type ConversationKey = (&'static str, u128);
type MessageKey = (&'static str, u128, u64);

/// The conversation `id` of `tenant`, or `NotFound`.
fn load_conversation(
    table: &impl ReadableTable<ConversationKey, &'static [u8]>,
    tenant: &TenantId,
    id: ConversationId,
) -> TxResult<ConversationRecord> {
    let value = table
        .get((tenant.as_str(), uuid_key(id)))?
        .ok_or_else(|| StoreError::not_found("conversation", id))?;
    Ok(ConversationRecord::decode(value.value())?)
}

/// A message from one entry of a scan of [`MESSAGES`].
fn message_entry(
    id: ConversationId,
    entry: redb::Result<(AccessGuard<'_, MessageKey>, AccessGuard<'_, &'static [u8]>)>,
) -> TxResult<Message> {
    let (key, value) = entry?;
    let (_, _, seq) = key.value();
    Ok(decode_message(id, Seq::new(seq), value.value())?)
}

fn member_limit(id: ConversationId, count: u64, max: usize) -> StoreError {
    StoreError::LimitExceeded(format!(
        "conversation {id} would have {count} members, the limit is {max}"
    ))
}

#[async_trait]
impl ConversationStore for EmbeddedStore {
    async fn create_conversation(&self, new: &NewConversation) -> Result<Conversation> {
        new.validate(&self.limits)?;
        let max_members = self.limits.max_members;
        let count = new.members.len() as u64;
        if new.members.len() > max_members {
            return Err(member_limit(new.id, count, max_members));
        }
        let new = new.clone();
        self.write(move |txn| {
            let (t, c) = (new.tenant_id.as_str(), uuid_key(new.id));
            let mut conversations = txn.open_table(CONVERSATIONS)?;
            if conversations.get((t, c))?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "conversation {} already exists",
                    new.id
                ))
                .into());
            }
            let record = ConversationRecord {
                subject: new.subject.clone(),
                created_by: new.created_by.clone(),
                created_at: new.created_at,
                last_seq: Seq::ZERO,
                member_count: count,
                lifecycle: Lifecycle::default(),
            };
            conversations.insert((t, c), record.encode().as_slice())?;

            let mut members = txn.open_table(MEMBERS)?;
            let mut memberships = txn.open_table(MEMBERSHIPS)?;
            for (user, role) in &new.members {
                let member = Member {
                    user_id: user.clone(),
                    role: *role,
                    joined_at: new.created_at,
                    read_seq: Seq::ZERO,
                };
                members.insert((t, c, user.as_str()), encode_member(&member).as_slice())?;
                memberships.insert((t, user.as_str(), c), ())?;
            }
            Ok(record.into_conversation(&new.tenant_id, new.id))
        })
        .await
    }

    async fn conversation(&self, tenant: &TenantId, id: ConversationId) -> Result<Conversation> {
        let tenant = tenant.clone();
        self.read(move |txn| {
            let conversations = txn.open_table(CONVERSATIONS)?;
            Ok(load_conversation(&conversations, &tenant, id)?.into_conversation(&tenant, id))
        })
        .await
    }

    async fn lifecycle(&self, tenant: &TenantId, id: ConversationId) -> Result<Lifecycle> {
        let tenant = tenant.clone();
        self.read(move |txn| {
            let conversations = txn.open_table(CONVERSATIONS)?;
            match conversations.get((tenant.as_str(), uuid_key(id)))? {
                Some(value) => Ok(ConversationRecord::decode(value.value())?.lifecycle),
                None => Ok(Lifecycle::default()),
            }
        })
        .await
    }

    async fn list_conversations(
        &self,
        tenant: &TenantId,
        user: &UserId,
        page: PageRequest<ConversationId>,
    ) -> Result<Page<Conversation, ConversationId>> {
        let size = self.page_size(page.size);
        let (tenant, user) = (tenant.clone(), user.clone());
        self.read(move |txn| {
            let memberships = txn.open_table(MEMBERSHIPS)?;
            let conversations = txn.open_table(CONVERSATIONS)?;
            let (t, u) = (tenant.as_str(), user.as_str());
            // Ids are UUIDv7, so the highest key is the newest conversation:
            // walk the user's memberships backwards from the page cursor.
            let upper = match page.after {
                Some(after) => Bound::Excluded((t, u, uuid_key(after))),
                None => Bound::Included((t, u, u128::MAX)),
            };
            let mut items = Vec::with_capacity(size + 1);
            for entry in memberships
                .range((Bound::Included((t, u, 0)), upper))?
                .rev()
                .take(size + 1)
            {
                let (key, _) = entry?;
                let c = key.value().2;
                let id = conversation_id(c)?;
                let value = conversations.get((t, c))?.ok_or_else(|| {
                    StoreError::Corrupt(format!("{user} is in missing conversation {id}"))
                })?;
                let record = ConversationRecord::decode(value.value())?;
                items.push(record.into_conversation(&tenant, id));
            }
            Ok(into_page(items, size, |c: &Conversation| c.id))
        })
        .await
    }

    async fn add_members(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        members: &[(UserId, Role)],
        at: Timestamp,
    ) -> Result<Vec<MembershipChange>> {
        validate_member_list(members.iter().map(|(user, _)| user), &self.limits)?;
        let max_members = self.limits.max_members;
        let (tenant, members) = (tenant.clone(), members.to_vec());
        self.write(move |txn| {
            let (t, c) = (tenant.as_str(), uuid_key(id));
            let mut conversations = txn.open_table(CONVERSATIONS)?;
            let mut record = load_conversation(&conversations, &tenant, id)?;
            let mut member_table = txn.open_table(MEMBERS)?;
            let mut changes = Vec::new();
            for (user, role) in members.iter().cloned() {
                let key = (t, c, user.as_str());
                if member_table.get(key)?.is_none() {
                    changes.push(MembershipChange {
                        conversation_id: id,
                        user_id: user,
                        role,
                        kind: MembershipKind::Joined,
                        at,
                    });
                }
            }
            let count = record.member_count + changes.len() as u64;
            if count > max_members as u64 {
                return Err(member_limit(id, count, max_members).into());
            }
            let mut memberships = txn.open_table(MEMBERSHIPS)?;
            for change in &changes {
                let member = Member {
                    user_id: change.user_id.clone(),
                    role: change.role,
                    joined_at: at,
                    read_seq: Seq::ZERO,
                };
                let user = change.user_id.as_str();
                member_table.insert((t, c, user), encode_member(&member).as_slice())?;
                memberships.insert((t, user, c), ())?;
            }
            if !changes.is_empty() {
                record.member_count = count;
                conversations.insert((t, c), record.encode().as_slice())?;
            }
            Ok(changes)
        })
        .await
    }

    async fn remove_members(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        users: &[UserId],
        at: Timestamp,
    ) -> Result<Vec<MembershipChange>> {
        validate_member_list(users.iter(), &self.limits)?;
        let (tenant, users) = (tenant.clone(), users.to_vec());
        self.write(move |txn| {
            let (t, c) = (tenant.as_str(), uuid_key(id));
            let mut conversations = txn.open_table(CONVERSATIONS)?;
            let mut record = load_conversation(&conversations, &tenant, id)?;
            let mut members = txn.open_table(MEMBERS)?;
            let mut memberships = txn.open_table(MEMBERSHIPS)?;
            let mut changes = Vec::new();
            for user in users.iter().cloned() {
                let removed = members
                    .remove((t, c, user.as_str()))?
                    .map(|old| decode_member(user.clone(), old.value()))
                    .transpose()?;
                if let Some(member) = removed {
                    memberships.remove((t, user.as_str(), c))?;
                    changes.push(MembershipChange {
                        conversation_id: id,
                        user_id: user,
                        role: member.role,
                        kind: MembershipKind::Left,
                        at,
                    });
                }
            }
            if !changes.is_empty() {
                record.member_count = record
                    .member_count
                    .checked_sub(changes.len() as u64)
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!("member count of conversation {id} below zero"))
                    })?;
                conversations.insert((t, c), record.encode().as_slice())?;
            }
            Ok(changes)
        })
        .await
    }

    async fn member(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        user: &UserId,
    ) -> Result<Option<Member>> {
        let (tenant, user) = (tenant.clone(), user.clone());
        self.read(move |txn| {
            let conversations = txn.open_table(CONVERSATIONS)?;
            load_conversation(&conversations, &tenant, id)?;
            let members = txn.open_table(MEMBERS)?;
            let value = members.get((tenant.as_str(), uuid_key(id), user.as_str()))?;
            Ok(value
                .map(|value| decode_member(user.clone(), value.value()))
                .transpose()?)
        })
        .await
    }

    async fn list_members(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        page: PageRequest<UserId>,
    ) -> Result<Page<Member, UserId>> {
        let size = self.page_size(page.size);
        let tenant = tenant.clone();
        self.read(move |txn| {
            let conversations = txn.open_table(CONVERSATIONS)?;
            load_conversation(&conversations, &tenant, id)?;
            let members = txn.open_table(MEMBERS)?;
            let (t, c) = (tenant.as_str(), uuid_key(id));
            let lower = match &page.after {
                Some(after) => Bound::Excluded((t, c, after.as_str())),
                None => Bound::Included((t, c, "")),
            };
            let mut items = Vec::with_capacity(size + 1);
            for entry in members.range((lower, Bound::Unbounded))? {
                let (key, value) = entry?;
                let (kt, kc, user) = key.value();
                if (kt, kc) != (t, c) || items.len() == size + 1 {
                    break;
                }
                let user = UserId::new(user).map_err(|e| {
                    StoreError::Corrupt(format!("member key of conversation {id}: {e}"))
                })?;
                items.push(decode_member(user, value.value())?);
            }
            Ok(into_page(items, size, |m: &Member| m.user_id.clone()))
        })
        .await
    }

    async fn write_messages(
        &self,
        messages: &[(TenantId, Message)],
        announcement: Option<&Announcement>,
        version: u64,
    ) -> Result<()> {
        validate_write(messages, announcement, version, &self.limits)?;
        // Beyond that, `version` only keys the announcement. Elsewhere it
        // orders writes of one seq that race, and here none do: one process
        // holds the file, and the storage service runs a partition's writes
        // one at a time, so the later write of a seq is always the newer
        // one and simply replaces it.
        if messages.is_empty() && announcement.is_none() {
            return Ok(());
        }
        let messages = messages.to_vec();
        let announcement = announcement.cloned();
        // One write: all of it lands or none (a missing conversation fails
        // the whole call), so no conversation is left half-written, and the
        // announcement is kept exactly when its messages are.
        self.write(move |txn| {
            // Per conversation: its highest seq, and the lifecycle of its
            // newest activity.
            type Newest<'a> = (Seq, Option<(Seq, &'a Lifecycle)>);
            let mut highest: HashMap<(&TenantId, ConversationId), Newest> = HashMap::new();
            for (tenant, message) in &messages {
                let (seq, lifecycle) = highest
                    .entry((tenant, message.conversation_id))
                    .or_insert((Seq::ZERO, None));
                *seq = (*seq).max(message.seq);
                if let Content::Activity(activity) = &message.content
                    && lifecycle.is_none_or(|(at, _)| at < message.seq)
                {
                    *lifecycle = Some((message.seq, activity));
                }
            }
            let mut conversations = txn.open_table(CONVERSATIONS)?;
            let mut records = Vec::with_capacity(highest.len());
            for (&(tenant, id), &(seq, lifecycle)) in &highest {
                let mut record = load_conversation(&conversations, tenant, id)?;
                record.last_seq = record.last_seq.max(seq);
                if let Some((_, lifecycle)) = lifecycle {
                    record.lifecycle = lifecycle.clone();
                }
                records.push(((tenant.as_str(), uuid_key(id)), record));
            }
            let mut table = txn.open_table(MESSAGES)?;
            for (tenant, message) in &messages {
                let key = (
                    tenant.as_str(),
                    uuid_key(message.conversation_id),
                    message.seq.get(),
                );
                table.insert(key, encode_message(message).as_slice())?;
            }
            for (key, record) in records {
                conversations.insert(key, record.encode().as_slice())?;
            }
            if let Some(kept) = &announcement {
                let mut announcements = txn.open_table(ANNOUNCEMENTS)?;
                announcements.insert((kept.partition, kept.version), kept.events.as_slice())?;
            }
            Ok(())
        })
        .await
    }

    async fn announcements(
        &self,
        partition: u32,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Announcement>> {
        let Some(first) = after.checked_add(1).filter(|_| limit > 0) else {
            return Ok(Vec::new());
        };
        self.read(move |txn| {
            let announcements = txn.open_table(ANNOUNCEMENTS)?;
            let mut kept = Vec::new();
            let range = announcements.range((partition, first)..=(partition, u64::MAX))?;
            for entry in range.take(limit as usize) {
                let (key, events) = entry?;
                kept.push(Announcement {
                    partition,
                    version: key.value().1,
                    events: events.value().to_vec(),
                });
            }
            Ok(kept)
        })
        .await
    }

    async fn forget_announcements(&self, partition: u32, through: u64) -> Result<()> {
        // A forget lost in a crash only has them announced again, so it
        // need not wait for a flush of its own.
        self.write_unflushed(move |txn| {
            let mut announcements = txn.open_table(ANNOUNCEMENTS)?;
            announcements.retain_in((partition, 0)..=(partition, through), |_, _| false)?;
            Ok(())
        })
        .await
    }

    async fn list_messages(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        range: MessageRange,
    ) -> Result<Vec<Message>> {
        let tenant = tenant.clone();
        let limit = self.page_size(match range {
            MessageRange::After { limit, .. } | MessageRange::Before { limit, .. } => limit,
        });
        self.read(move |txn| {
            let conversations = txn.open_table(CONVERSATIONS)?;
            load_conversation(&conversations, &tenant, id)?;
            let messages = txn.open_table(MESSAGES)?;
            let (t, c) = (tenant.as_str(), uuid_key(id));
            let mut found = Vec::new();
            match range {
                MessageRange::After { after, .. } => {
                    if after.get() == u64::MAX {
                        return Ok(found);
                    }
                    let range = messages.range((t, c, after.get() + 1)..=(t, c, u64::MAX))?;
                    for entry in range.take(limit) {
                        found.push(message_entry(id, entry)?);
                    }
                }
                MessageRange::Before { before, .. } => {
                    let last = before.map_or(u64::MAX, |b| b.get().saturating_sub(1));
                    if last == 0 {
                        return Ok(found);
                    }
                    let range = messages.range((t, c, 1)..=(t, c, last))?;
                    for entry in range.rev().take(limit) {
                        found.push(message_entry(id, entry)?);
                    }
                    found.reverse();
                }
            }
            Ok(found)
        })
        .await
    }

    async fn mark_read(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        user: &UserId,
        seq: Seq,
    ) -> Result<Option<ReadMarker>> {
        let (tenant, user) = (tenant.clone(), user.clone());
        self.write(move |txn| {
            let conversations = txn.open_table(CONVERSATIONS)?;
            let record = load_conversation(&conversations, &tenant, id)?;
            let mut members = txn.open_table(MEMBERS)?;
            let key = (tenant.as_str(), uuid_key(id), user.as_str());
            let mut member = match members.get(key)? {
                Some(value) => decode_member(user.clone(), value.value())?,
                None => return Err(StoreError::not_found("member", &user).into()),
            };
            if seq > record.last_seq {
                return Err(StoreError::FailedPrecondition(format!(
                    "read marker {seq} is beyond the last message {} of conversation {id}",
                    record.last_seq
                ))
                .into());
            }
            if seq <= member.read_seq {
                return Ok(None);
            }
            member.read_seq = seq;
            members.insert(key, encode_member(&member).as_slice())?;
            Ok(Some(ReadMarker {
                conversation_id: id,
                user_id: user.clone(),
                seq,
            }))
        })
        .await
    }
}

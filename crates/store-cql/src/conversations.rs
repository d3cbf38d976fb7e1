//! [`ConversationStore`] on CQL: conversations, members, the user's list
//! of conversations, reading messages and read markers. Writing messages
//! lives in `messages.rs`.

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt, stream};
use natter_core::{
    ClientMessageId, Conversation, ConversationId, Lifecycle, Member, MembershipChange,
    MembershipKind, Message, MessageId, NewConversation, ReadMarker, Role, Seq, TenantId,
    Timestamp, UserId, validate_member_list,
};
use natter_proto::codec::decode_content;
use natter_store::{
    Announcement, ConversationStore, MessageRange, Page, PageRequest, Result, StoreError,
};
use scylla::value::CqlTimestamp;
use uuid::Uuid;

use crate::db::corrupt;
use crate::layout::{
    BUCKET_SPAN, MEMBER_SHARDS, bucket_last, bucket_of, conversation_bucket, find_head,
    member_shard, to_bigint,
};
use crate::messages::lifecycle_of_cell;
use crate::{CqlStore, page};

/// Concurrent single-partition requests one call may have in flight.
pub(crate) const FAN_OUT: usize = 16;

/// Rows of messages or updates one request reads at most: content runs to
/// 64 KiB, and a response must stay well below the 16 MiB frame limit.
pub(crate) const ROWS_PER_READ: u32 = 128;

/// Compare-and-set rounds on `member_count` before giving up.
const MAX_COUNT_ROUNDS: usize = 32;

/// Buckets of `user_conversation_buckets` read per request.
const BUCKETS_PER_READ: i32 = 64;

/// A `conversations` row of the caller's tenant.
#[derive(Debug)]
pub(crate) struct ConversationRow {
    pub(crate) id: ConversationId,
    pub(crate) tenant_id: TenantId,
    subject: String,
    created_by: UserId,
    created_at: Timestamp,
    member_count: i64,
    /// Where to start looking for the newest message.
    pub(crate) last_seq_hint: u64,
}

type ConversationColumns = (
    Option<String>,
    Option<String>,
    Option<CqlTimestamp>,
    Option<i64>,
    Option<i64>,
);

pub(crate) type MessageColumns = (
    i64,
    Option<Uuid>,
    Option<String>,
    Option<String>,
    Option<CqlTimestamp>,
    Option<Vec<u8>>,
);

type MemberColumns = (Option<String>, Option<CqlTimestamp>, Option<i64>);

/// A stored non-negative counter.
pub(crate) fn position(what: &str, value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|_| corrupt(what, format!("negative position {value}")))
}

pub(crate) fn decode_message(
    conversation_id: ConversationId,
    row: MessageColumns,
) -> Result<Message> {
    let (seq, id, sender, client_id, sent_at, content) = row;
    let seq = position("message seq", seq)?;
    let what = |field: &str| format!("message {seq} of {conversation_id}: {field}");
    let missing = |field: &str| corrupt(&what(field), "missing");
    let content = content.ok_or_else(|| missing("content"))?;
    Ok(Message {
        id: MessageId::from_uuid(id.ok_or_else(|| missing("message_id"))?)
            .map_err(|e| corrupt(&what("message_id"), e))?,
        conversation_id,
        seq: Seq::new(seq),
        sender_id: UserId::new(sender.ok_or_else(|| missing("sender_id"))?)
            .map_err(|e| corrupt(&what("sender_id"), e))?,
        client_message_id: ClientMessageId::new(
            client_id.ok_or_else(|| missing("client_message_id"))?,
        )
        .map_err(|e| corrupt(&what("client_message_id"), e))?,
        sent_at: Timestamp::from_millis(sent_at.ok_or_else(|| missing("sent_at"))?.0),
        content: decode_content(&content).map_err(|e| corrupt(&what("content"), e))?,
    })
}

fn decode_member(user_id: UserId, row: MemberColumns) -> Result<Member> {
    let (role, joined_at, read_seq) = row;
    let what = format!("member {user_id}");
    Ok(Member {
        role: Role::parse(&role.ok_or_else(|| corrupt(&what, "no role"))?)
            .map_err(|e| corrupt(&what, e))?,
        joined_at: Timestamp::from_millis(joined_at.map_or(0, |t| t.0)),
        read_seq: Seq::new(position(&what, read_seq.unwrap_or(0))?),
        user_id,
    })
}

fn membership(
    id: ConversationId,
    user_id: UserId,
    role: Role,
    kind: MembershipKind,
    at: Timestamp,
) -> MembershipChange {
    MembershipChange {
        conversation_id: id,
        user_id,
        role,
        kind,
        at,
    }
}

impl CqlStore {
    /// The conversation's row; `NotFound` if the tenant has no such
    /// conversation (another tenant's is simply another key).
    pub(crate) async fn conversation_row(
        &self,
        tenant: &TenantId,
        id: ConversationId,
    ) -> Result<ConversationRow> {
        let not_found = || StoreError::not_found("conversation", id);
        let row: Option<ConversationColumns> = self
            .db()
            .row(
                "read conversation",
                &self.statements.conversation_get,
                (tenant.as_str(), id.as_uuid()),
            )
            .await?;
        let Some((subject, created_by, created_at, member_count, hint)) = row else {
            return Err(not_found());
        };
        let what = format!("conversation {id}");
        Ok(ConversationRow {
            id,
            tenant_id: tenant.clone(),
            subject: subject.unwrap_or_default(),
            created_by: UserId::new(created_by.unwrap_or_default())
                .map_err(|e| corrupt(&what, e))?,
            created_at: Timestamp::from_millis(created_at.map_or(0, |t| t.0)),
            member_count: member_count.unwrap_or(0),
            last_seq_hint: position(&what, hint.unwrap_or(0))?,
        })
    }

    /// The seq of the newest message, exactly: probes the tail of the
    /// messages partitions from `hint`.
    pub(crate) async fn message_head(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        hint: u64,
    ) -> Result<u64> {
        let db = self.db();
        let statement = &self.statements.message_tail;
        find_head(hint, |bucket| async move {
            let last: Option<(i64,)> = db
                .row(
                    "read message tail",
                    statement,
                    (tenant.as_str(), id.as_uuid(), bucket),
                )
                .await?;
            last.map(|(seq,)| position("message seq", seq)).transpose()
        })
        .await?
        .ok_or_else(|| {
            corrupt(
                &format!("messages of conversation {id}"),
                format!("none near the last_seq hint {hint}"),
            )
        })
    }

    async fn load_conversation(&self, row: ConversationRow) -> Result<Conversation> {
        let (last_seq, lifecycle) = futures::try_join!(
            self.message_head(&row.tenant_id, row.id, row.last_seq_hint),
            self.lifecycle(&row.tenant_id, row.id),
        )?;
        Ok(Conversation {
            id: row.id,
            tenant_id: row.tenant_id,
            subject: row.subject,
            created_by: row.created_by,
            created_at: row.created_at,
            last_seq: Seq::new(last_seq),
            member_count: row.member_count.max(0).unsigned_abs(),
            lifecycle,
        })
    }

    pub(crate) async fn read_member(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        user: &UserId,
    ) -> Result<Option<Member>> {
        let row: Option<MemberColumns> = self
            .db()
            .row(
                "read member",
                &self.statements.member_get,
                (
                    tenant.as_str(),
                    id.as_uuid(),
                    member_shard(user.as_str()),
                    user.as_str(),
                ),
            )
            .await?;
        row.map(|row| decode_member(user.clone(), row)).transpose()
    }

    /// Moves `member_count` by `delta` with compare-and-set, refusing to
    /// pass `max_members`. Starts from `observed`, the count last read.
    async fn shift_member_count(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        mut observed: i64,
        delta: i64,
    ) -> Result<()> {
        let max = i64::try_from(self.limits.max_members).unwrap_or(i64::MAX);
        for _ in 0..MAX_COUNT_ROUNDS {
            let wanted = (observed + delta).max(0);
            if delta > 0 && wanted > max {
                return Err(StoreError::LimitExceeded(format!(
                    "conversation {id} has {observed} members; adding {delta} passes the limit of {max}"
                )));
            }
            let outcome = self
                .db()
                .lwt(
                    "update member count",
                    &self.statements.conversation_set_count,
                    (wanted, tenant.as_str(), id.as_uuid(), observed),
                )
                .await?;
            if outcome.applied {
                return Ok(());
            }
            observed = outcome.bigint("member_count").unwrap_or(0);
        }
        Err(StoreError::Unavailable(format!(
            "member count of conversation {id} is contended; retry"
        )))
    }

    /// Writes the membership rows of users known not to be members: the
    /// user's list entry first, then the member row with an LWT so that a
    /// concurrent add of the same user counts once. Returns the changes
    /// and how many users turned out to be members already.
    async fn insert_members(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        users: Vec<(UserId, Role)>,
        at: Timestamp,
    ) -> Result<(Vec<MembershipChange>, i64)> {
        let bucket = conversation_bucket(id.as_uuid());
        let results: Vec<Option<MembershipChange>> = stream::iter(users)
            .map(|(user, role)| async move {
                let db = self.db();
                let st = &self.statements;
                // A list entry without a member row is invisible: listing
                // checks membership. A member without an entry is not.
                db.write(
                    "index user bucket",
                    &st.user_bucket_put,
                    (tenant.as_str(), user.as_str(), bucket),
                )
                .await?;
                db.write(
                    "index user conversation",
                    &st.user_conversation_put,
                    (tenant.as_str(), user.as_str(), bucket, id.as_uuid()),
                )
                .await?;
                let inserted = db
                    .lwt(
                        "insert member",
                        &st.member_insert,
                        (
                            tenant.as_str(),
                            id.as_uuid(),
                            member_shard(user.as_str()),
                            user.as_str(),
                            role.as_str(),
                            CqlTimestamp(at.as_millis()),
                        ),
                    )
                    .await?;
                Ok::<_, StoreError>(
                    inserted
                        .applied
                        .then(|| membership(id, user, role, MembershipKind::Joined, at)),
                )
            })
            .buffered(FAN_OUT)
            .try_collect()
            .await?;
        let lost = results.iter().filter(|r| r.is_none()).count();
        Ok((results.into_iter().flatten().collect(), lost as i64))
    }

    /// Adds users that are not yet members: reserves their count first
    /// (so the limit holds even under concurrent adds), writes them, and
    /// returns the reservation of those someone else added meanwhile.
    async fn add_new_members(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        observed_count: i64,
        new: Vec<(UserId, Role)>,
        at: Timestamp,
    ) -> Result<Vec<MembershipChange>> {
        let wanted = new.len() as i64;
        self.shift_member_count(tenant, id, observed_count, wanted)
            .await?;
        let (changes, lost) = self.insert_members(tenant, id, new, at).await?;
        if lost > 0 {
            let current = self.conversation_row(tenant, id).await?.member_count;
            self.shift_member_count(tenant, id, current, -lost).await?;
        }
        Ok(changes)
    }

    /// Removes one member: the member row first (an LWT, so concurrent
    /// removals count once), then the user's list entry.
    async fn remove_member(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        user: &UserId,
        at: Timestamp,
    ) -> Result<Option<MembershipChange>> {
        let Some(member) = self.read_member(tenant, id, user).await? else {
            return Ok(None);
        };
        let db = self.db();
        let deleted = db
            .lwt(
                "remove member",
                &self.statements.member_delete,
                (
                    tenant.as_str(),
                    id.as_uuid(),
                    member_shard(user.as_str()),
                    user.as_str(),
                ),
            )
            .await?;
        if !deleted.applied {
            return Ok(None);
        }
        db.write(
            "unindex user conversation",
            &self.statements.user_conversation_delete,
            (
                tenant.as_str(),
                user.as_str(),
                conversation_bucket(id.as_uuid()),
                id.as_uuid(),
            ),
        )
        .await?;
        Ok(Some(membership(
            id,
            user.clone(),
            member.role,
            MembershipKind::Left,
            at,
        )))
    }

    /// One entry of a user's conversation list, if the user is still a
    /// member (a stale entry is skipped, never shown).
    async fn listed_conversation(
        &self,
        tenant: &TenantId,
        user: &UserId,
        id: ConversationId,
    ) -> Result<Option<Conversation>> {
        if self.read_member(tenant, id, user).await?.is_none() {
            return Ok(None);
        }
        match self.conversation_row(tenant, id).await {
            Ok(row) => self.load_conversation(row).await.map(Some),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn messages_after(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Message>> {
        let mut messages = Vec::new();
        let mut after = after;
        while messages.len() < limit as usize {
            let bucket = bucket_of(after.saturating_add(1));
            let want = (limit - messages.len() as u32).min(ROWS_PER_READ);
            let rows: Vec<MessageColumns> = self
                .db()
                .rows(
                    "read messages",
                    &self.statements.messages_after,
                    (
                        tenant.as_str(),
                        id.as_uuid(),
                        bucket,
                        to_bigint(after),
                        want as i32,
                    ),
                )
                .await?;
            let got = rows.len();
            for row in rows {
                let message = decode_message(id, row)?;
                after = message.seq.get();
                messages.push(message);
            }
            // Gap-free: only a bucket read to its very end continues.
            if got < want as usize && after != bucket_last(bucket) {
                break;
            }
        }
        Ok(messages)
    }

    async fn messages_through(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        through: u64,
        limit: u32,
    ) -> Result<Vec<Message>> {
        let mut newest_first = Vec::new();
        let mut through = through;
        while newest_first.len() < limit as usize && through > 0 {
            let bucket = bucket_of(through);
            let want = (limit - newest_first.len() as u32).min(ROWS_PER_READ);
            let rows: Vec<MessageColumns> = self
                .db()
                .rows(
                    "read messages",
                    &self.statements.messages_through_desc,
                    (
                        tenant.as_str(),
                        id.as_uuid(),
                        bucket,
                        to_bigint(through),
                        want as i32,
                    ),
                )
                .await?;
            let got = rows.len();
            for row in rows {
                let message = decode_message(id, row)?;
                through = message.seq.get().saturating_sub(1);
                newest_first.push(message);
            }
            if got < want as usize {
                // The rest of this bucket is read; continue below it.
                match (bucket.unsigned_abs() * BUCKET_SPAN).checked_sub(1) {
                    Some(below) => through = below,
                    None => break,
                }
            }
        }
        newest_first.reverse();
        Ok(newest_first)
    }
}

#[async_trait]
impl ConversationStore for CqlStore {
    async fn create_conversation(&self, new: &NewConversation) -> Result<Conversation> {
        new.validate(&self.limits)?;
        if new.members.len() > self.limits.max_members {
            return Err(StoreError::LimitExceeded(format!(
                "{} members, the limit is {}",
                new.members.len(),
                self.limits.max_members
            )));
        }
        let count = new.members.len() as i64;
        // The count is reserved with the row, before any member is written.
        let created = self
            .db()
            .lwt(
                "create conversation",
                &self.statements.conversation_insert,
                (
                    new.tenant_id.as_str(),
                    new.id.as_uuid(),
                    new.subject.as_str(),
                    new.created_by.as_str(),
                    CqlTimestamp(new.created_at.as_millis()),
                    count,
                ),
            )
            .await?;
        if !created.applied {
            return Err(StoreError::Conflict(format!(
                "conversation {} exists",
                new.id
            )));
        }
        let (_, lost) = self
            .insert_members(&new.tenant_id, new.id, new.members.clone(), new.created_at)
            .await?;
        if lost > 0 {
            // Only a concurrent add_members on a brand-new id gets here.
            self.shift_member_count(&new.tenant_id, new.id, count, -lost)
                .await?;
        }
        Ok(Conversation {
            id: new.id,
            tenant_id: new.tenant_id.clone(),
            subject: new.subject.clone(),
            created_by: new.created_by.clone(),
            created_at: new.created_at,
            last_seq: Seq::ZERO,
            member_count: (count - lost).unsigned_abs(),
            lifecycle: Lifecycle::default(),
        })
    }

    async fn conversation(&self, tenant: &TenantId, id: ConversationId) -> Result<Conversation> {
        let row = self.conversation_row(tenant, id).await?;
        self.load_conversation(row).await
    }

    async fn lifecycle(&self, tenant: &TenantId, id: ConversationId) -> Result<Lifecycle> {
        let row: Option<(Option<Vec<u8>>,)> = self
            .db()
            .row(
                "read lifecycle",
                &self.statements.lifecycle_get,
                (tenant.as_str(), id.as_uuid()),
            )
            .await?;
        match row.and_then(|(bytes,)| bytes) {
            Some(cell) => lifecycle_of_cell(&cell)
                .map_err(|e| corrupt(&format!("lifecycle of conversation {id}"), e)),
            None => Ok(Lifecycle::default()),
        }
    }

    async fn list_conversations(
        &self,
        tenant: &TenantId,
        user: &UserId,
        request: PageRequest<ConversationId>,
    ) -> Result<Page<Conversation, ConversationId>> {
        let size = self.page_size(request.size) as usize;
        let db = self.db();
        let st = &self.statements;
        let after = request.after;
        let mut found: Vec<Conversation> = Vec::with_capacity(size + 1);
        let mut through_bucket = after.map_or(i32::MAX, |id| conversation_bucket(id.as_uuid()));
        'buckets: loop {
            let buckets: Vec<(i32,)> = db
                .rows(
                    "read user buckets",
                    &st.user_buckets_through,
                    (
                        tenant.as_str(),
                        user.as_str(),
                        through_bucket,
                        BUCKETS_PER_READ,
                    ),
                )
                .await?;
            for &(bucket,) in &buckets {
                // Within the page token's bucket, start after the token.
                let mut before = after.filter(|id| conversation_bucket(id.as_uuid()) == bucket);
                loop {
                    let want = (size + 1 - found.len()) as i32;
                    let ids: Vec<(Uuid,)> = match before {
                        Some(id) => {
                            db.rows(
                                "list user conversations",
                                &st.user_conversations_before,
                                (tenant.as_str(), user.as_str(), bucket, id.as_uuid(), want),
                            )
                            .await?
                        }
                        None => {
                            db.rows(
                                "list user conversations",
                                &st.user_conversations_first,
                                (tenant.as_str(), user.as_str(), bucket, want),
                            )
                            .await?
                        }
                    };
                    let ids: Vec<ConversationId> = ids
                        .into_iter()
                        .map(|(id,)| {
                            ConversationId::from_uuid(id)
                                .map_err(|e| corrupt("user conversation", e))
                        })
                        .collect::<Result<_>>()?;
                    let exhausted = ids.len() < want as usize;
                    before = ids.last().copied().or(before);
                    let listed: Vec<Option<Conversation>> = stream::iter(ids)
                        .map(|id| self.listed_conversation(tenant, user, id))
                        .buffered(FAN_OUT)
                        .try_collect()
                        .await?;
                    found.extend(listed.into_iter().flatten());
                    if found.len() > size {
                        break 'buckets;
                    }
                    if exhausted {
                        break;
                    }
                }
            }
            match buckets.last() {
                Some(&(last,)) if buckets.len() == BUCKETS_PER_READ as usize && last > i32::MIN => {
                    through_bucket = last - 1;
                }
                _ => break,
            }
        }
        Ok(page(found, size as u32, |c| c.id))
    }

    async fn add_members(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        members: &[(UserId, Role)],
        at: Timestamp,
    ) -> Result<Vec<MembershipChange>> {
        validate_member_list(members.iter().map(|(user, _)| user), &self.limits)?;
        let row = self.conversation_row(tenant, id).await?;
        let reads: Vec<_> = members
            .iter()
            .map(|(user, _)| self.read_member(tenant, id, user))
            .collect();
        let existing: Vec<Option<Member>> =
            stream::iter(reads).buffered(FAN_OUT).try_collect().await?;
        let new: Vec<(UserId, Role)> = members
            .iter()
            .zip(existing)
            .filter(|(_, member)| member.is_none())
            .map(|(member, _)| member.clone())
            .collect();
        if new.is_empty() {
            return Ok(Vec::new());
        }
        self.add_new_members(tenant, id, row.member_count, new, at)
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
        let row = self.conversation_row(tenant, id).await?;
        let removals: Vec<_> = users
            .iter()
            .map(|user| self.remove_member(tenant, id, user, at))
            .collect();
        let removed: Vec<Option<MembershipChange>> = stream::iter(removals)
            .buffered(FAN_OUT)
            .try_collect()
            .await?;
        let removed: Vec<MembershipChange> = removed.into_iter().flatten().collect();
        if !removed.is_empty() {
            self.shift_member_count(tenant, id, row.member_count, -(removed.len() as i64))
                .await?;
        }
        Ok(removed)
    }

    async fn member(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        user: &UserId,
    ) -> Result<Option<Member>> {
        let (_, member) = futures::try_join!(
            self.conversation_row(tenant, id),
            self.read_member(tenant, id, user)
        )?;
        Ok(member)
    }

    async fn list_members(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        request: PageRequest<UserId>,
    ) -> Result<Page<Member, UserId>> {
        self.conversation_row(tenant, id).await?;
        let size = self.page_size(request.size) as usize;
        // Order: (shard, user id). The token is the last user id; its
        // shard is recomputed from it.
        let (mut shard, mut after) = match &request.after {
            Some(user) => (member_shard(user.as_str()), user.as_str().to_owned()),
            None => (0, String::new()),
        };
        let mut members = Vec::with_capacity(size + 1);
        while shard < MEMBER_SHARDS && members.len() <= size {
            let want = (size + 1 - members.len()) as i32;
            let rows: Vec<(String, Option<String>, Option<CqlTimestamp>, Option<i64>)> = self
                .db()
                .rows(
                    "list members",
                    &self.statements.members_after,
                    (tenant.as_str(), id.as_uuid(), shard, after.as_str(), want),
                )
                .await?;
            let got = rows.len();
            for (user, role, joined_at, read_seq) in rows {
                let user_id = UserId::new(user).map_err(|e| corrupt("member user id", e))?;
                after = user_id.as_str().to_owned();
                members.push(decode_member(user_id, (role, joined_at, read_seq))?);
            }
            if got < want as usize {
                shard += 1;
                after.clear();
            }
        }
        Ok(page(members, size as u32, |m| m.user_id.clone()))
    }

    async fn write_messages(
        &self,
        messages: &[(TenantId, Message)],
        announcement: Option<&Announcement>,
        version: u64,
    ) -> Result<()> {
        self.write_sequenced(messages, announcement, version).await
    }

    async fn announcements(
        &self,
        partition: u32,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Announcement>> {
        self.kept_announcements(partition, after, limit).await
    }

    async fn forget_announcements(&self, partition: u32, through: u64) -> Result<()> {
        self.forget_kept(partition, through).await
    }

    async fn list_messages(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        range: MessageRange,
    ) -> Result<Vec<Message>> {
        let row = self.conversation_row(tenant, id).await?;
        match range {
            MessageRange::After { after, limit } => {
                self.messages_after(tenant, id, after.get(), self.page_size(limit))
                    .await
            }
            MessageRange::Before { before, limit } => {
                let head = self.message_head(tenant, id, row.last_seq_hint).await?;
                let through = match before {
                    Some(before) => head.min(before.get().saturating_sub(1)),
                    None => head,
                };
                self.messages_through(tenant, id, through, self.page_size(limit))
                    .await
            }
        }
    }

    async fn mark_read(
        &self,
        tenant: &TenantId,
        id: ConversationId,
        user: &UserId,
        seq: Seq,
    ) -> Result<Option<ReadMarker>> {
        let row = self.conversation_row(tenant, id).await?;
        let Some(member) = self.read_member(tenant, id, user).await? else {
            return Err(StoreError::not_found("member", user));
        };
        let head = self.message_head(tenant, id, row.last_seq_hint).await?;
        if seq.get() > head {
            return Err(StoreError::FailedPrecondition(format!(
                "read marker {seq} is beyond the last message {head} of conversation {id}"
            )));
        }
        if seq <= member.read_seq {
            return Ok(None);
        }
        let raised = self
            .db()
            .lwt(
                "mark read",
                &self.statements.member_mark_read,
                (
                    to_bigint(seq.get()),
                    tenant.as_str(),
                    id.as_uuid(),
                    member_shard(user.as_str()),
                    user.as_str(),
                    to_bigint(seq.get()),
                ),
            )
            .await?;
        if raised.applied {
            return Ok(Some(ReadMarker {
                conversation_id: id,
                user_id: user.clone(),
                seq,
            }));
        }
        match raised.bigint("read_seq") {
            Some(_) => Ok(None),
            // The row vanished between the read and the write.
            None => Err(StoreError::not_found("member", user)),
        }
    }
}

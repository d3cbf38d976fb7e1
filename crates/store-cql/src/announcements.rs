//! What each sequencer write announced, kept in `announcements` until
//! fanout has taken it (`natter_store::Announcement`): one table partition
//! per storage partition, across tenants. `messages.rs` keeps one once its
//! write's messages have landed.
//!
//! Both statements carry their own timestamps rather than a clock's, so
//! that a forget removes what it names whatever the clocks of the writer,
//! the forgetter and the nodes say. An announcement is written at its
//! version, the write's, as its messages are. A forget through `v` is one
//! range tombstone with timestamp `v`, which shadows every row it covers
//! (their timestamps are their versions, at most `v`, and a tie goes to
//! the tombstone) and no write of a later version. A `v` ahead of this
//! process's clock is lowered to the clock, so that forgetting
//! "everything" (`u64::MAX`) does not also forget what is written after;
//! a row whose version is still ahead of the clock then stays until a
//! later forget, which costs at most announcing it once more.

use std::time::{SystemTime, UNIX_EPOCH};

use natter_store::{Announcement, MAX_ANNOUNCEMENT_BYTES, Result};

use crate::CqlStore;
use crate::conversations::position;
use crate::db::corrupt;
use crate::layout::{partition_key, to_bigint};

/// What one read may return at most, as for messages (`ROWS_PER_READ`):
/// well below the 16 MiB frame limit.
const READ_BYTES: usize = 8 * 1024 * 1024;

/// Announcements one request reads at most: each may run to
/// [`MAX_ANNOUNCEMENT_BYTES`].
const PER_READ: u32 = match READ_BYTES / MAX_ANNOUNCEMENT_BYTES {
    0 => 1,
    n => n as u32,
};

/// Wall-clock microseconds, the unit of CQL timestamps and of versions.
pub(crate) fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

impl CqlStore {
    /// Keeps `announcement` at its version, which the write's validation
    /// has checked is the write's and fits a `bigint`.
    pub(crate) async fn keep_announcement(&self, announcement: &Announcement) -> Result<()> {
        let version = to_bigint(announcement.version);
        let values = (
            partition_key(announcement.partition),
            version,
            announcement.events.as_slice(),
            version,
        );
        self.db()
            .write(
                "keep announcement",
                &self.statements.announcement_keep,
                values,
            )
            .await
    }

    /// [`ConversationStore::announcements`](natter_store::ConversationStore::announcements):
    /// a few rows a request, until `limit` or the end.
    pub(crate) async fn kept_announcements(
        &self,
        partition: u32,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Announcement>> {
        let mut kept = Vec::new();
        let mut after = to_bigint(after);
        // No version above `i64::MAX` is stored.
        while kept.len() < limit as usize && after < i64::MAX {
            let want = (limit - kept.len() as u32).min(PER_READ);
            let rows: Vec<(i64, Option<Vec<u8>>)> = self
                .db()
                .rows(
                    "read announcements",
                    &self.statements.announcements_after,
                    (partition_key(partition), after, want as i32),
                )
                .await?;
            let got = rows.len();
            for (version, events) in rows {
                let what = format!("announcement {version} of partition {partition}");
                kept.push(Announcement {
                    partition,
                    version: position(&what, version)?,
                    events: events.ok_or_else(|| corrupt(&what, "no events"))?,
                });
                after = version;
            }
            if got < want as usize {
                break;
            }
        }
        Ok(kept)
    }

    /// [`ConversationStore::forget_announcements`](natter_store::ConversationStore::forget_announcements):
    /// one range tombstone, timestamped as the module docs say.
    pub(crate) async fn forget_kept(&self, partition: u32, through: u64) -> Result<()> {
        let through = to_bigint(through);
        let timestamp = through.min(now_micros());
        self.db()
            .write(
                "forget announcements",
                &self.statements.announcements_forget,
                (timestamp, partition_key(partition), through),
            )
            .await
    }
}

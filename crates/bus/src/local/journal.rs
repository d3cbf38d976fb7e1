//! The journal that makes a [`LocalBus`] persistent: one [redb] file with
//! every stream's configuration, messages and dedup ids, and every durable
//! consumer's ack floor. The bus still serves everything from memory; the
//! journal is what it rebuilds that memory from when it is opened again,
//! after a clean stop or a crash.
//!
//! # Write-ahead
//!
//! The shell writes each plan of the state machine (see `durable`) here
//! before applying it, in one write transaction, and tells the caller the
//! change is done only once it is on disk, so a crash loses only what
//! nobody was told about. Plans are written and applied under the
//! journal's single [`Writer`], so they reach the file in the order they
//! reach memory. redb commits atomically with checksummed commit slots: a
//! crash mid-commit leaves the previous durable commit, which the next
//! open recovers.
//!
//! # Group commit
//!
//! A plan is committed without `fsync` ([`Durability::None`]) and applied
//! at once; the writer then goes to the next plan while the caller waits
//! for an empty [`Durability::Immediate`] commit, which puts every commit
//! before it on disk. Callers that wait at the same time share one such
//! flush ([`natter_record::group`]), so storage and fanout publishing on
//! several partitions at once pay for about one `fsync`, not one each. A
//! batch (`publish_durable_batch`, such as fanout's user events for the
//! members of a conversation) is one plan and one transaction. What is applied but not yet
//! flushed can already be delivered; a crash then loses it and its
//! publisher, never told it was done, publishes again, and consumers
//! tolerate the redelivery (delivery is at least once).
//!
//! An ack is not written on its own: the consumer's new ack floor waits in
//! memory and is written in the transaction of the next change (or when
//! the journal closes), so acking costs no transaction. A crash before that
//! loses only ack floors, so some messages are delivered again, which every
//! consumer tolerates.
//!
//! # Bounded
//!
//! An append also deletes what its stream no longer holds afterwards (the
//! messages and dedup ids below its [`Floors`]), and opening trims every
//! stream to its limits as of then, so the file holds no more than each
//! stream's `max_messages` and `max_age` allowed at its last append. redb
//! reuses freed pages; the file does not shrink.
//!
//! # Tables
//!
//! Keys are redb tuples that start with the stream's prefixed name, so a
//! range over one stream is its records in sequence order. Values are in
//! the encodings of `record`.
//!
//! [`LocalBus`]: super::LocalBus

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use natter_record::group::{GroupCommit, Written};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction,
};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::durable::{
    Ack, Append, ConsumerPlan, ConsumerState, Deletion, Floors, Now, Restored, Store, Streams,
};
use super::record;
use crate::{BusError, Result, Storage, StreamConfig};

/// The journal file inside the directory given to
/// [`LocalBus::open`](super::LocalBus::open).
pub const LOCAL_BUS_FILE: &str = "bus.redb";

/// The on-disk format this build reads and writes, stored under
/// [`FORMAT_KEY`] in [`META`]. Bump it with any change to a table's key or
/// value encoding, together with a migration.
const FORMAT_VERSION: u64 = 1;
const FORMAT_KEY: &str = "format_version";

/// Upper bound on redb's page cache. The bus keeps its streams in memory
/// anyway and only reads the file when it opens.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Journal-wide settings: `name → u64`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// `stream → StreamConfig` but the name.
const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");

/// `stream → last sequence`, kept apart from the messages so it survives
/// their all being discarded. Absent until the first append.
const LAST_SEQUENCES: TableDefinition<&str, u64> = TableDefinition::new("last_sequences");

/// `(stream, sequence) → message`.
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");

/// `(stream, sequence) → (stored at, dedup id)` for the messages published
/// with a dedup id. Kept apart from the messages because a dedup id
/// outlives a message its stream's count limit discards.
const DEDUP_IDS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("dedup_ids");

/// `(stream, consumer) → ConsumerState`.
const CONSUMERS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("consumers");

/// One write the journal makes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Entry<'a> {
    Stream(&'a StreamConfig),
    Delete(&'a str),
    /// Appends the message and trims its stream to the plan's floors.
    Append(&'a Append),
    Consumer(&'a ConsumerPlan),
    Trim(&'a str, Floors),
}

/// A plan of the state machine, as the journal writes it.
pub(super) trait Journaled {
    /// The writes to commit before the plan is applied; none for a plan
    /// that changes nothing lasting, which is then applied at once.
    fn entries(&self) -> Vec<Entry<'_>>;

    /// A consumer state that need not be written now: it is written with
    /// the next change instead, and the plan is applied at once.
    fn deferred(&self) -> Option<&ConsumerPlan> {
        None
    }
}

// A stream in memory storage, its messages and its consumers never reach
// the journal: they are gone after a restart, as on a NATS server.

impl Journaled for StreamConfig {
    fn entries(&self) -> Vec<Entry<'_>> {
        match self.storage {
            Storage::Disk => vec![Entry::Stream(self)],
            Storage::Memory => Vec::new(),
        }
    }
}

impl Journaled for Deletion {
    fn entries(&self) -> Vec<Entry<'_>> {
        vec![Entry::Delete(&self.stream)]
    }
}

impl Journaled for Store {
    fn entries(&self) -> Vec<Entry<'_>> {
        match self {
            Store::Append(append) if append.journaled => vec![Entry::Append(append)],
            Store::Append(_) | Store::Duplicate(_) => Vec::new(),
        }
    }
}

impl Journaled for Vec<Store> {
    fn entries(&self) -> Vec<Entry<'_>> {
        self.iter().flat_map(Journaled::entries).collect()
    }
}

impl Journaled for ConsumerPlan {
    fn entries(&self) -> Vec<Entry<'_>> {
        if self.journaled {
            vec![Entry::Consumer(self)]
        } else {
            Vec::new()
        }
    }
}

impl Journaled for Ack {
    fn entries(&self) -> Vec<Entry<'_>> {
        self.consumer.entries()
    }

    fn deferred(&self) -> Option<&ConsumerPlan> {
        Some(&self.consumer).filter(|consumer| consumer.journaled)
    }
}

impl<T: Journaled> Journaled for Option<T> {
    fn entries(&self) -> Vec<Entry<'_>> {
        self.as_ref().map(T::entries).unwrap_or_default()
    }

    fn deferred(&self) -> Option<&ConsumerPlan> {
        self.as_ref().and_then(T::deferred)
    }
}

/// Consumer states waiting for the next commit, the newest per consumer.
type Deferred = HashMap<(String, String), ConsumerPlan>;

/// The open journal. Dropping it (and every [`Writer`]) closes the file.
pub(super) struct Journal {
    db: Arc<Database>,
    group: Arc<GroupCommit>,
    /// Held by the one [`Writer`], with what it has yet to write.
    turn: Arc<Mutex<Deferred>>,
    path: PathBuf,
}

/// The right to change the streams of a persistent bus: held while a plan
/// is made, written and applied.
pub(super) struct Writer {
    deferred: OwnedMutexGuard<Deferred>,
    db: Arc<Database>,
    group: Arc<GroupCommit>,
}

impl Journal {
    /// Opens the journal in `dir`, creating the directory and the file if
    /// they do not exist, restores what it holds into `streams` and trims
    /// it to the streams' limits as of `now`. After a crash, redb first
    /// recovers the last commit. Blocks on file I/O.
    pub(super) fn open(dir: &Path, streams: &mut Streams, now: Now) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, &e))?;
        let path = dir.join(LOCAL_BUS_FILE);
        let fresh = !path.try_exists().map_err(|e| io_error("open", &path, &e))?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => BusError::Unavailable(format!(
                    "bus journal {} is open in another bus or process",
                    path.display()
                )),
                other => failed(other),
            })?;
        init(&db).map_err(|f| f.0)?;
        if fresh {
            // The new file's directory entry must reach the disk too, or a
            // crash could lose the whole journal.
            sync_dir(dir)?;
        }

        let mut trims = Vec::new();
        for stream in load(&db).map_err(|f| f.0)? {
            let name = stream.config.name.clone();
            let floors = streams.restore(stream, now)?;
            trims.push((name, floors));
        }
        let entries: Vec<_> = trims
            .iter()
            .map(|(name, floors)| Entry::Trim(name, *floors))
            .collect();
        (|| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            write(&txn, &entries)?;
            Ok(txn.commit()?)
        })()
        .map_err(|f: Failure| f.0)?;
        Ok(Self {
            db: Arc::new(db),
            group: Arc::default(),
            turn: Arc::default(),
            path,
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Waits until no other change is being planned, written or applied.
    pub(super) async fn writer(&self) -> Writer {
        Writer {
            deferred: Arc::clone(&self.turn).lock_owned().await,
            db: Arc::clone(&self.db),
            group: Arc::clone(&self.group),
        }
    }

    /// Blocks until a change [`Writer::commit`] wrote is on disk. Call it
    /// from the blocking pool, after letting the writer go.
    pub(super) fn flush_through(&self, written: Written) -> Result<()> {
        self.group
            .flush_through(&self.db, written)
            .map_err(|e| BusError::Unavailable(format!("bus journal: {e}")))
    }
}

impl Writer {
    /// Commits `entries`, after the deferred consumer states, in one
    /// transaction without waiting for the disk; returns what to wait on
    /// for that. Blocks on I/O: call it from the blocking pool.
    pub(super) fn commit(&mut self, entries: &[Entry<'_>]) -> Result<Written> {
        let written = commit_with(&self.db, &self.group, &self.deferred, entries)?;
        self.deferred.clear();
        Ok(written)
    }

    /// Keeps `plan` to be written with the next commit.
    pub(super) fn defer(&mut self, plan: &ConsumerPlan) {
        self.deferred
            .insert((plan.stream.clone(), plan.name.clone()), plan.clone());
    }
}

impl Drop for Journal {
    /// Writes the deferred consumer states, so a clean stop redelivers
    /// nothing. Nothing else can be writing: every writer holds the turn.
    fn drop(&mut self) {
        let Ok(deferred) = self.turn.try_lock() else {
            return;
        };
        if deferred.is_empty() {
            return;
        }
        let flushed = commit_with(&self.db, &self.group, &deferred, &[])
            .and_then(|written| self.flush_through(written));
        if let Err(e) = flushed {
            tracing::warn!(error = %e, "cannot write the last acks; their messages will be delivered again");
        }
    }
}

fn commit_with(
    db: &Database,
    group: &GroupCommit,
    deferred: &Deferred,
    entries: &[Entry<'_>],
) -> Result<Written> {
    let all: Vec<Entry<'_>> = deferred
        .values()
        .map(Entry::Consumer)
        .chain(entries.iter().copied())
        .collect();
    (|| {
        let (started, txn) = group.begin(db)?;
        write(&txn, &all)?;
        Ok(started.commit(txn)?)
    })()
    .map_err(|f: Failure| f.0)
}

/// Creates every table, so read transactions can open them, and checks the
/// file's format version.
fn init(db: &Database) -> TxResult<()> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut meta = txn.open_table(META)?;
        let stored = meta.get(FORMAT_KEY)?.map(|v| v.value());
        match stored {
            None => {
                meta.insert(FORMAT_KEY, FORMAT_VERSION)?;
            }
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(Failure(BusError::Unavailable(format!(
                    "bus journal format {other} is not supported; this build reads format {FORMAT_VERSION}"
                ))));
            }
        }
        txn.open_table(STREAMS)?;
        txn.open_table(LAST_SEQUENCES)?;
        txn.open_table(MESSAGES)?;
        txn.open_table(DEDUP_IDS)?;
        txn.open_table(CONSUMERS)?;
    }
    Ok(txn.commit()?)
}

/// Reads every stream back. Records of a stream that is not in
/// [`STREAMS`] cannot exist: a deletion removes them in one transaction.
fn load(db: &Database) -> TxResult<Vec<Restored>> {
    let txn = db.begin_read()?;
    let streams = txn.open_table(STREAMS)?;
    let last_sequences = txn.open_table(LAST_SEQUENCES)?;
    let messages = txn.open_table(MESSAGES)?;
    let dedup_ids = txn.open_table(DEDUP_IDS)?;

    let mut consumers: HashMap<String, Vec<(String, ConsumerState)>> = HashMap::new();
    for entry in txn.open_table(CONSUMERS)?.iter()? {
        let (key, value) = entry?;
        let (stream, name) = key.value();
        consumers
            .entry(stream.to_owned())
            .or_default()
            .push((name.to_owned(), record::read_consumer(value.value())?));
    }

    let mut restored = Vec::new();
    for entry in streams.iter()? {
        let (name, config) = entry?;
        let name = name.value();
        let whole = (name, 0)..=(name, u64::MAX);
        restored.push(Restored {
            config: record::read_stream(name, config.value())?,
            last_sequence: last_sequences.get(name)?.map_or(0, |v| v.value()),
            messages: messages
                .range(whole.clone())?
                .map(|entry| {
                    let (key, value) = entry?;
                    Ok(record::read_message(key.value().1, value.value())?)
                })
                .collect::<TxResult<_>>()?,
            dedup_ids: dedup_ids
                .range(whole)?
                .map(|entry| {
                    let (key, value) = entry?;
                    let (at, id) = record::read_dedup_id(value.value())?;
                    Ok((key.value().1, at, id))
                })
                .collect::<TxResult<_>>()?,
            consumers: consumers.remove(name).unwrap_or_default(),
        });
    }
    Ok(restored)
}

/// Makes the writes of `entries` in `txn`.
fn write(txn: &WriteTransaction, entries: &[Entry<'_>]) -> TxResult<()> {
    {
        let mut streams = txn.open_table(STREAMS)?;
        let mut last_sequences = txn.open_table(LAST_SEQUENCES)?;
        let mut messages = txn.open_table(MESSAGES)?;
        let mut dedup_ids = txn.open_table(DEDUP_IDS)?;
        let mut consumers = txn.open_table(CONSUMERS)?;
        for entry in entries {
            match *entry {
                Entry::Stream(config) => {
                    streams.insert(config.name.as_str(), record::stream(config).as_slice())?;
                }
                Entry::Delete(stream) => {
                    streams.remove(stream)?;
                    last_sequences.remove(stream)?;
                    let whole = (stream, 0)..=(stream, u64::MAX);
                    messages.retain_in(whole.clone(), |_, _| false)?;
                    dedup_ids.retain_in(whole, |_, _| false)?;
                    consumers.retain(|(s, _), _| s != stream)?;
                }
                Entry::Append(append) => {
                    let stream = append.stream.as_str();
                    let sequence = append.message.sequence;
                    messages.insert(
                        (stream, sequence),
                        record::message(&append.message).as_slice(),
                    )?;
                    match &append.dedup_id {
                        Some(id) => {
                            let value = record::dedup_id(append.message.at, id);
                            dedup_ids.insert((stream, sequence), value.as_slice())?;
                        }
                        // Clears what a commit that reported failure may
                        // still have written for this sequence.
                        None => {
                            dedup_ids.remove((stream, sequence))?;
                        }
                    }
                    last_sequences.insert(stream, sequence)?;
                    trim(&mut messages, &mut dedup_ids, stream, append.floors)?;
                }
                Entry::Consumer(plan) => {
                    consumers.insert(
                        (plan.stream.as_str(), plan.name.as_str()),
                        record::consumer(&plan.state).as_slice(),
                    )?;
                }
                Entry::Trim(stream, floors) => {
                    trim(&mut messages, &mut dedup_ids, stream, floors)?;
                }
            }
        }
    }
    Ok(())
}

type SequenceTable<'txn> = Table<'txn, (&'static str, u64), &'static [u8]>;

/// Deletes the messages and dedup ids of `stream` below its floors.
fn trim(
    messages: &mut SequenceTable<'_>,
    dedup_ids: &mut SequenceTable<'_>,
    stream: &str,
    floors: Floors,
) -> TxResult<()> {
    messages.retain_in((stream, 0)..(stream, floors.messages), |_, _| false)?;
    dedup_ids.retain_in((stream, 0)..(stream, floors.dedup_ids), |_, _| false)?;
    Ok(())
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync", dir, &e))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<()> {
    Ok(())
}

fn io_error(action: &str, path: &Path, e: &std::io::Error) -> BusError {
    BusError::Unavailable(format!("bus journal: {action} {}: {e}", path.display()))
}

/// A redb failure as the bus reports it: retrying may help with I/O, and
/// does not with damage, but the bus has no other kind to say so.
fn failed(e: impl Into<redb::Error>) -> BusError {
    BusError::Unavailable(format!("bus journal: {}", e.into()))
}

/// The error of a journal transaction, so `?` takes redb's errors and the
/// bus's alike.
struct Failure(BusError);

type TxResult<T> = std::result::Result<T, Failure>;

impl From<BusError> for Failure {
    fn from(e: BusError) -> Self {
        Self(e)
    }
}

macro_rules! from_redb {
    ($($error:ty),*) => {
        $(impl From<$error> for Failure {
            fn from(e: $error) -> Self {
                Self(failed(e))
            }
        })*
    };
}

from_redb!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::SetDurabilityError
);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Bus, LocalBus, Outgoing};

    fn sequences(db: &Database, table: TableDefinition<(&str, u64), &[u8]>) -> Vec<u64> {
        let txn = db.begin_read().expect("read");
        let table = txn.open_table(table).expect("table");
        table
            .range(("t-s", 0)..=("t-s", u64::MAX))
            .expect("range")
            .map(|entry| entry.expect("entry").0.value().1)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_delete_what_the_stream_discards() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let bus = LocalBus::open("t", dir.path()).expect("open");
        let mut config = StreamConfig::new("s", &["a"], Duration::from_secs(3600));
        config.max_messages = Some(5);
        bus.ensure_stream(&config).await.expect("ensure stream");
        for i in 1..=50 {
            let id = (i % 2 == 0).then(|| format!("id-{i}"));
            bus.publish_durable("a", Outgoing::new("x"), id.as_deref())
                .await
                .expect("publish");
        }
        drop(bus);

        let db = Database::open(dir.path().join(LOCAL_BUS_FILE)).expect("open the file");
        assert_eq!(sequences(&db, MESSAGES), (46..=50).collect::<Vec<_>>());
        assert_eq!(
            sequences(&db, DEDUP_IDS),
            (2..=50).step_by(2).collect::<Vec<_>>(),
            "dedup ids last the duplicate window, whatever the count limit"
        );
    }

    #[test]
    fn another_format_is_refused() {
        let dir = tempfile::tempdir().expect("temporary directory");
        drop(LocalBus::open("t", dir.path()).expect("open"));
        let db = Database::open(dir.path().join(LOCAL_BUS_FILE)).expect("open the file");
        let txn = db.begin_write().expect("write");
        txn.open_table(META)
            .expect("meta")
            .insert(FORMAT_KEY, FORMAT_VERSION + 1)
            .expect("insert");
        txn.commit().expect("commit");
        drop(db);
        let result = LocalBus::open("t", dir.path());
        assert!(
            matches!(&result, Err(BusError::Unavailable(reason)) if reason.contains("format")),
            "{result:?}"
        );
    }
}

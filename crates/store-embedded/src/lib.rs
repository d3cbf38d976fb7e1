//! Natter's single-process store: conversations, members, messages, update
//! logs, devices, the support desk's records and the leases of the
//! services' partitions in one [redb] file under a data directory, with no
//! database server. It is what `natter dev` runs on.
//!
//! # Why redb
//!
//! redb is pure Rust, keeps its data in copy-on-write B-trees, and commits
//! each write transaction atomically with checksummed commit slots, so a
//! crash leaves the last committed state; its file format is stable. Its
//! write transactions are serializable by construction (one writer at a
//! time, readers on snapshots), so a write of many messages and their
//! conversations' last seqs (or of many log entries and their logs'
//! heads) is one atomic transaction, and so is every check-and-write of
//! members, counts and leases, with no lock, retry loop or conflict
//! handling of our own. fjall, the LSM-tree alternative, offers
//! transactions as an optional layer (single-writer, or optimistic with
//! conflicts to retry) and by default leaves writes in OS buffers until an
//! explicit persist; redb's default is the one contract we want.
//!
//! # Transactions and durability
//!
//! Every operation runs in a redb transaction. Writes run on tokio's
//! blocking pool (`spawn_blocking`), because redb is synchronous and a
//! commit waits for `fsync`; reads run on the caller's thread and go to
//! the pool only to wait for a flush. Writes that arrive together share
//! one transaction and its flush (`batch.rs`): sync writing to many users'
//! logs at once commits once, not once per user. Commits are group
//! commits (`group.rs`): each commits without `fsync`, then waits for one
//! flush shared with what was committed meanwhile, so when a call returns
//! `Ok`, what it wrote is on disk. A read answers only once what it
//! saw is on disk. A call that fails writes nothing. After a disk I/O error
//! the store opens the file again by itself (`handle.rs`). The table layout
//! is in `tables.rs`, the value encodings in `record.rs` (their field
//! layout in `fields.rs`).
//!
//! # Sharing
//!
//! One process has the data directory open at a time; a second
//! [`EmbeddedStore::open`] of it fails with [`StoreError::Unavailable`]
//! until the first store is dropped.

mod batch;
mod conversations;
mod desk;
mod fields;
mod group;
mod handle;
mod leases;
mod record;
mod sync;
mod tables;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use natter_core::Limits;
use natter_store::{Page, Result, StoreError};
use redb::{
    Database, DatabaseError, ReadTransaction, ReadableDatabase, ReadableTable, WriteTransaction,
};
use tempfile::TempDir;

use crate::batch::Batcher;
use crate::group::{FlushFailed, Written};
use crate::handle::{Handle, Open};
use crate::tables::{FORMAT_KEY, FORMAT_VERSION, META};

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "natter.redb";

/// The most devices one user may register, revoked ones included (a revoked
/// device stays on record so it cannot come back).
pub const MAX_DEVICES_PER_USER: usize = 100;

/// Upper bound on the page cache. redb's default is 1 GiB, more than a
/// development machine should give a background service.
const CACHE_BYTES: usize = 256 * 1024 * 1024;

/// The embedded store. Cheap to share behind an `Arc`; every method runs
/// one transaction.
pub struct EmbeddedStore {
    handle: Arc<Handle>,
    writes: Arc<Batcher>,
    limits: Limits,
    path: PathBuf,
    /// Holds the directory of a [`temporary`](Self::temporary) store; it is
    /// removed after the database closes (fields drop in order).
    _temporary: Option<TempDir>,
}

/// Dropping the store closes its file, so the directory can be opened
/// again at once.
impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.writes.wait_idle();
    }
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens the store in `dir`, creating the directory and the database
    /// file if they do not exist. After a crash, redb recovers the last
    /// committed state here, which reads the whole file.
    ///
    /// This blocks on file I/O: call it at start-up, before serving, or
    /// from `spawn_blocking`.
    pub fn open(dir: impl AsRef<Path>, limits: Limits) -> Result<Self> {
        Self::open_with(dir.as_ref(), limits, None, create_file)
    }

    /// Opens a store in a new temporary directory that is deleted when the
    /// store is dropped: for tests and throwaway demos.
    pub fn temporary(limits: Limits) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("natter-store-")
            .tempdir()
            .map_err(|e| io_error("create temporary directory", e))?;
        let path = dir.path().to_owned();
        Self::open_with(&path, limits, Some(dir), create_file)
    }

    /// Opens the store with `create`, which opens or creates the database
    /// file at a path, then and again after each disk I/O error; tests
    /// pass one that fails on demand.
    fn open_with<C>(
        dir: &Path,
        limits: Limits,
        temporary: Option<TempDir>,
        create: C,
    ) -> Result<Self>
    where
        C: Fn(&Path) -> std::result::Result<Database, DatabaseError> + Send + Sync + 'static,
    {
        std::fs::create_dir_all(dir).map_err(|e| io_error("create data directory", e))?;
        let path = dir.join(DATABASE_FILE);
        let fresh = !path
            .try_exists()
            .map_err(|e| io_error("open database", e))?;
        let file = path.clone();
        let open = move || {
            let db = create(&file).map_err(|e| match e {
                DatabaseError::DatabaseAlreadyOpen => StoreError::Unavailable(format!(
                    "database {} is open in another store or process",
                    file.display()
                )),
                other => storage_error(other),
            })?;
            init(&db).map_err(|e| e.error)?;
            Ok(db)
        };
        let db = open()?;
        leases::lapse_all(&db).map_err(|e| e.error)?;
        if fresh {
            // The new file's directory entry must reach the disk too, or a
            // crash could lose the whole database.
            sync_dir(dir)?;
        }
        Ok(Self {
            handle: Arc::new(Handle::new(path.clone(), Box::new(open), db)),
            writes: Arc::default(),
            limits,
            path,
            _temporary: temporary,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number of items to return for a request of `requested`: the
    /// limits' default for zero, clamped to their maximum, never zero.
    fn page_size(&self, requested: u32) -> usize {
        self.limits.page_size(requested).max(1) as usize
    }

    /// Runs `f` in a read transaction (a snapshot of the last commit) and
    /// answers once what it read is on disk, so no caller is shown a write
    /// that a crash could still undo. A read of pages redb or the OS has
    /// cached takes microseconds, less than handing it to another thread,
    /// so it runs on the caller's thread; only opening the file again and
    /// waiting for a flush block, and those go to the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> TxResult<T> + Send + 'static,
    {
        let handle = self.handle.clone();
        let Some(open) = handle.if_open() else {
            return blocking(move || {
                handle.run(|open| {
                    let value = f(&open.db.begin_read()?)?;
                    wait_for(open, open.group.unflushed())?;
                    Ok(value)
                })
            })
            .await;
        };
        let (value, unflushed) = handle
            .run_on(&open, |open| {
                let value = f(&open.db.begin_read()?)?;
                Ok((value, open.group.unflushed()))
            })
            .map_err(|e| e.error)?;
        if unflushed.is_some() {
            blocking(move || handle.run_on(&open, |open| wait_for(open, unflushed))).await?;
        }
        Ok(value)
    }

    /// Runs `f` in a write transaction on the blocking pool and, if `f`
    /// succeeds, commits it and answers once it is on disk. Writes waiting
    /// at the same time share the transaction and its flush (`batch.rs`),
    /// and `f` may run more than once; each run sees what the writes
    /// before it left, as if it ran alone after them. An error aborts
    /// `f`'s writes only.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&WriteTransaction) -> TxResult<T> + Send + 'static,
    {
        self.writes.write(&self.handle, f, true).await
    }

    /// Like [`write`](Self::write), but answers once committed: the change
    /// reaches the disk with the next flush. For changes whose loss in a
    /// crash costs only a repeat, such as a device's cursor moving on.
    async fn write_unflushed<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&WriteTransaction) -> TxResult<T> + Send + 'static,
    {
        self.writes.write(&self.handle, f, false).await
    }
}

/// Makes a page of up to `size` items from a scan that read up to
/// `size + 1`: one more item than the page holds means another page follows,
/// which starts after the last item of this one.
fn into_page<T, K>(mut items: Vec<T>, size: usize, key: impl FnOnce(&T) -> K) -> Page<T, K> {
    let more = items.len() > size;
    items.truncate(size);
    let next = if more { items.last().map(key) } else { None };
    Page { items, next }
}

/// Creates every table, so read transactions can open them, and checks the
/// file's format version.
fn init(db: &Database) -> TxResult<()> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        let stored = meta.get(FORMAT_KEY)?.map(|v| v.value());
        match stored {
            None => {}
            Some(1) => leases::rescope(&txn)?,
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(StoreError::FailedPrecondition(format!(
                    "database format {other} is not supported; this build reads format {FORMAT_VERSION}"
                ))
                .into());
            }
        }
        if stored != Some(FORMAT_VERSION) {
            meta.insert(FORMAT_KEY, FORMAT_VERSION)?;
        }
        // Every table this build uses, so a file that lacks one (`leases`
        // is newer than the first files of format 1, `announcements` and
        // `desk_records` than those of format 2) gets it. Files from before
        // the sequencer also hold `message_keys`, the store's old
        // idempotency index: nothing opens it, and a table nobody opens is
        // harmless, so it is left as it is.
        txn.open_table(tables::CONVERSATIONS)?;
        txn.open_table(tables::MEMBERS)?;
        txn.open_table(tables::MEMBERSHIPS)?;
        txn.open_table(tables::MESSAGES)?;
        txn.open_table(tables::LEASES)?;
        txn.open_table(tables::ANNOUNCEMENTS)?;
        txn.open_table(tables::LOG_HEADS)?;
        txn.open_table(tables::UPDATES)?;
        txn.open_table(tables::DEVICES)?;
        txn.open_table(tables::DESK_RECORDS)?;
    }
    Ok(txn.commit()?)
}

/// Opens or creates the database file at `path`.
fn create_file(path: &Path) -> std::result::Result<Database, DatabaseError> {
    Database::builder().set_cache_size(CACHE_BYTES).create(path)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync data directory", e))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<()> {
    Ok(())
}

/// Runs blocking work off the runtime threads. A panic in it is re-raised
/// in the caller, as if the work had run inline.
async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> TxResult<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(|e| e.error),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(StoreError::Unavailable(format!("store task ended: {e}"))),
    }
}

/// Waits until `unflushed`, what a read saw, is on disk.
fn wait_for(open: &Open, unflushed: Option<Written>) -> TxResult<()> {
    match unflushed {
        Some(written) => open
            .group
            .flush_through(&open.db, written)
            .map_err(flush_failed),
        None => Ok(()),
    }
}

/// A failed flush means a failed disk, and the group commit that met it
/// fails from then on.
fn flush_failed(e: FlushFailed) -> TxError {
    TxError {
        error: StoreError::Unavailable(e.to_string()),
        io: true,
    }
}

fn io_error(action: &str, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{action}: {e}"))
}

/// The error of a transaction's work: a store error, or a redb error
/// already mapped by [`storage_error`], so `?` takes both.
pub(crate) struct TxError {
    error: StoreError,
    /// The disk failed: the database must be opened again.
    io: bool,
}

pub(crate) type TxResult<T> = std::result::Result<T, TxError>;

impl From<StoreError> for TxError {
    fn from(error: StoreError) -> Self {
        Self { error, io: false }
    }
}

macro_rules! from_redb {
    ($($error:ty),*) => {
        $(impl From<$error> for TxError {
            fn from(e: $error) -> Self {
                let e: redb::Error = e.into();
                Self {
                    io: matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo),
                    error: storage_error(e),
                }
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

/// Maps redb's errors onto the store's: damage and a file of unexpected
/// shape are `Corrupt`; I/O and lifecycle failures are `Unavailable`.
fn storage_error(e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    match e {
        redb::Error::Corrupted(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TableIsNotMultimap(_)
        | redb::Error::UpgradeRequired(_) => StoreError::Corrupt(e.to_string()),
        redb::Error::ValueTooLarge(len) => {
            StoreError::LimitExceeded(format!("record of {len} bytes is too large to store"))
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

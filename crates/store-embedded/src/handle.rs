//! The open database, and opening it again after a disk I/O error.
//!
//! After one I/O error (a full disk, a failed `fsync`) redb fails every
//! later transaction with `PreviousIo`, and a group commit whose flush
//! failed fails every later wait, until the file is opened again; the disk
//! may well have recovered by then. So the call that meets such an error
//! closes the handle, and the first call after it opens the file again
//! (redb recovers the last committed state on open), at most once per
//! [`RETRY`] while that fails. Until then calls answer `Unavailable`, as
//! the failed ones did; callers retry those, and since each call is one
//! atomic transaction, nothing is half-written. A write that failed may or
//! may not be in the reopened file, so nothing read from the file is kept
//! across a reopen: the group commit, the only state in memory, starts
//! afresh with the new handle.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use natter_store::{Result, StoreError};
use redb::Database;

use crate::group::GroupCommit;
use crate::{TxError, TxResult};

/// How long a failed reopen waits before the next call tries again.
const RETRY: Duration = Duration::from_secs(1);

/// Opens the database file, ready for use.
pub(crate) type Opener = Box<dyn Fn() -> Result<Database> + Send + Sync>;

/// A database file opened once and the group commit of its writers.
#[derive(Debug)]
pub(crate) struct Open {
    pub(crate) db: Database,
    pub(crate) group: GroupCommit,
}

impl Open {
    fn new(db: Database) -> Arc<Self> {
        Arc::new(Self {
            db,
            group: GroupCommit::default(),
        })
    }
}

/// The database file, opened again whenever a call fails on disk I/O.
pub(crate) struct Handle {
    path: PathBuf,
    open: Opener,
    state: Mutex<State>,
}

enum State {
    Open(Arc<Open>),
    /// Closed after an I/O error: `failed` is the poisoned handle, which
    /// calls still under way may hold (and with it the file) for a moment.
    Closed {
        failed: Weak<Open>,
        retry_at: Instant,
        retries: u32,
    },
}

impl Handle {
    /// `db` is the file just opened with `open`.
    pub(crate) fn new(path: PathBuf, open: Opener, db: Database) -> Self {
        Self {
            path,
            open,
            state: Mutex::new(State::Open(Open::new(db))),
        }
    }

    /// Runs `f` on the open database. If it fails on disk I/O, the handle
    /// closes, so the next call opens the file again. Blocks on file I/O.
    pub(crate) fn run<T>(&self, f: impl FnOnce(&Open) -> TxResult<T>) -> TxResult<T> {
        let open = self.get()?;
        self.run_on(&open, f)
    }

    /// The open database, or `None` if it must be opened again first,
    /// which blocks on file I/O.
    pub(crate) fn if_open(&self) -> Option<Arc<Open>> {
        match &*self.state.lock().unwrap_or_else(PoisonError::into_inner) {
            State::Open(open) => Some(open.clone()),
            State::Closed { .. } => None,
        }
    }

    /// Runs `f` on `open`, got from this handle, as [`Handle::run`] does.
    pub(crate) fn run_on<T>(
        &self,
        open: &Arc<Open>,
        f: impl FnOnce(&Open) -> TxResult<T>,
    ) -> TxResult<T> {
        let result = f(open);
        if let Err(TxError { error, io: true }) = &result {
            self.fail(open, error);
        }
        result
    }

    fn get(&self) -> Result<Arc<Open>> {
        // Held while the file opens: callers arriving meanwhile wait for
        // the new handle rather than open the file again themselves.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let retries = match &*state {
            State::Open(open) => return Ok(open.clone()),
            // Not while calls still hold the failed handle, which holds the
            // file's lock, nor before the pause after a failed reopen.
            State::Closed {
                failed,
                retry_at,
                retries,
            } if failed.strong_count() == 0 && Instant::now() >= *retry_at => *retries,
            State::Closed { .. } => return Err(self.closed()),
        };
        match (self.open)() {
            Ok(db) => {
                tracing::warn!(
                    path = %self.path.display(),
                    "reopened database after disk I/O error"
                );
                let open = Open::new(db);
                *state = State::Open(open.clone());
                Ok(open)
            }
            Err(error) => {
                if retries == 0 {
                    tracing::warn!(
                        path = %self.path.display(),
                        %error,
                        "reopening database failed, retrying"
                    );
                } else {
                    tracing::debug!(
                        path = %self.path.display(),
                        %error,
                        retries,
                        "reopening database failed again"
                    );
                }
                *state = State::Closed {
                    failed: Weak::new(),
                    retry_at: Instant::now() + RETRY,
                    retries: retries + 1,
                };
                Err(self.closed())
            }
        }
    }

    /// Closes the handle if `failed` is still the open one: callers that
    /// fail together close it once.
    fn fail(&self, failed: &Arc<Open>, error: &StoreError) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let State::Open(open) = &*state
            && Arc::ptr_eq(open, failed)
        {
            tracing::error!(
                path = %self.path.display(),
                %error,
                "disk I/O failed, reopening database"
            );
            *state = State::Closed {
                failed: Arc::downgrade(failed),
                retry_at: Instant::now(),
                retries: 0,
            };
        }
    }

    fn closed(&self) -> StoreError {
        StoreError::Unavailable(format!(
            "database {} is closed after a disk I/O error and not open again yet",
            self.path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::future::Future;
    use std::io;
    use std::ops::Bound;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

    use natter_core::{
        ClientMessageId, Content, ConversationId, Cursor, Event, Limits, Message, MessageId,
        NewConversation, NewMessage, Role, Seq, TenantId, Timestamp, Update, UserId,
    };
    use natter_store::{ConversationStore, MessageRange, SyncStore, UpdateBatch};
    use redb::backends::FileBackend;
    use redb::{BackendError, StorageBackend};

    use super::*;
    use crate::EmbeddedStore;

    const HEALTHY: u8 = 0;
    /// Writes and `fsync`s fail, as on a full disk.
    const FULL: u8 = 1;
    /// Only `fsync`s fail, as when the disk reports EIO.
    const FSYNC: u8 = 2;
    /// `fsync`s wait until the fault changes, as on a disk that stalls.
    const STALL: u8 = 3;

    /// A disk whose failures the test switches on and off, and which counts
    /// the times the store opens the database file on it.
    #[derive(Debug, Default, Clone)]
    struct Disk {
        fault: Arc<AtomicU8>,
        opens: Arc<AtomicUsize>,
    }

    impl Disk {
        fn set(&self, fault: u8) {
            self.fault.store(fault, Ordering::SeqCst);
        }

        fn opens(&self) -> usize {
            self.opens.load(Ordering::SeqCst)
        }

        /// A store in a temporary directory whose file is on this disk.
        fn store(&self) -> EmbeddedStore {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().to_owned();
            let disk = self.clone();
            EmbeddedStore::open_with(&path, Limits::default(), Some(dir), move |file: &Path| {
                disk.opens.fetch_add(1, Ordering::SeqCst);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(file)?;
                Database::builder().create_with_backend(FailingFile {
                    file: FileBackend::new(file)?,
                    fault: disk.fault.clone(),
                })
            })
            .unwrap()
        }
    }

    /// The real file backend, failing while the disk's fault is on.
    #[derive(Debug)]
    struct FailingFile {
        file: FileBackend,
        fault: Arc<AtomicU8>,
    }

    impl FailingFile {
        fn check(&self, failing: &[u8]) -> io::Result<()> {
            if failing.contains(&self.fault.load(Ordering::SeqCst)) {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "injected disk failure",
                ));
            }
            Ok(())
        }
    }

    impl StorageBackend for FailingFile {
        fn len(&self) -> io::Result<u64> {
            self.file.len()
        }

        fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
            self.file.read(offset, out)
        }

        fn set_len(&self, len: u64) -> io::Result<()> {
            self.file.set_len(len)
        }

        fn sync_data(&self) -> io::Result<()> {
            while self.fault.load(Ordering::SeqCst) == STALL {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.check(&[FULL, FSYNC])?;
            self.file.sync_data()
        }

        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.check(&[FULL])?;
            self.file.write(offset, data)
        }

        fn close(&self) -> io::Result<()> {
            self.file.close()
        }

        fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
            self.file.try_lock_range(start, end)
        }

        fn try_lock_shared_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<bool, BackendError> {
            self.file.try_lock_shared_range(start, end)
        }

        fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
            self.file.lock_range(start, end)
        }

        fn lock_shared_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<(), BackendError> {
            self.file.lock_shared_range(start, end)
        }

        fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
            self.file.unlock_range(start, end)
        }

        fn query_lock_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<bool, BackendError> {
            self.file.query_lock_range(start, end)
        }
    }

    fn tenant() -> TenantId {
        TenantId::new("acme").unwrap()
    }

    fn alice() -> UserId {
        UserId::new("alice").unwrap()
    }

    async fn conversation(store: &EmbeddedStore) -> ConversationId {
        let new = NewConversation {
            id: ConversationId::generate(),
            tenant_id: tenant(),
            subject: "Order #1234".into(),
            created_by: alice(),
            created_at: Timestamp::from_millis(1),
            members: vec![(alice(), Role::Customer)],
        };
        store.create_conversation(&new).await.unwrap().id
    }

    /// Message `seq` of a conversation, as the sequencer numbers it.
    fn text(id: ConversationId, seq: u64) -> Message {
        let key = format!("k{seq}");
        NewMessage {
            id: MessageId::generate(),
            conversation_id: id,
            sender_id: alice(),
            client_message_id: ClientMessageId::new(key.as_str()).unwrap(),
            sent_at: Timestamp::from_millis(2),
            content: Content::Text(key),
        }
        .at(Seq::new(seq))
    }

    /// Writes one message, as a sequencer with epoch 1 would.
    async fn write(store: &EmbeddedStore, message: &Message) -> natter_store::Result<()> {
        store
            .write_messages(&[(tenant(), message.clone())], None, 1 << 40)
            .await
    }

    /// Writes one entry of alice's log, as a sync writer would.
    async fn log(store: &EmbeddedStore, cursor: u64, event: &Event) -> natter_store::Result<()> {
        let update = Update {
            cursor: Cursor::new(cursor),
            event: event.clone(),
        };
        store
            .write_updates(&[(tenant(), alice(), update)], 1 << 40)
            .await
    }

    async fn messages(
        store: &EmbeddedStore,
        id: ConversationId,
    ) -> natter_store::Result<Vec<Message>> {
        let all = MessageRange::After {
            after: Seq::ZERO,
            limit: 1000,
        };
        store.list_messages(&tenant(), id, all).await
    }

    fn assert_unavailable<T: std::fmt::Debug>(result: natter_store::Result<T>) {
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "expected unavailable, got {result:?}"
        );
    }

    /// Retries `call` as a caller would while it answers `Unavailable`,
    /// until it succeeds or a deadline passes.
    async fn retry<T, F: Future<Output = natter_store::Result<T>>>(
        mut call: impl FnMut() -> F,
    ) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match call().await {
                Ok(value) => return value,
                Err(StoreError::Unavailable(e)) if Instant::now() < deadline => {
                    tracing::debug!(%e, "still unavailable");
                }
                Err(e) => panic!("store did not recover: {e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn the_store_opens_its_file_again_after_the_disk_fails() {
        for fault in [FULL, FSYNC] {
            let acme = tenant();
            let disk = Disk::default();
            let store = disk.store();
            let id = conversation(&store).await;
            let (one, two) = (text(id, 1), text(id, 2));
            write(&store, &one).await.unwrap();
            write(&store, &two).await.unwrap();
            let first = Event::Message(one.clone());
            log(&store, 1, &first).await.unwrap();

            disk.set(fault);
            // Until something fails, what is on disk is served.
            let acknowledged = vec![one.clone(), two.clone()];
            assert_eq!(messages(&store, id).await.unwrap(), acknowledged);
            // Then writes fail, and so does everything else until the
            // file is open again, which fails while the disk does.
            let three = text(id, 3);
            assert_unavailable(write(&store, &three).await);
            let second = Event::Message(two.clone());
            assert_unavailable(log(&store, 2, &second).await);
            assert_unavailable(messages(&store, id).await);

            disk.set(HEALTHY);
            // The same store serves again, with nothing acknowledged lost,
            // whether the failed write reached the file or not; writing it
            // again stores it once.
            retry(|| write(&store, &three)).await;
            let four = text(id, 4);
            write(&store, &four).await.unwrap();
            let mut expected = acknowledged;
            expected.extend([three, four]);
            assert_eq!(
                messages(&store, id).await.unwrap(),
                expected,
                "fault {fault}"
            );
            assert_eq!(
                store.conversation(&acme, id).await.unwrap().last_seq,
                Seq::new(4)
            );

            // The failed update is in the log whole or not at all; writing
            // it again stores it once.
            log(&store, 2, &second).await.unwrap();
            let updates = store
                .read_updates(&acme, &alice(), Cursor::ZERO, 10)
                .await
                .unwrap();
            let logged = |cursor, event| Update {
                cursor: Cursor::new(cursor),
                event,
            };
            assert_eq!(
                updates,
                UpdateBatch::Updates(vec![logged(1, first), logged(2, second)])
            );
            assert_eq!(
                disk.opens(),
                3,
                "fault {fault}: one failed reopen, one that worked"
            );
        }
    }

    /// Ends a stall when dropped, so a failed assertion does not leave the
    /// stalled flush (and the test) waiting for ever.
    struct Unstall<'a>(&'a Disk);

    impl Drop for Unstall<'_> {
        fn drop(&mut self) {
            let _ =
                self.0
                    .fault
                    .compare_exchange(STALL, HEALTHY, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_answers_once_what_it_saw_is_on_disk() {
        for (then, on_disk) in [(HEALTHY, true), (FSYNC, false)] {
            let disk = Disk::default();
            let store = Arc::new(disk.store());
            let id = conversation(&store).await;
            let one = text(id, 1);
            let ended = || store.handle.if_open().unwrap().group.ended();
            let before = ended();
            disk.set(STALL);
            let _unstall = Unstall(&disk);
            let writing = tokio::spawn({
                let (store, one) = (store.clone(), one.clone());
                async move { write(&store, &one).await }
            });
            // Once the write has committed, waiting for the disk, a read
            // sees it and waits with it.
            while ended() == before {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let waiting = tokio::spawn({
                let store = store.clone();
                async move { messages(&store, id).await }
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(!waiting.is_finished(), "answered before the flush");

            disk.set(then);
            let (read, written) = (waiting.await.unwrap(), writing.await.unwrap());
            if on_disk {
                assert_eq!(read.unwrap(), vec![one]);
                written.unwrap();
            } else {
                assert_unavailable(read);
                assert_unavailable(written);
            }
        }
    }

    #[tokio::test]
    async fn a_failed_reopen_is_retried_after_a_pause() {
        let acme = tenant();
        let disk = Disk::default();
        let store = disk.store();
        let id = conversation(&store).await;
        disk.set(FULL);
        assert_unavailable(write(&store, &text(id, 1)).await);
        assert_eq!(disk.opens(), 1);

        // The next call opens the file again, which fails on the full disk;
        // the calls after it do not try again at once.
        for _ in 0..3 {
            assert_unavailable(store.conversation(&acme, id).await);
        }
        assert_eq!(disk.opens(), 2);

        disk.set(HEALTHY);
        let one = text(id, 1);
        retry(|| write(&store, &one)).await;
        assert_eq!(messages(&store, id).await.unwrap(), vec![one]);
        assert_eq!(disk.opens(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn writers_failing_together_reopen_the_file_once() {
        let disk = Disk::default();
        let store = Arc::new(disk.store());
        let id = conversation(&store).await;
        let sends: Vec<_> = (1..=16).map(|seq| text(id, seq)).collect();
        let failures = Arc::new(AtomicUsize::new(0));
        let healed = Arc::new(AtomicBool::new(false));

        disk.set(FULL);
        // Writers that retry while unavailable, as the storage service
        // does, all at once.
        let mut writers = tokio::task::JoinSet::new();
        for send in sends.clone() {
            let (store, failures, healed) = (store.clone(), failures.clone(), healed.clone());
            writers.spawn(async move {
                loop {
                    match write(&store, &send).await {
                        Ok(()) => {
                            assert!(healed.load(Ordering::SeqCst), "acknowledged on a full disk");
                            return;
                        }
                        Err(StoreError::Unavailable(_)) => {
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => panic!("write failed: {e:?}"),
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while failures.load(Ordering::SeqCst) < 10 * sends.len() {
            assert!(Instant::now() < deadline, "writers did not fail");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        healed.store(true, Ordering::SeqCst);
        disk.set(HEALTHY);
        tokio::time::timeout(Duration::from_secs(10), writers.join_all())
            .await
            .expect("writers recover");

        // Hundreds of failed calls tried to open the file once on the full
        // disk, then once more after the pause.
        assert_eq!(disk.opens(), 3);
        assert_eq!(messages(&store, id).await.unwrap(), sends);
    }
}

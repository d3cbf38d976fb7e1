//! Group commit for a redb file: each write transaction commits without
//! `fsync` ([`Durability::None`]), then waits for an empty
//! [`Durability::Immediate`] commit, which puts every commit before it on
//! disk. Writers waiting at the same time share one such flush, so a burst
//! of small transactions costs about one `fsync` instead of one each, and
//! nobody is told a write is done before it is on disk.
//!
//! A writer can let others write between its commit and its wait: commit
//! with [`Started::commit`], hand on its turn, then wait with
//! [`GroupCommit::flush_through`]. Readers can see a commit before it is
//! flushed; those that must not (what they read would be handed out as
//! durable) ask [`GroupCommit::unflushed`] after reading and wait for what
//! it names.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use redb::{Database, Durability, WriteTransaction};

/// A flush failed; redb then takes no more writes until the file is
/// opened again.
#[derive(Debug, Clone, thiserror::Error)]
#[error("flush to disk failed: {0}")]
pub(crate) struct FlushFailed(pub(crate) String);

/// The group commit of one database. Share it between every writer of the
/// database.
#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    state: Mutex<State>,
    flushed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Write transactions begun.
    started: u64,
    /// Write transactions ended (committed or not); at most `started`.
    ended: u64,
    /// Ended transactions known to be on disk.
    flushed: u64,
    /// A flush is under way.
    flushing: bool,
    failed: Option<FlushFailed>,
}

/// A committed write transaction, not necessarily on disk yet.
#[derive(Debug)]
#[must_use = "wait with GroupCommit::flush_through before reporting the write done"]
pub(crate) struct Written {
    mark: u64,
}

/// A write transaction that takes part in the group commit.
#[derive(Debug)]
pub(crate) struct Started<'a> {
    group: &'a GroupCommit,
    ended: bool,
}

impl GroupCommit {
    /// Begins a write transaction that commits without `fsync`. End it
    /// with [`Started::commit`]; dropping it counts it as ended.
    pub(crate) fn begin<'a>(
        &'a self,
        db: &'a Database,
    ) -> Result<(Started<'a>, WriteTransaction), redb::Error> {
        self.lock().started += 1;
        let started = Started {
            group: self,
            ended: false,
        };
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::None)?;
        Ok((started, txn))
    }

    /// For a reader, after reading: what it must wait for with
    /// [`GroupCommit::flush_through`] before it answers, so nothing it read
    /// can be lost to a crash. That is every write transaction begun so
    /// far (one that has committed may not have ended yet); `None` when
    /// all of them are on disk already, so the reader need not block.
    pub(crate) fn unflushed(&self) -> Option<Written> {
        let state = self.lock();
        let clean = state.failed.is_none() && state.flushed >= state.started;
        (!clean).then_some(Written {
            mark: state.started,
        })
    }

    /// Blocks until `written` is on disk.
    pub(crate) fn flush_through(&self, db: &Database, written: Written) -> Result<(), FlushFailed> {
        self.wait(db, written.mark)
    }

    /// Blocks until `mark` transactions have ended and are on disk: joins
    /// the flush under way if it covers them, else starts one.
    fn wait(&self, db: &Database, mark: u64) -> Result<(), FlushFailed> {
        let mut state = self.lock();
        loop {
            if let Some(failed) = &state.failed {
                return Err(failed.clone());
            }
            if state.flushed >= mark {
                return Ok(());
            }
            if state.flushing || state.ended < mark {
                state = self
                    .flushed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            state.flushing = true;
            let upto = state.ended;
            drop(state);
            let flushed = flush(db);
            state = self.lock();
            state.flushing = false;
            match flushed {
                Ok(()) => state.flushed = state.flushed.max(upto),
                Err(e) => state.failed = Some(FlushFailed(e.to_string())),
            }
            self.flushed.notify_all();
        }
    }

    /// Write transactions ended so far, committed or not.
    #[cfg(test)]
    pub(crate) fn ended(&self) -> u64 {
        self.lock().ended
    }

    fn end(&self) -> u64 {
        let mut state = self.lock();
        state.ended += 1;
        let ended = state.ended;
        // Someone may be waiting for this transaction to end.
        self.flushed.notify_all();
        ended
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Never held while anything can panic halfway through a change.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Started<'_> {
    /// Commits `txn` without waiting for the disk. Changes whose loss in a
    /// crash costs only a repeat (a device cursor) may drop the [`Written`]:
    /// they reach the disk with the next flush.
    pub(crate) fn commit(mut self, txn: WriteTransaction) -> Result<Written, redb::Error> {
        txn.commit()?;
        self.ended = true;
        Ok(Written {
            mark: self.group.end(),
        })
    }
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.group.end();
        }
    }
}

/// Commits nothing, durably.
fn flush(db: &Database) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};

    use super::*;

    const TABLE: TableDefinition<u64, u64> = TableDefinition::new("t");

    #[test]
    fn concurrent_writers_all_commit_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let db = Arc::new(Database::create(&path).unwrap());
        let group = Arc::new(GroupCommit::default());
        let writers: Vec<_> = (0..8u64)
            .map(|w| {
                let (db, group) = (db.clone(), group.clone());
                std::thread::spawn(move || {
                    for i in 0..50u64 {
                        let (started, txn) = group.begin(&db).unwrap();
                        txn.open_table(TABLE)
                            .unwrap()
                            .insert(w * 1000 + i, i)
                            .unwrap();
                        let written = started.commit(txn).unwrap();
                        group.flush_through(&db, written).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        // An aborted transaction counts as ended, so readers do not wait
        // for it forever.
        drop(group.begin(&db).unwrap());
        let unflushed = group.unflushed().expect("the aborted transaction");
        group.flush_through(&db, unflushed).unwrap();
        assert!(group.unflushed().is_none());
        {
            let state = group.lock();
            assert_eq!((state.started, state.ended), (401, 401));
            assert!(state.flushed >= 400);
        }
        drop(db);
        let db = Database::create(&path).unwrap();
        let read = db.begin_read().unwrap();
        assert_eq!(read.open_table(TABLE).unwrap().len().unwrap(), 400);
    }

    #[test]
    fn a_reader_waits_only_while_a_write_is_not_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db.redb")).unwrap();
        let group = GroupCommit::default();
        assert!(group.unflushed().is_none());
        let (started, txn) = group.begin(&db).unwrap();
        txn.open_table(TABLE).unwrap().insert(1, 1).unwrap();
        // Begun, not committed: a reader may already see it once it is.
        assert!(group.unflushed().is_some());
        let written = started.commit(txn).unwrap();
        let unflushed = group.unflushed().expect("committed, not flushed");
        group.flush_through(&db, written).unwrap();
        group.flush_through(&db, unflushed).unwrap();
        assert!(group.unflushed().is_none());
    }
}

//! Concurrent writes share one transaction.
//!
//! redb runs one write transaction at a time, and each commit costs its
//! page writes and, before anyone is answered, a flush. Sync appending one
//! event to ten members' logs, on ten partitions at once, would pay for
//! ten commits in a row. So writes queue here, and one task on the
//! blocking pool runs every write queued meanwhile in one transaction,
//! commits it once, flushes once and answers each.
//!
//! redb cannot undo part of a transaction, so a write that fails is
//! answered with its error, the transaction is aborted, and the writes
//! before it and those after it run again without it: one caller's failure
//! never undoes another's write. Writes are therefore closures that may run
//! more than once (`Fn`), each time against what the writes before it in
//! the batch left, as if they ran one after another.

use std::sync::{Arc, Condvar, Mutex, PoisonError};

use natter_store::{Result, StoreError};
use redb::WriteTransaction;
use tokio::sync::oneshot;

use crate::handle::{Handle, Open};
use crate::{TxResult, flush_failed};

/// Writes in one transaction at most, so one commit stays small.
const MAX_BATCH: usize = 256;

/// The queue of writes and whether a task is committing them.
#[derive(Default)]
pub(crate) struct Batcher {
    queue: Mutex<Queue>,
    /// Signalled when the committing task stops and has let go of the file.
    idle: Condvar,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Box<dyn Job>>,
    running: bool,
}

/// One caller's write, its value once run, and where the answer goes.
trait Job: Send {
    fn run(&mut self, txn: &WriteTransaction) -> TxResult<()>;
    /// Whether the caller is answered only once the write is on disk.
    fn flush(&self) -> bool;
    fn answer(self: Box<Self>, result: Result<()>);
}

struct Write<T, F> {
    f: F,
    value: Option<T>,
    flush: bool,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for Write<T, F>
where
    T: Send,
    F: Fn(&WriteTransaction) -> TxResult<T> + Send,
{
    fn run(&mut self, txn: &WriteTransaction) -> TxResult<()> {
        self.value = Some((self.f)(txn)?);
        Ok(())
    }

    fn flush(&self) -> bool {
        self.flush
    }

    fn answer(self: Box<Self>, result: Result<()>) {
        let Write { value, reply, .. } = *self;
        let answer = result.and_then(|()| {
            value.ok_or_else(|| StoreError::Unavailable("write answered before it ran".into()))
        });
        // A caller that stopped waiting needs no answer.
        let _ = reply.send(answer);
    }
}

impl Batcher {
    /// Queues `f`, runs it with the writes queued meanwhile, and answers
    /// once it is committed, and if `flush`, on disk.
    pub(crate) async fn write<T, F>(
        self: &Arc<Self>,
        handle: &Arc<Handle>,
        f: F,
        flush: bool,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&WriteTransaction) -> TxResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Write {
            f,
            value: None,
            flush,
            reply,
        });
        let start = {
            let mut queue = self.lock();
            queue.jobs.push(job);
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            let (batcher, handle) = (Arc::clone(self), Arc::clone(handle));
            tokio::task::spawn_blocking(move || batcher.drain(handle));
        }
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the store stopped before the write ran".into()))?
    }

    /// Waits until no task is committing, so the file closes when the store
    /// that owns this queue is dropped. A commit under way takes
    /// milliseconds.
    pub(crate) fn wait_idle(&self) {
        let queue = self.lock();
        let _idle = self
            .idle
            .wait_while(queue, |queue| queue.running)
            .unwrap_or_else(PoisonError::into_inner);
    }

    /// Commits batches until the queue is empty.
    fn drain(&self, handle: Arc<Handle>) {
        let _panic = Panicking(self);
        loop {
            let jobs: Vec<_> = {
                let mut queue = self.lock();
                if queue.jobs.is_empty() {
                    // Under the lock, so a write queued from now on starts
                    // a task of its own, and whoever waits for the queue
                    // to go idle finds the file let go.
                    queue.running = false;
                    drop(handle);
                    self.idle.notify_all();
                    return;
                }
                let rest = queue.jobs.len().saturating_sub(MAX_BATCH);
                let mut jobs = std::mem::take(&mut queue.jobs);
                queue.jobs = jobs.split_off(jobs.len() - rest);
                jobs
            };
            commit(&handle, jobs);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Never held while anything can panic halfway through a change.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// If a write panics, marks the queue as having no task, so the next
/// write starts one.
struct Panicking<'a>(&'a Batcher);

impl Drop for Panicking<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().running = false;
            self.0.idle.notify_all();
        }
    }
}

/// Runs `jobs` in as few transactions as it can and answers every job. A
/// write that fails splits its batch: the writes before it, which ran
/// cleanly, run again and commit on their own, then the writes after it;
/// so a failure costs one rerun of the writes before it, never more.
fn commit(handle: &Handle, jobs: Vec<Box<dyn Job>>) {
    // The batch to run next is last.
    let mut batches = vec![jobs];
    let done = handle.run(|open| {
        while let Some(mut batch) = batches.pop() {
            match attempt(open, &mut batch) {
                Ok(None) => {}
                Ok(Some((failed, error))) => {
                    let after = batch.split_off(failed + 1);
                    if let Some(job) = batch.pop() {
                        job.answer(Err(error));
                    }
                    batches.push(after);
                    batches.push(batch);
                }
                Err(e) => {
                    batches.push(batch);
                    return Err(e);
                }
            }
        }
        Ok(())
    });
    if let Err(e) = done {
        for job in batches.into_iter().flatten() {
            job.answer(Err(e.error.clone()));
        }
    }
}

/// Runs `jobs` in one transaction and, if all succeed, commits it and
/// answers them. If one fails, aborts the transaction and returns which
/// and why, answering none. On an error, `jobs` holds those still to be
/// answered.
fn attempt(open: &Open, jobs: &mut Vec<Box<dyn Job>>) -> TxResult<Option<(usize, StoreError)>> {
    if jobs.is_empty() {
        return Ok(None);
    }
    let (started, txn) = open.group.begin(&open.db)?;
    for (i, job) in jobs.iter_mut().enumerate() {
        match job.run(&txn) {
            Ok(()) => {}
            Err(e) if e.io => return Err(e),
            // Dropping the transaction aborts it.
            Err(e) => return Ok(Some((i, e.error))),
        }
    }
    let written = started.commit(txn)?;
    let (flushed, committed): (Vec<_>, Vec<_>) = std::mem::take(jobs)
        .into_iter()
        .partition(|job| job.flush());
    for job in committed {
        job.answer(Ok(()));
    }
    *jobs = flushed;
    if !jobs.is_empty() {
        open.group
            .flush_through(&open.db, written)
            .map_err(flush_failed)?;
    }
    for job in std::mem::take(jobs) {
        job.answer(Ok(()));
    }
    Ok(None)
}

//! The bounded queue of frames from a session to its transport.
//!
//! A plain deque behind a mutex rather than a channel: an idle session's
//! queue is one small allocation and holds no buffer, where a tokio
//! channel keeps a block of slots and cache-line-padded state (about
//! 800 bytes) for as long as it lives. The deque's buffer is released
//! whenever the queue drains after a burst. The mutex is only held to
//! push or pop, never across an await.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use futures::Stream;
use natter_proto::v1::{ServerFrame, server_frame};

/// A drained queue keeps a buffer up to this many frames; a larger one is
/// given back.
const KEPT_WHEN_EMPTY: usize = 8;

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The transport is gone: the device disconnected.
    Gone,
    /// The queue is full: the device reads too slowly.
    Full,
}

#[derive(Debug)]
struct Queue {
    frames: VecDeque<Box<ServerFrame>>,
    capacity: usize,
    senders: usize,
    receiver_alive: bool,
    /// The transport, waiting for a frame.
    receiver: Option<Waker>,
    /// The session, waiting for room.
    room: Option<Waker>,
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The sending end, held by the session.
#[derive(Debug)]
pub(crate) struct Outbound {
    queue: Arc<Mutex<Queue>>,
}

/// The receiving end, drained by the transport.
#[derive(Debug)]
pub(crate) struct Frames {
    queue: Arc<Mutex<Queue>>,
}

pub(crate) fn channel(capacity: usize) -> (Outbound, Frames) {
    let queue = Arc::new(Mutex::new(Queue {
        frames: VecDeque::new(),
        capacity: capacity.max(1),
        senders: 1,
        receiver_alive: true,
        receiver: None,
        room: None,
    }));
    (
        Outbound {
            queue: queue.clone(),
        },
        Frames { queue },
    )
}

impl Outbound {
    /// Queues a frame without waiting.
    pub(crate) fn push(&self, frame: server_frame::Frame) -> Result<(), Refused> {
        let mut queue = lock(&self.queue);
        if !queue.receiver_alive {
            return Err(Refused::Gone);
        }
        if queue.frames.len() >= queue.capacity {
            return Err(Refused::Full);
        }
        queue
            .frames
            .push_back(Box::new(ServerFrame { frame: Some(frame) }));
        if let Some(receiver) = queue.receiver.take() {
            receiver.wake();
        }
        Ok(())
    }

    /// Waits until `room` more frames fit in the queue (at most its
    /// capacity). Fails when the transport is gone.
    pub(crate) async fn room_for(&self, room: usize) -> Result<(), Refused> {
        poll_fn(|cx| {
            let mut queue = lock(&self.queue);
            if !queue.receiver_alive {
                return Poll::Ready(Err(Refused::Gone));
            }
            let room = room.clamp(1, queue.capacity);
            if queue.capacity - queue.frames.len() >= room {
                return Poll::Ready(Ok(()));
            }
            queue.room = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

impl Clone for Outbound {
    fn clone(&self) -> Self {
        lock(&self.queue).senders += 1;
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        let mut queue = lock(&self.queue);
        queue.senders -= 1;
        if queue.senders == 0
            && let Some(receiver) = queue.receiver.take()
        {
            receiver.wake();
        }
    }
}

impl Frames {
    /// The next frame; `None` once every sender is gone and the queue is
    /// empty.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Box<ServerFrame>>> {
        let mut queue = lock(&self.queue);
        match queue.frames.pop_front() {
            Some(frame) => {
                if queue.frames.is_empty() && queue.frames.capacity() > KEPT_WHEN_EMPTY {
                    queue.frames = VecDeque::new();
                }
                if let Some(room) = queue.room.take() {
                    room.wake();
                }
                Poll::Ready(Some(frame))
            }
            None if queue.senders == 0 => Poll::Ready(None),
            None => {
                queue.receiver = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    pub(crate) async fn recv(&mut self) -> Option<Box<ServerFrame>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl Stream for Frames {
    type Item = Box<ServerFrame>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx)
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        let mut queue = lock(&self.queue);
        queue.receiver_alive = false;
        queue.frames = VecDeque::new();
        if let Some(room) = queue.room.take() {
            room.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use natter_proto::v1::Pong;

    use super::*;

    fn pong(nonce: u64) -> server_frame::Frame {
        server_frame::Frame::Pong(Pong { nonce })
    }

    fn nonce(frame: Option<Box<ServerFrame>>) -> u64 {
        match frame.and_then(|f| f.frame) {
            Some(server_frame::Frame::Pong(pong)) => pong.nonce,
            other => panic!("expected a pong, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn frames_come_out_in_order_until_full() {
        let (out, mut frames) = channel(2);
        assert_eq!(out.push(pong(1)), Ok(()));
        assert_eq!(out.push(pong(2)), Ok(()));
        assert_eq!(out.push(pong(3)), Err(Refused::Full));
        assert_eq!(nonce(frames.recv().await), 1);
        assert_eq!(out.push(pong(4)), Ok(()));
        assert_eq!(nonce(frames.recv().await), 2);
        assert_eq!(nonce(frames.recv().await), 4);
    }

    #[tokio::test]
    async fn the_receiver_wakes_for_a_frame_and_ends_with_the_last_sender() {
        let (out, mut frames) = channel(4);
        let second = out.clone();
        let receiving = tokio::spawn(async move {
            let first = nonce(frames.recv().await);
            (first, frames.recv().await.is_none())
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        out.push(pong(7)).unwrap();
        drop(out);
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(second);
        assert_eq!(receiving.await.unwrap(), (7, true));
    }

    #[tokio::test]
    async fn waiting_for_room_ends_when_frames_are_taken_or_the_receiver_goes() {
        let (out, mut frames) = channel(2);
        out.push(pong(1)).unwrap();
        out.push(pong(2)).unwrap();
        let waiting = {
            let out = out.clone();
            tokio::spawn(async move { out.room_for(2).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished());
        frames.recv().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished(), "one slot is not room for two");
        frames.recv().await;
        assert_eq!(waiting.await.unwrap(), Ok(()));

        out.push(pong(3)).unwrap();
        out.push(pong(4)).unwrap();
        let waiting = {
            let out = out.clone();
            tokio::spawn(async move { out.room_for(1).await })
        };
        drop(frames);
        assert_eq!(waiting.await.unwrap(), Err(Refused::Gone));
        assert_eq!(out.push(pong(5)), Err(Refused::Gone));
    }

    #[tokio::test]
    async fn a_drained_queue_gives_its_buffer_back() {
        let (out, mut frames) = channel(64);
        for n in 0..64 {
            out.push(pong(n)).unwrap();
        }
        for _ in 0..64 {
            frames.recv().await;
        }
        assert_eq!(lock(&out.queue).frames.capacity(), 0);
    }
}

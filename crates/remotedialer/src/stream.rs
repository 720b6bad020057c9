//! One virtual connection's shared state: the buffer of bytes the server sent that the local
//! target has not taken yet, the Pause/Resume decisions for that buffer, and whether the server
//! has paused our sending.
//!
//! The websocket reader only ever appends to the buffer (never waits), so a slow target can
//! only slow down its own stream.
//!
//! # Memory bounds
//!
//! Upstream's read buffer (`readbuffer.go`) sends Pause above 2 MiB but keeps accepting Data
//! without limit, so a server that ignores Pause can make it hold any amount. Here the bytes
//! waiting for targets are bounded twice, with [`FlowControl`]'s defaults:
//!
//! - per stream: once a Data frame takes a stream's buffer above `overflow_limit` (16 MiB),
//!   that buffer is dropped and the stream closed with `Error("receive buffer overflow")`. A
//!   buffer therefore never holds more than `overflow_limit` bytes after a frame was handled;
//!   the frame itself is already in memory when it is counted, so the momentary peak is
//!   `overflow_limit` plus one frame (at most the client's `max_frame_size`).
//! - per session: all of a session's stream buffers together are held under
//!   `session_buffer_limit` (64 MiB) the same way: a frame that takes the total above it makes
//!   the session close its stream with the largest buffer. That stream includes the one the
//!   frame went to, so shedding frees at least the frame's size and the total never grows
//!   while above the limit: the session holds at most `session_buffer_limit` plus one frame.
//!
//! A server that obeys Pause never gets near either: it stops sending at `pause_above`
//! (2 MiB) plus whatever was in flight, and only a stalled target lets a buffer fill at all.

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Buffer limits per stream and per session, and the dial timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowControl {
    /// Send Pause once more than this many bytes wait for the target (upstream: 2 MiB).
    pub pause_above: usize,
    /// Send Resume once the waiting bytes drop below this (upstream: 256 KiB).
    pub resume_below: usize,
    /// A server that keeps sending this much past a Pause ignores flow control: the stream
    /// is closed with an Error so memory stays bounded (upstream has no such limit).
    pub overflow_limit: usize,
    /// Bytes all streams of one session may hold for their targets together; above it the
    /// stream with the largest buffer is closed with an Error (upstream has no such limit).
    pub session_buffer_limit: usize,
    /// Bytes read from a target per Data frame (upstream copies through 32 KiB buffers).
    pub read_chunk: usize,
    /// How long dialing a target may take before the stream gets an Error.
    pub dial_timeout: Duration,
}

impl Default for FlowControl {
    fn default() -> Self {
        Self {
            pause_above: 2 << 20,
            resume_below: 256 << 10,
            overflow_limit: 16 << 20,
            // Room for four streams at the overflow limit, or 32 at the Pause mark: far more
            // than a session needs when its targets (a local apiserver, an in-process handler)
            // read as fast as the tunnel delivers.
            session_buffer_limit: 64 << 20,
            read_chunk: 32 << 10,
            dial_timeout: Duration::from_secs(60),
        }
    }
}

/// How the server ended a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RemoteEnd {
    /// `Error(EOF)`: a normal close.
    Eof,
    /// Any other Error text, or a local reason such as a buffer overflow.
    Failed(String),
}

/// What [`StreamShared::offer`] asks the caller to do next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OfferOutcome {
    Buffered,
    /// The buffer just crossed `pause_above`: send Pause for this stream.
    SendPause,
    /// The buffer passed `overflow_limit`: close the stream.
    Overflow,
}

/// The next thing the target-writing side of a stream gets.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// Bytes to write; `send_resume` asks the caller to send Resume for this stream.
    Chunk {
        bytes: Bytes,
        send_resume: bool,
    },
    End(RemoteEnd),
}

#[derive(Default)]
struct InboundQueue {
    chunks: VecDeque<Bytes>,
    buffered: usize,
    pause_sent: bool,
    end: Option<RemoteEnd>,
}

/// State shared between the session's reader and the task that splices one stream.
pub(crate) struct StreamShared {
    pub(crate) conn_id: i64,
    limits: FlowControl,
    queue: Mutex<InboundQueue>,
    queue_changed: Notify,
    remote_paused: watch::Sender<bool>,
    /// Bytes buffered by every stream of the session, this one included.
    session_buffered: Arc<AtomicUsize>,
}

impl StreamShared {
    pub(crate) fn new(
        conn_id: i64,
        limits: FlowControl,
        session_buffered: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            conn_id,
            limits,
            queue: Mutex::new(InboundQueue::default()),
            queue_changed: Notify::new(),
            remote_paused: watch::Sender::new(false),
            session_buffered,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InboundQueue> {
        // A panic while holding this lock cannot leave the queue inconsistent (every
        // critical section is a few field updates), so a poisoned lock is still usable.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends Data from the server. Never waits.
    pub(crate) fn offer(&self, bytes: Bytes) -> OfferOutcome {
        let outcome = {
            let mut queue = self.lock();
            if queue.end.is_some() || bytes.is_empty() {
                return OfferOutcome::Buffered;
            }
            queue.buffered += bytes.len();
            self.session_buffered
                .fetch_add(bytes.len(), Ordering::Relaxed);
            queue.chunks.push_back(bytes);
            if queue.buffered > self.limits.overflow_limit {
                self.drop_buffer(&mut queue, "receive buffer overflow: peer ignored Pause");
                OfferOutcome::Overflow
            } else if queue.buffered > self.limits.pause_above && !queue.pause_sent {
                queue.pause_sent = true;
                OfferOutcome::SendPause
            } else {
                OfferOutcome::Buffered
            }
        };
        self.queue_changed.notify_one();
        outcome
    }

    /// Drops everything buffered and ends the stream, so its memory is freed at once.
    fn drop_buffer(&self, queue: &mut InboundQueue, reason: &str) {
        self.session_buffered
            .fetch_sub(queue.buffered, Ordering::Relaxed);
        queue.chunks.clear();
        queue.buffered = 0;
        queue.end = Some(RemoteEnd::Failed(reason.into()));
    }

    /// Ends the stream because its session holds too much: the buffer is dropped at once.
    pub(crate) fn shed(&self) {
        self.drop_buffer(&mut self.lock(), "session receive buffer limit reached");
        self.queue_changed.notify_one();
    }

    /// Records that the stream ended from the server's side (or the session's). Bytes
    /// already buffered are still delivered first, as upstream's read buffer does.
    pub(crate) fn end(&self, end: RemoteEnd) {
        {
            let mut queue = self.lock();
            if queue.end.is_none() {
                queue.end = Some(end);
            }
        }
        self.queue_changed.notify_one();
    }

    /// Waits for the next chunk for the target, or the end of the stream.
    pub(crate) async fn next_inbound(&self) -> Inbound {
        loop {
            let notified = self.queue_changed.notified();
            {
                let mut queue = self.lock();
                if let Some(bytes) = queue.chunks.pop_front() {
                    queue.buffered -= bytes.len();
                    self.session_buffered
                        .fetch_sub(bytes.len(), Ordering::Relaxed);
                    let send_resume = queue.pause_sent && queue.buffered < self.limits.resume_below;
                    if send_resume {
                        queue.pause_sent = false;
                    }
                    return Inbound::Chunk { bytes, send_resume };
                }
                if let Some(end) = &queue.end {
                    return Inbound::End(end.clone());
                }
            }
            notified.await;
        }
    }

    pub(crate) fn set_remote_paused(&self, paused: bool) {
        self.remote_paused.send_replace(paused);
    }

    /// Waits until the server has not paused this stream.
    pub(crate) async fn wait_remote_resumed(&self) {
        let mut paused = self.remote_paused.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = paused.wait_for(|paused| !paused).await;
    }

    /// Bytes waiting for the target.
    pub(crate) fn buffered(&self) -> usize {
        self.lock().buffered
    }
}

impl Drop for StreamShared {
    /// A stream can end with bytes its target never took; they leave the session's count too.
    fn drop(&mut self) {
        let queue = self
            .queue
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.session_buffered
            .fetch_sub(queue.buffered, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> FlowControl {
        FlowControl {
            pause_above: 100,
            resume_below: 20,
            overflow_limit: 1000,
            ..FlowControl::default()
        }
    }

    #[tokio::test]
    async fn pauses_once_above_limit_and_resumes_once_below() {
        let stream = StreamShared::new(2, limits(), Arc::default());
        assert_eq!(
            stream.offer(Bytes::from(vec![0; 60])),
            OfferOutcome::Buffered
        );
        assert_eq!(
            stream.offer(Bytes::from(vec![0; 60])),
            OfferOutcome::SendPause
        );
        assert_eq!(
            stream.offer(Bytes::from(vec![0; 10])),
            OfferOutcome::Buffered
        );
        let mut resumes = 0;
        for _ in 0..3 {
            match stream.next_inbound().await {
                Inbound::Chunk { send_resume, .. } => resumes += usize::from(send_resume),
                Inbound::End(end) => panic!("unexpected end {end:?}"),
            }
        }
        assert_eq!(resumes, 1);
        assert_eq!(stream.buffered(), 0);
    }

    #[tokio::test]
    async fn delivers_buffered_bytes_before_the_end() {
        let stream = StreamShared::new(2, limits(), Arc::default());
        stream.offer(Bytes::from_static(b"abc"));
        stream.end(RemoteEnd::Eof);
        assert!(matches!(
            stream.next_inbound().await,
            Inbound::Chunk { bytes, .. } if bytes == "abc"
        ));
        assert!(matches!(
            stream.next_inbound().await,
            Inbound::End(RemoteEnd::Eof)
        ));
    }

    #[tokio::test]
    async fn overflow_drops_the_buffer_and_ends_the_stream() {
        let stream = StreamShared::new(2, limits(), Arc::default());
        stream.offer(Bytes::from(vec![0; 600]));
        assert_eq!(
            stream.offer(Bytes::from(vec![0; 600])),
            OfferOutcome::Overflow
        );
        assert_eq!(stream.buffered(), 0);
        assert!(matches!(
            stream.next_inbound().await,
            Inbound::End(RemoteEnd::Failed(_))
        ));
    }

    #[tokio::test]
    async fn the_session_count_follows_every_buffered_byte() {
        let session = Arc::new(AtomicUsize::new(0));
        let first = StreamShared::new(2, limits(), session.clone());
        let second = StreamShared::new(4, limits(), session.clone());
        first.offer(Bytes::from(vec![0; 50]));
        second.offer(Bytes::from(vec![0; 30]));
        assert_eq!(session.load(Ordering::Relaxed), 80);
        assert!(matches!(first.next_inbound().await, Inbound::Chunk { .. }));
        assert_eq!(session.load(Ordering::Relaxed), 30);
        second.offer(Bytes::from(vec![0; 20]));
        second.shed();
        assert_eq!(session.load(Ordering::Relaxed), 0);
        assert!(matches!(
            second.next_inbound().await,
            Inbound::End(RemoteEnd::Failed(_))
        ));
        // Overflow and a stream dropped with bytes still waiting both give their share back.
        first.offer(Bytes::from(vec![0; 1200]));
        first.offer(Bytes::from(vec![0; 1]));
        assert_eq!(session.load(Ordering::Relaxed), 0);
        let third = StreamShared::new(6, limits(), session.clone());
        third.offer(Bytes::from(vec![0; 70]));
        assert_eq!(session.load(Ordering::Relaxed), 70);
        drop(third);
        assert_eq!(session.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn remote_pause_blocks_until_resume() {
        let stream = std::sync::Arc::new(StreamShared::new(2, limits(), Arc::default()));
        stream.set_remote_paused(true);
        let waiter = tokio::spawn({
            let stream = stream.clone();
            async move { stream.wait_remote_resumed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        stream.set_remote_paused(false);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("resumed in time")
            .expect("waiter ran");
    }
}

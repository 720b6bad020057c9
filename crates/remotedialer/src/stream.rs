//! One virtual connection's shared state: the buffer of bytes the server sent that the local
//! target has not taken yet, the Pause/Resume decisions for that buffer, and whether the server
//! has paused our sending.
//!
//! The websocket reader only ever appends to the buffer (never waits), so a slow target can
//! only slow down its own stream.

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Per-stream buffer limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowControl {
    /// Send Pause once more than this many bytes wait for the target (upstream: 2 MiB).
    pub pause_above: usize,
    /// Send Resume once the waiting bytes drop below this (upstream: 256 KiB).
    pub resume_below: usize,
    /// A server that keeps sending this much past a Pause ignores flow control: the stream
    /// is closed with an Error so memory stays bounded.
    pub overflow_limit: usize,
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
}

impl StreamShared {
    pub(crate) fn new(conn_id: i64, limits: FlowControl) -> Self {
        Self {
            conn_id,
            limits,
            queue: Mutex::new(InboundQueue::default()),
            queue_changed: Notify::new(),
            remote_paused: watch::Sender::new(false),
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
            queue.chunks.push_back(bytes);
            if queue.buffered > self.limits.overflow_limit {
                queue.chunks.clear();
                queue.buffered = 0;
                queue.end = Some(RemoteEnd::Failed(
                    "receive buffer overflow: peer ignored Pause".into(),
                ));
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

    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.lock().buffered
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
        let stream = StreamShared::new(2, limits());
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
        let stream = StreamShared::new(2, limits());
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
        let stream = StreamShared::new(2, limits());
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
    async fn remote_pause_blocks_until_resume() {
        let stream = std::sync::Arc::new(StreamShared::new(2, limits()));
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

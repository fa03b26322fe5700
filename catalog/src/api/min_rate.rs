//! Request bodies that must keep arriving: a body slower than `http.body_min_bytes_per_sec`
//! (after `http.body_grace_ms`) ends with [`TooSlow`], which the ingest endpoint answers 408.
//! The clock starts when the server first reads the body, so time a handler spends before
//! reading (waiting for a slot, checking the token) is never the client's.
//! Without it, a client that sends a byte now and then holds a request slot, and its memory,
//! for as long as it likes.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// A body that did not arrive at the minimum rate.
#[derive(Debug, Clone, Copy)]
pub struct TooSlow {
    pub received: u64,
    pub elapsed: Duration,
    pub min_bytes_per_sec: u64,
}

impl std::fmt::Display for TooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "request body arrived too slowly: {} bytes in {:.1} s; the minimum rate is {} bytes/s \
             (http.body_min_bytes_per_sec)",
            self.received,
            self.elapsed.as_secs_f64(),
            self.min_bytes_per_sec
        )
    }
}

impl std::error::Error for TooSlow {}

/// Whether a body error is [`TooSlow`].
pub fn too_slow(e: &axum::Error) -> Option<TooSlow> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<TooSlow>() {
            return Some(*t);
        }
        source = s.source();
    }
    None
}

/// The body of a request, cut off when it arrives slower than the minimum rate.
pub struct MinRate {
    inner: Body,
    received: u64,
    /// When the body was first read, and the timer set from then on.
    started: Option<(Instant, Pin<Box<Sleep>>)>,
    min_bytes_per_sec: u64,
    grace: Duration,
}

impl MinRate {
    /// Wraps `inner`; a rate of 0 turns the check off.
    pub fn wrap(inner: Body, min_bytes_per_sec: u64, grace: Duration) -> Body {
        if min_bytes_per_sec == 0 {
            return inner;
        }
        Body::new(MinRate {
            inner,
            received: 0,
            started: None,
            min_bytes_per_sec,
            grace,
        })
    }

    /// When the bytes received so far, since the first read at `start`, are due to be followed
    /// by more.
    fn due(&self, start: Instant) -> Instant {
        start
            + self.grace
            + Duration::from_secs_f64(self.received as f64 / self.min_bytes_per_sec as f64)
    }
}

impl http_body::Body for MinRate {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let start = match &this.started {
            Some((start, _)) => *start,
            None => {
                let now = Instant::now();
                let timer = Box::pin(tokio::time::sleep_until(now + this.grace));
                this.started = Some((now, timer));
                now
            }
        };
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    let due = this.due(start);
                    if let Some((_, timer)) = &mut this.started {
                        timer.as_mut().reset(due);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                let Some((_, timer)) = &mut this.started else {
                    return Poll::Pending;
                };
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(TooSlow {
                        received: this.received,
                        elapsed: start.elapsed(),
                        min_bytes_per_sec: this.min_bytes_per_sec,
                    })))),
                    Poll::Pending => Poll::Pending,
                }
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_that_stalls_past_the_grace_ends_too_slow() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let stream = tokio_stream_of(rx);
        let body = MinRate::wrap(Body::from_stream(stream), 1000, Duration::from_millis(200));
        tx.send(Ok(Bytes::from(vec![b'x'; 100]))).await.unwrap();
        let read = tokio::spawn(axum::body::to_bytes(body, 1 << 20));
        // 100 bytes buy a tenth of a second past the grace; nothing more comes.
        let e = tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("the read ends by itself")
            .unwrap()
            .unwrap_err();
        let slow = too_slow(&e).expect("the error is TooSlow");
        assert_eq!(slow.received, 100);
        assert!(slow.elapsed < Duration::from_secs(2), "{slow}");
        drop(tx);
    }

    #[tokio::test]
    async fn the_clock_starts_when_the_server_reads() {
        let body = MinRate::wrap(Body::from("{}"), 1000, Duration::from_millis(100));
        // The handler is busy for longer than the grace before it reads: not the client's fault.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            axum::body::to_bytes(body, 1024).await.unwrap().as_ref(),
            b"{}"
        );
    }

    #[tokio::test]
    async fn a_body_at_the_rate_arrives_whole() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let body = MinRate::wrap(
            Body::from_stream(tokio_stream_of(rx)),
            1000,
            Duration::from_millis(200),
        );
        let read = tokio::spawn(axum::body::to_bytes(body, 1 << 20));
        for _ in 0..5 {
            tx.send(Ok(Bytes::from(vec![b'x'; 300]))).await.unwrap();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        drop(tx);
        assert_eq!(read.await.unwrap().unwrap().len(), 1500);
    }

    fn tokio_stream_of(
        mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}

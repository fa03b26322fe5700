//! The HTTP port's connections: at most `http.max_connections` open (more wait in the kernel's
//! backlog), headers within `http.header_read_timeout_ms`, no connection idle past
//! `http.keep_alive_idle_secs`, and request bodies at `http.body_min_bytes_per_sec` at least
//! (see `floe_catalog::api::min_rate`). A client that opens connections and never finishes them
//! holds each for seconds, not forever.
//!
//! With TLS (`crate::tls`), the handshake must end within the header timeout too.
//!
//! On a stop, the port stops accepting, each connection finishes the request it serves and
//! closes; [`Listener::serve`] returns once they all have.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use floe_catalog::api::min_rate::MinRate;
use floe_catalog::config::HttpConfig;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::tls::Tls;

/// Serves `app` on `listener` (over TLS with `tls`) with the limits of `config` until `stop`
/// fires.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: HttpConfig,
    tls: Option<Tls>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let open = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let mut connections = JoinSet::new();
    let mut stopping = stop.clone();
    loop {
        // Reap finished connections as we go.
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = open.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = stopped(&mut stopping) => break,
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, don't spin.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stopping) => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let config = config.clone();
        let stop = stop.clone();
        let tls = tls.as_ref().map(Tls::acceptor);
        connections.spawn(async move {
            match tls {
                None => connection(stream, app, &config, false, stop).await,
                Some(acceptor) => {
                    let limit = Duration::from_millis(config.header_read_timeout_ms);
                    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => connection(stream, app, &config, true, stop).await,
                        // Plain HTTP on the TLS port, a bad handshake, or none in time.
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake not done in time"),
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    app: Router,
    config: &HttpConfig,
    https: bool,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
        started,
    });
    let (rate, grace) = (
        config.body_min_bytes_per_sec,
        Duration::from_millis(config.body_grace_ms),
    );
    let service = tower::service_fn(move |req: axum::http::Request<hyper::body::Incoming>| {
        let mut req = req.map(|b| MinRate::wrap(Body::new(b), rate, grace));
        if https {
            // The URLs the server hands out (Trino's nextUri) name the scheme it was reached by;
            // on this port that is this one, whatever a client claims.
            req.headers_mut().insert(
                "x-forwarded-proto",
                axum::http::HeaderValue::from_static("https"),
            );
        }
        app.clone().oneshot(req)
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.header_read_timeout_ms))
        .keep_alive(true)
        .serve_connection(io, TowerToHyperService::new(service));
    tokio::pin!(conn);
    let idle = Duration::from_secs(config.keep_alive_idle_secs);
    let mut check = tokio::time::interval(
        idle.min(Duration::from_secs(1))
            .max(Duration::from_millis(100)),
    );
    let mut closing = false;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "connection ended");
                }
                return;
            }
            _ = stopped(&mut stop), if !closing => {
                // Finish the request in flight, then close.
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = check.tick(), if !closing => {
                let last = Duration::from_millis(activity.load(Ordering::Relaxed));
                if started.elapsed().saturating_sub(last) >= idle {
                    // No byte either way for the idle time: close once the request in
                    // flight (if any) is answered.
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// Resolves once the stop is asked for.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A connection that notes when bytes last went either way.
struct Watched<S> {
    inner: S,
    /// Milliseconds after `started` of the last read or write.
    activity: Arc<AtomicU64>,
    started: Instant,
}

impl<S> Watched<S> {
    fn touch(&self) {
        self.activity
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

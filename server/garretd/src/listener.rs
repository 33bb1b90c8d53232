//! The HTTP listener: hyper's server (HTTP/1 and cleartext HTTP/2) with the limits a public
//! server needs (docs/limits.md): a head-read timeout, an idle timeout, a cap on connections
//! served at once, a cap on HTTP/2 streams per connection, and back-off when accept fails
//! (e.g. out of file descriptors) instead of spinning on it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::metrics::METRICS;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_concurrent_streams: u32,
}

const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `app` until `shutdown` resolves, then stops accepting, asks every connection to
/// finish its requests and close, and returns once all have.
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    let mut backoff = MIN_BACKOFF;
    loop {
        // At the cap, stop accepting: new clients wait in the backlog, not in our memory.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut shutdown => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => {
                backoff = MIN_BACKOFF;
                // A body streamed in pieces with pauses (a pull-through NAR) must not wait
                // for Nagle and the client's delayed ACK (40 ms on Linux) at each pause.
                let _ = tcp.set_nodelay(true);
                tcp
            }
            Err(e) => {
                METRICS.http_accept_errors.inc();
                // One line per streak, then at most one a second while it lasts.
                if backoff == MIN_BACKOFF || backoff == MAX_BACKOFF {
                    tracing::warn!(error = %e, "accept failed; backing off");
                }
                drop(permit);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = &mut shutdown => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        tokio::spawn(serve_one(
            builder.clone(),
            app.clone(),
            tcp,
            permit,
            stop_rx.clone(),
            limits,
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a permit until it has closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
}

/// Counts an open connection for `/metrics` while alive.
struct Open;

impl Open {
    fn new() -> Open {
        METRICS.http_connections_open.inc();
        Open
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        METRICS.http_connections_open.dec();
    }
}

async fn serve_one(
    builder: auto::Builder<TokioExecutor>,
    app: Router,
    tcp: TcpStream,
    _permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
    limits: Limits,
) {
    let _open = Open::new();
    // Until its first byte, hyper gives a connection no deadline (it is still telling
    // HTTP/1 from HTTP/2): a client silent for the whole head timeout is closed here.
    let mut first = [0u8; 1];
    match tokio::time::timeout(limits.header_read_timeout, tcp.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return,
    }
    let idle = limits.idle_timeout;
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: tcp,
        activity: activity.clone(),
    });
    let conn = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(app));
    tokio::pin!(conn);
    let mut stopping = *stop.borrow();
    if stopping {
        conn.as_mut().graceful_shutdown();
    }
    let mut asked_idle = false;
    loop {
        let deadline = activity.last() + idle;
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(deadline) => {
                if activity.last() + idle > Instant::now() {
                    continue; // bytes moved meanwhile
                }
                if asked_idle {
                    tracing::debug!("dropping a connection that moved no bytes after being asked to close");
                    return;
                }
                // Requests in flight finish; an idle HTTP/1 connection closes, HTTP/2 gets GOAWAY.
                asked_idle = true;
                conn.as_mut().graceful_shutdown();
                activity.touch();
            }
        }
    }
}

/// When bytes last moved on a connection, in milliseconds since it opened.
struct Activity {
    opened: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A TCP stream that records when it last read or wrote something.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        res
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

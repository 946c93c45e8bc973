//! Binding and running the HTTP server: hyper's HTTP/1.1 connection driver with
//! timeouts, a cap on open connections, and graceful shutdown.
//!
//! warp 0.4's own server (`warp::serve`) builds hyper without a timer, so hyper's header
//! read timeout never applies there: a client that sends an incomplete request head
//! (slowloris) holds its connection, and a task, forever. Here the routes are served
//! through [`warp::service`] on hyper directly, with
//!
//! - a header read timeout ([`HttpTimeouts::header_read`]), which in hyper also bounds
//!   the idle time of a keep-alive connection between requests;
//! - a write stall timeout ([`HttpTimeouts::write`]) on the socket;
//! - a maximum connection age ([`HttpTimeouts::max_age`]);
//! - at most [`HttpTimeouts::max_connections`] connections at once: the accept loop
//!   takes a slot before accepting, so extra connections wait in the listen backlog;
//! - graceful shutdown: stop accepting, close idle connections, let requests in
//!   progress finish within [`HttpTimeouts::drain`].
//!
//! Only HTTP/1.x is served (warp's server also took HTTP/2 with prior knowledge, which
//! no client of this service uses, and whose protocol sniffing has no timeout).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tokio_util::task::AbortOnDropHandle;

use super::routes;
use super::state::{HttpState, HttpTimeouts};

/// Largest request head (request line and headers) accepted; a larger one is answered
/// 431 by hyper and the connection closed.
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Largest read buffer of a connection (hyper's default is about 400 KiB). Bounds the
/// memory of a connection that pipelines requests; bodies are read in chunks of at
/// most this size whatever their limit.
const MAX_BUF_BYTES: usize = 64 * 1024;

/// Pause after an accept error that is not about one connection (file descriptors
/// exhausted): retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Why the HTTP server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Another process listens on the address.
    #[error(
        "address {addr} already in use (is another orchestratorm8 running? choose another --port)"
    )]
    AddrInUse {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// Binding failed for another reason (permission for ports below 1024, an
    /// address not on this machine...).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
}

/// Binds `addr` (port 0 picks a free port), starts serving on a task of its own, and
/// returns the bound address and a future that completes when the server has
/// stopped. When `shutdown` completes the server stops accepting, closes idle
/// connections and lets open requests finish for at most
/// [`HttpTimeouts::drain`](super::HttpTimeouts::drain). Dropping the returned future
/// stops the server, and every connection, at once. The limits of
/// [`HttpState::timeouts`] apply (module documentation).
pub async fn serve<S>(
    addr: SocketAddr,
    state: HttpState,
    shutdown: S,
) -> Result<(SocketAddr, BoxFuture<'static, ()>), HttpError>
where
    S: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| match source.kind() {
            io::ErrorKind::AddrInUse => HttpError::AddrInUse { addr },
            _ => HttpError::Bind { addr, source },
        })?;
    let local = listener
        .local_addr()
        .map_err(|source| HttpError::Bind { addr, source })?;
    let limits = state.timeouts;
    let drain = limits.drain;
    let shutdown = shutdown.boxed().shared();
    // Aborted when the serving future is dropped or finishes.
    let mut server = AbortOnDropHandle::new(tokio::spawn(run(
        listener,
        routes(state),
        limits,
        shutdown.clone(),
    )));
    tracing::info!(
        address = %local,
        max_connections = limits.max_connections,
        header_read_timeout = ?limits.header_read,
        "HTTP server listening"
    );
    let fut = async move {
        let drained = async {
            shutdown.await;
            tokio::time::sleep(drain).await;
        };
        tokio::select! {
            res = &mut server => match res {
                Ok(()) => tracing::info!(address = %local, "HTTP server stopped"),
                Err(e) => tracing::error!(address = %local, error = %e, "HTTP server task failed"),
            },
            () = drained => tracing::warn!(
                address = %local,
                ?drain,
                "HTTP server stopped with requests still open after the drain time"
            ),
        }
    };
    Ok((local, fut.boxed()))
}

type Shutdown = Shared<BoxFuture<'static, ()>>;
type Routes = warp::filters::BoxedFilter<(warp::reply::Response,)>;

/// The accept loop, then the wait for the open connections after `shutdown`.
async fn run(listener: TcpListener, routes: Routes, limits: HttpTimeouts, mut shutdown: Shutdown) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_BUF_BYTES)
        .keep_alive(true);
    let service = TowerToHyperService::new(warp::service(routes));
    // Dropped with this task (the server future dropped): every connection aborts.
    let mut connections = JoinSet::new();
    // Warned once per episode of saturation, not for every connection that waits.
    let mut saturated = false;
    loop {
        while connections.try_join_next().is_some() {}
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                saturated = false;
                slot
            }
            Err(_) => {
                if !saturated {
                    saturated = true;
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "HTTP connection limit reached: new connections wait until one closes"
                    );
                }
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                }
            }
        };
        let (stream, remote) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            res = listener.accept() => match res {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "HTTP accept failed; retrying in 1 s");
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                    }
                }
            },
        };
        let stream = WriteTimeout {
            inner: stream,
            limit: limits.write,
            stalled: None,
        };
        let conn = http.serve_connection(TokioIo::new(stream), service.clone());
        let stop = shutdown.clone();
        connections.spawn(async move {
            drive(conn, stop, limits, remote).await;
            drop(slot);
        });
    }
    drop(listener);
    tracing::debug!(
        open = connections.len(),
        "HTTP server stopped accepting; waiting for open connections"
    );
    while connections.join_next().await.is_some() {}
}

/// Serves one connection until the client closes it, a limit closes it, or shutdown:
/// at shutdown or at `max_age` it is shut down gracefully (an idle connection closes
/// at once, a request in progress is answered first), then dropped if that takes more
/// than `request` + `write`.
async fn drive<I, S>(
    conn: http1::Connection<I, S>,
    stop: Shutdown,
    limits: HttpTimeouts,
    remote: SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conn = std::pin::pin!(conn);
    let why = tokio::select! {
        res = conn.as_mut() => return ended(res, remote),
        () = stop => "shutdown",
        () = tokio::time::sleep(limits.max_age) => "connection age limit",
    };
    tracing::trace!(%remote, why, "HTTP connection closing gracefully");
    conn.as_mut().graceful_shutdown();
    match tokio::time::timeout(limits.request + limits.write, conn).await {
        Ok(res) => ended(res, remote),
        Err(_) => {
            tracing::debug!(%remote, why, "HTTP connection dropped: its request did not finish")
        }
    }
}

fn ended(res: hyper::Result<()>, remote: SocketAddr) {
    if let Err(e) = res {
        // Header timeouts, clients going away, stalled writes: the client's doing.
        tracing::debug!(%remote, error = %e, "HTTP connection closed on an error");
    }
}

/// Accept errors that concern one connection only (it was reset before being
/// accepted): accept the next one at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A socket whose writes fail with `TimedOut` after making no progress for `limit`
/// (the client does not read what it asked for). Reads are bounded elsewhere: the
/// request head by hyper's header read timeout, a body by the request time limit.
struct WriteTimeout {
    inner: TcpStream,
    limit: Duration,
    /// Started at the first write that could not proceed; cleared by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl WriteTimeout {
    fn watch<T>(&mut self, cx: &mut Context<'_>, res: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if res.is_ready() {
            self.stalled = None;
            return res;
        }
        let limit = self.limit;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stalled = None;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the client read nothing of the response for {limit:?}"),
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for WriteTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, res)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, res)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, res)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, res)
    }
}

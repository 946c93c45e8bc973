//! Binding and running the HTTP server with graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::routes;
use super::state::HttpState;

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
/// stopped. When `shutdown` completes the server stops accepting and lets open
/// requests finish for at most [`HttpTimeouts::drain`](super::HttpTimeouts::drain).
/// Dropping the returned future stops the server at once.
pub async fn serve<S>(
    addr: SocketAddr,
    state: HttpState,
    shutdown: S,
) -> Result<(SocketAddr, BoxFuture<'static, ()>), HttpError>
where
    S: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| match source.kind() {
            io::ErrorKind::AddrInUse => HttpError::AddrInUse { addr },
            _ => HttpError::Bind { addr, source },
        })?;
    let local = listener
        .local_addr()
        .map_err(|source| HttpError::Bind { addr, source })?;
    let drain = state.timeouts.drain;
    let shutdown = shutdown.boxed().shared();
    // Spawned here rather than awaited inside the returned future: warp 0.4's server
    // future is Send, but not provably so once held inside another async block
    // (a higher-ranked lifetime limitation of async fn in traits).
    let mut server = AbortOnDrop(tokio::spawn(
        warp::serve(routes(state))
            .incoming(listener)
            .graceful(shutdown.clone())
            .run(),
    ));
    tracing::info!(address = %local, "HTTP server listening");
    let fut = async move {
        let drained = async {
            shutdown.await;
            tokio::time::sleep(drain).await;
        };
        tokio::select! {
            res = &mut server.0 => match res {
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

/// Aborts the server task when the serving future is dropped or finishes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

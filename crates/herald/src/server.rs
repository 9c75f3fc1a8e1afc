//! Runs the hub's routes on a listener.
//!
//! The library takes an already-bound listener and a shutdown future, so
//! tests and embedders bind port 0 and stop the hub at will. A permit is
//! taken before each `accept` (the connection limit), every connection gets
//! a cancellation token that the dispatcher fires when the subscriber's
//! queue overflows, and shutdown drains with a deadline.

use std::future::Future;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::http::{router, ConnContext};
use crate::hub::Hub;

/// Binds a listener with a backlog large enough for bursts of reconnecting
/// browsers (the operating system's default of 128 drops them), and with
/// `SO_REUSEADDR` so a restarted hub can bind at once.
///
/// # Errors
/// The address cannot be bound.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Serves `hub` on `listener` until `shutdown` resolves, then ends every
/// stream, waits up to the configured grace period for connections to
/// finish, and closes the engine.
///
/// # Errors
/// Closing the engine failed (its data may not be flushed).
pub async fn serve(
    listener: TcpListener,
    hub: Hub,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let app = router(hub.clone());
    let permits = Arc::new(Semaphore::new(hub.config().max_connections));
    let tracker = TaskTracker::new();
    let stop = hub.shutdown_token().clone();
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p?,
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and similar: back off, keep serving.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let cancel = CancellationToken::new();
            let ctx = ConnContext {
                cancel: cancel.clone(),
                peer,
            };
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ctx.clone());
                app.clone().oneshot(req)
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new());
            builder.header_read_timeout(std::time::Duration::from_secs(30));
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                }
                () = cancel.cancelled() => {
                    tracing::debug!(%peer, "connection cancelled");
                }
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }

    drop(listener);
    tracing::info!("shutting down: ending streams");
    stop.cancel();
    tracker.close();
    if tokio::time::timeout(hub.config().shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("grace period over: dropping remaining connections");
    }
    hub.close().await?;
    tracing::info!("hub stopped");
    Ok(())
}

//! The accept loop: every connection from the [`LimitedListener`] is served
//! by hyper's HTTP/1 connection (WebSocket upgrades included) with a
//! header-read timeout — a client that does not finish its request head
//! within `server.header_read_timeout` is disconnected (slowloris: trickling
//! a byte now and then defeats the idle timeout, not this one). The router
//! sees the peer as `ConnectInfo<PeerAddr>`, as with
//! `into_make_service_with_connect_info`.
//!
//! At `shutdown` the loop stops accepting, idle keep-alive connections are
//! closed and in-flight requests finish (hyper's graceful shutdown); the
//! function returns when every connection is done.

use super::listener::{LimitedListener, PeerAddr};
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::time::Duration;
use tower::ServiceExt;

/// Serves `app` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    mut listener: LimitedListener,
    app: axum::Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    // Told to every connection at shutdown.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Each connection task holds a clone; `recv` returns `None` once all
    // are gone (mini-redis's drop-guard).
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout.max(Duration::from_millis(10)));
    loop {
        let (io, addr) = tokio::select! {
            conn = listener.accept() => conn,
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req| {
            req.extensions_mut().insert(ConnectInfo(PeerAddr(addr)));
            app.clone().oneshot(req)
        });
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let mut stop = stop_rx.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            let _done = done;
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                // Only ever changes to `true` (or the sender goes: also shutdown).
                _ = stop.changed() => {
                    // Finish the request in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                // Header-read timeouts, resets, malformed requests: the
                // client's doing, and frequent under attack.
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    // Stop accepting, then let every connection finish.
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_tx);
    let _ = done_rx.recv().await;
}

//! The HTTP/1.1 listener: accepts connections and serves the router on each, with a deadline
//! for request headers that `axum::serve` cannot set, and a graceful shutdown.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// Serves `app` on every connection `listener` accepts until `stopped` completes; then stops
/// accepting, lets each connection finish the request it is serving, closes the idle ones, and
/// returns once every connection has ended.
///
/// A client gets `header_timeout` to send a request's headers, counted from when its
/// connection is idle (new, or kept alive after a response): one that sends none, or trickles
/// them, is disconnected instead of holding a connection for ever.
pub(crate) async fn serve_connections(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    stopped: impl Future<Output = ()>,
) {
    let (closing, close) = watch::channel(false);
    // Every connection holds a sender; once all are dropped, every connection has ended.
    let (open, mut all_ended) = mpsc::channel::<()>(1);
    tokio::pin!(stopped);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, typically: wait for connections to end rather
                    // than spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stopped => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let (mut close, open) = (close.clone(), open.clone());
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let ended = tokio::select! {
                result = connection.as_mut() => Some(result),
                _ = close.wait_for(|closing| *closing) => None,
            };
            let result = match ended {
                Some(result) => result,
                None => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(open);
        });
    }
    drop(listener);
    let _ = closing.send(true);
    drop(open);
    let _ = all_ended.recv().await;
}

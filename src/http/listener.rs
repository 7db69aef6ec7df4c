//! The HTTP port's accept loop: plaintext and, on a node with TLS, HTTPS on the same
//! port (told apart by the first byte, a TLS handshake record), a bounded number of
//! connections (when all are taken the oldest is closed, so a flood of idle
//! connections cannot lock out a probe), a deadline for each request's head, and a
//! graceful end.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::data::Transport;
use crate::node::SharedNode;

/// Connections served at once (a probe or a scrape needs one, a client pool a few
/// dozen); one more closes the oldest.
const MAX_CONNECTIONS: usize = 1024;

/// Time for a TLS handshake, and for a request's head to arrive (slow clients hold
/// a connection slot no longer).
const HEAD_DEADLINE: Duration = Duration::from_secs(10);

/// How long open connections may finish their requests once the node stops: less
/// than the 2 s `serve` waits for this task before it closes the store.
const DRAIN: Duration = Duration::from_millis(1500);

/// Serves `app` on `listener` until `shutdown` completes, then lets open
/// connections finish (bounded).
pub async fn run(
    listener: TcpListener,
    app: Router,
    node: SharedNode,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Open::default());
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(error) => {
                // Out of file descriptors, say: wait instead of spinning.
                tracing::warn!(%error, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (id, closed) = open.enter();
        let (app, node, watcher, open) =
            (app.clone(), node.clone(), graceful.watcher(), open.clone());
        tokio::spawn(async move {
            tokio::select! {
                biased;
                () = closed.cancelled() => {}
                () = connection(tcp, app, node, watcher) => {}
            }
            open.leave(id);
        });
    }
    // New connections are refused from here on, not left waiting in the backlog.
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("HTTP connections still open after the drain; closing them");
    }
}

/// The connections open now, oldest first.
#[derive(Default)]
struct Open {
    conns: std::sync::Mutex<(u64, std::collections::BTreeMap<u64, CancellationToken>)>,
}

impl Open {
    /// Registers a new connection, closing the oldest when all places are taken;
    /// its id and what closes it.
    fn enter(&self) -> (u64, CancellationToken) {
        let mut guard = self
            .conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (next, conns) = &mut *guard;
        if conns.len() >= MAX_CONNECTIONS
            && let Some((_, oldest)) = conns.pop_first()
        {
            tracing::info!(
                open = MAX_CONNECTIONS,
                "HTTP connections all taken: closing the oldest"
            );
            oldest.cancel();
        }
        let id = *next;
        *next += 1;
        let token = CancellationToken::new();
        conns.insert(id, token.clone());
        (id, token)
    }

    fn leave(&self, id: u64) {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
            .remove(&id);
    }
}

async fn connection(tcp: TcpStream, app: Router, node: SharedNode, watcher: Watcher) {
    let _ = tcp.set_nodelay(true);
    let acceptor = match &node.config().tls {
        None => None,
        Some(tls) => {
            let mut first = [0u8; 1];
            match tokio::time::timeout(HEAD_DEADLINE, tcp.peek(&mut first)).await {
                Ok(Ok(1)) if first[0] == crate::tls::HANDSHAKE_RECORD => Some(tls.acceptor()),
                Ok(Ok(1)) => None,
                _ => return,
            }
        }
    };
    let Some(acceptor) = acceptor else {
        return serve(tcp, false, app, watcher).await;
    };
    match tokio::time::timeout(HEAD_DEADLINE, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => serve(stream, true, app, watcher).await,
        Ok(Err(error)) => {
            node.stats.tls_refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%error, "HTTPS handshake refused");
        }
        Err(_) => {
            node.stats.tls_refused.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Serves HTTP/1.1 on `io` until the client or the drain ends it; the handlers learn
/// from [`Transport`] whether it is TLS.
async fn serve<I>(io: I, tls: bool, app: Router, watcher: Watcher)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    // A client may end its sending side once its request is out (`curl -T`, a
    // short body): it still gets the answer, a 400 for a body cut short.
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_DEADLINE)
        .half_close(true);
    let service = TowerToHyperService::new(app.layer(axum::Extension(Transport { tls })));
    if let Err(error) = watcher
        .watch(http.serve_connection(TokioIo::new(io), service))
        .await
    {
        tracing::debug!(%error, tls, "HTTP connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_past_the_limit_closes_the_oldest_and_leaving_frees_a_place() {
        let open = Open::default();
        let first: Vec<(u64, CancellationToken)> =
            (0..MAX_CONNECTIONS).map(|_| open.enter()).collect();
        assert!(first.iter().all(|(_, t)| !t.is_cancelled()));
        // One more: the oldest goes, nobody else.
        let (_, newest) = open.enter();
        assert!(first[0].1.is_cancelled());
        assert!(first[1..].iter().all(|(_, t)| !t.is_cancelled()));
        assert!(!newest.is_cancelled());
        // A connection that ends leaves a place: the next one closes nobody.
        open.leave(first[5].0);
        let _ = open.enter();
        assert!(!first[1].1.is_cancelled());
        // Every place taken again: the oldest still open is next.
        let _ = open.enter();
        assert!(first[1].1.is_cancelled());
        assert!(!first[2].1.is_cancelled());
    }
}

//! TLS connections as a [`Listener`]: TCP connections whose handshake succeeded.
//!
//! Handshakes run in tasks of their own, beside the accepting loop, so a peer
//! that connects and says nothing (or a plaintext client) holds up no one:
//! each has [`HANDSHAKE_TIMEOUT`] to finish, at most [`HANDSHAKES`] run at
//! once (beyond that a connection is closed at once), and a failed one is
//! logged with the peer's address and rustls' reason. A session then starts
//! as over plain TCP, with the client certificate's fingerprint (mutual TLS)
//! in its [`Origin`].

use std::sync::Arc;
use std::time::Duration;

use fedhost::tls::{ServerStream, ServerTls, peer_fingerprint};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};

use crate::federation::Listener;
use crate::participant::Origin;

/// How long a connection has to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once, at most.
pub const HANDSHAKES: usize = 64;

/// TLS connections accepted on a TCP listener.
pub struct TlsListener {
    done: mpsc::Receiver<(ServerStream, Origin)>,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Accepts on `tcp` and runs every connection's handshake with `tls`.
    pub fn new(mut tcp: TcpListener, tls: ServerTls) -> Self {
        let (finished, done) = mpsc::channel(HANDSHAKES);
        let accepting = tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(HANDSHAKES));
            while let Some((socket, origin)) = Listener::accept(&mut tcp).await {
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    tracing::warn!(peer = %origin.address, "{HANDSHAKES} TLS handshakes under way: closed");
                    continue;
                };
                let (acceptor, finished) = (tls.acceptor().clone(), finished.clone());
                tokio::spawn(async move {
                    let shaken = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket));
                    let peer = &origin.address;
                    match shaken.await {
                        Ok(Ok(stream)) => {
                            let certificate = peer_fingerprint(&stream);
                            drop(slot);
                            let origin = Origin {
                                certificate,
                                ..origin
                            };
                            let _ = finished.send((stream, origin)).await;
                        }
                        Ok(Err(e)) => tracing::warn!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => {
                            tracing::warn!(%peer, "no TLS handshake within {HANDSHAKE_TIMEOUT:?}");
                        }
                    }
                });
            }
        });
        TlsListener { done, accepting }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl Listener for TlsListener {
    type Io = ServerStream;

    async fn accept(&mut self) -> Option<(ServerStream, Origin)> {
        self.done.recv().await
    }
}

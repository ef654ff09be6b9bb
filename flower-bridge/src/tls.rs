//! Flower's listeners over TLS: what tonic (the original stream) and axum
//! (the Fleet API) need around fedhost's [`Incoming`] connections.
//!
//! Flower's clients trust a server by its CA (`start_client(...,
//! root_certificates=...)`, `flower-supernode --root-certificates`) and have
//! no client certificate to present, so these listeners ask for none.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use fedhost::tls::{Incoming, ServerStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A TLS connection as tonic serves it, known by its peer's address. (tonic
/// knows rustls' streams only with its own TLS features, which build a
/// second crypto provider; this is the few lines that avoids it.)
pub struct TlsConnection {
    stream: ServerStream,
    peer: SocketAddr,
    local: SocketAddr,
}

impl Connected for TlsConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: Some(self.local),
            remote_addr: Some(self.peer),
        }
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// `incoming` as the stream of connections tonic serves.
pub fn connections(
    incoming: Incoming,
) -> impl tokio_stream::Stream<Item = io::Result<TlsConnection>> {
    let local = incoming.local_addr();
    futures_util::stream::unfold(incoming, move |mut incoming| async move {
        let (stream, peer) = incoming.next().await?;
        let connection = TlsConnection {
            stream,
            peer,
            local,
        };
        Some((Ok(connection), incoming))
    })
}

/// `incoming` as the listener axum serves the Fleet API on.
pub struct FleetListener(pub Incoming);

impl axum::serve::Listener for FleetListener {
    type Io = ServerStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (ServerStream, SocketAddr) {
        match self.0.next().await {
            Some(accepted) => accepted,
            // The accepting task ended only if the runtime is going away.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.0.local_addr())
    }
}

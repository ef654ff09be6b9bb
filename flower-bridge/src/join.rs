//! Both ends of Flower's original stream, `FlowerService/Join`, over gRPC.
//!
//! [`serve`] listens for Flower clients (`start_numpy_client`,
//! `start_client`) and hands each stream it accepts to the caller as a
//! [`ClientStream`]; [`connect`] opens a stream to a Flower server
//! (`start_server`) as a [`ServerStream`]. Both carry whole messages, with
//! tonic's 4 MiB limit raised to Flower's [`MAX_MESSAGE`], and hide tonic from
//! the hosts: what a message means is theirs (and [`crate::legacy`]'s).

use std::net::SocketAddr;
use std::time::Duration;

use fedhost::tls::{Incoming, ServerTls};
use prost::Message as _;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::legacy::MAX_MESSAGE;
use crate::proto::flower_service_client::FlowerServiceClient;
use crate::proto::flower_service_server::{FlowerService, FlowerServiceServer};
use crate::proto::{ClientMessage, ServerMessage};

/// Why a stream stopped carrying messages.
#[derive(Debug, Error)]
pub enum StreamError {
    /// The other end closed it.
    #[error("the stream was closed")]
    Closed,
    /// gRPC failed: the connection broke, a message was too large or undecodable.
    #[error("gRPC: {0}")]
    Grpc(#[from] Status),
    /// The server could not be reached.
    #[error("cannot reach the Flower server: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// A message with nothing in it (no instruction, no answer).
    #[error("an empty message")]
    Empty,
}

/// One Flower client's stream, as a server holds it.
#[derive(Debug)]
pub struct ClientStream {
    peer: String,
    inbound: Streaming<ClientMessage>,
    outbound: mpsc::Sender<Result<ServerMessage, Status>>,
    bytes: Bytes,
}

/// Message bytes a stream moved each way (protobuf encoding, without gRPC's framing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bytes {
    /// Bytes sent.
    pub sent: u64,
    /// Bytes received.
    pub received: u64,
}

impl ClientStream {
    /// The client's address, `ip:port`.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Bytes moved so far.
    pub fn bytes(&self) -> Bytes {
        self.bytes
    }

    /// Sends an instruction.
    pub async fn send(&mut self, msg: ServerMessage) -> Result<(), StreamError> {
        self.bytes.sent += msg.encoded_len() as u64;
        self.outbound
            .send(Ok(msg))
            .await
            .map_err(|_| StreamError::Closed)
    }

    /// The client's next message.
    pub async fn recv(&mut self) -> Result<ClientMessage, StreamError> {
        let msg = self.inbound.message().await?;
        self.bytes.received += msg.as_ref().map_or(0, |m| m.encoded_len() as u64);
        match msg {
            Some(ClientMessage { msg: None }) => Err(StreamError::Empty),
            Some(msg) => Ok(msg),
            None => Err(StreamError::Closed),
        }
    }

    /// Ends the stream with an error the client reports as the reason.
    pub async fn refuse(self, reason: &str) {
        let _ = self
            .outbound
            .send(Err(Status::permission_denied(reason)))
            .await;
    }
}

/// The gRPC service: each Join is passed on as a [`ClientStream`].
struct Gateway {
    joined: mpsc::Sender<ClientStream>,
}

#[tonic::async_trait]
impl FlowerService for Gateway {
    type JoinStream = ReceiverStream<Result<ServerMessage, Status>>;

    async fn join(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Self::JoinStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_string(), |a| a.to_string());
        // One instruction in flight at a time: the conversation is turn by turn.
        let (outbound, rx) = mpsc::channel(1);
        let stream = ClientStream {
            peer,
            inbound: request.into_inner(),
            outbound,
            bytes: Bytes::default(),
        };
        self.joined
            .send(stream)
            .await
            .map_err(|_| Status::unavailable("the server is shutting down"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves Flower's Join on `listener` (over TLS with `tls`) until the task
/// is dropped, passing every stream to `joined`. With `keepalive`, HTTP/2
/// pings find a client that went away without closing: its stream then fails.
pub async fn serve(
    listener: TcpListener,
    tls: Option<ServerTls>,
    keepalive: Option<Duration>,
    joined: mpsc::Sender<ClientStream>,
) -> Result<(), ServeError> {
    let service = FlowerServiceServer::new(Gateway { joined })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(keepalive)
        .add_service(service);
    match tls {
        Some(tls) => {
            let incoming = Incoming::new(listener, tls.server_only(&[b"h2"]))?;
            let connections = crate::tls::connections(incoming);
            Ok(server.serve_with_incoming(connections).await?)
        }
        None => {
            let connections = TcpListenerStream::new(listener);
            Ok(server.serve_with_incoming(connections).await?)
        }
    }
}

/// Why the original protocol's listener stopped.
#[derive(Debug, Error)]
pub enum ServeError {
    /// gRPC's transport failed.
    #[error("{0}")]
    Transport(#[from] tonic::transport::Error),
    /// The listener could not be set up for TLS.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Our end of a stream to a Flower server.
#[derive(Debug)]
pub struct ServerStream {
    inbound: Streaming<ServerMessage>,
    outbound: mpsc::Sender<ClientMessage>,
}

impl ServerStream {
    /// The server's next instruction.
    pub async fn recv(&mut self) -> Result<ServerMessage, StreamError> {
        match self.inbound.message().await? {
            Some(ServerMessage { msg: None }) => Err(StreamError::Empty),
            Some(msg) => Ok(msg),
            None => Err(StreamError::Closed),
        }
    }

    /// Sends an answer.
    pub async fn send(&mut self, msg: ClientMessage) -> Result<(), StreamError> {
        self.outbound
            .send(msg)
            .await
            .map_err(|_| StreamError::Closed)
    }
}

/// Opens the Join stream to the Flower server at `addr` (plaintext HTTP/2, as
/// `start_server` serves without certificates).
pub async fn connect(addr: SocketAddr) -> Result<ServerStream, StreamError> {
    let mut client = FlowerServiceClient::connect(format!("http://{addr}"))
        .await?
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let (outbound, rx) = mpsc::channel(1);
    let inbound = client.join(ReceiverStream::new(rx)).await?.into_inner();
    Ok(ServerStream { inbound, outbound })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::{evaluate_res, goodbye};
    use crate::proto::{client_message, server_message};

    #[tokio::test]
    async fn a_client_and_a_server_talk_turn_by_turn_over_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (joined, mut streams) = mpsc::channel(1);
        let server = tokio::spawn(serve(listener, None, None, joined));
        let mut ours = connect(addr).await.unwrap();
        let mut theirs = streams.recv().await.unwrap();
        assert!(theirs.peer().starts_with("127.0.0.1:"), "{}", theirs.peer());
        theirs.send(goodbye()).await.unwrap();
        let Some(server_message::Msg::ReconnectIns(r)) = ours.recv().await.unwrap().msg else {
            panic!("not a reconnect");
        };
        assert_eq!(r.seconds, 0);
        ours.send(evaluate_res(3, 0.5, 0.25)).await.unwrap();
        let Some(client_message::Msg::EvaluateRes(res)) = theirs.recv().await.unwrap().msg else {
            panic!("not an evaluation");
        };
        assert_eq!(res.num_examples, 3);
        let bytes = theirs.bytes();
        assert_eq!(bytes.sent as usize, goodbye().encoded_len());
        assert_eq!(
            bytes.received as usize,
            evaluate_res(3, 0.5, 0.25).encoded_len()
        );
        // A refusal reaches the client as the stream's error, with its reason.
        theirs.refuse("the federation is full").await;
        let e = ours.recv().await.unwrap_err().to_string();
        assert!(e.contains("the federation is full"), "{e}");
        server.abort();
    }
}

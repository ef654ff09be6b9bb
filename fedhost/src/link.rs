//! The framed link: fedcore frames over any async byte stream.
//!
//! [`Link`] is generic over `AsyncRead + AsyncWrite`, so a TCP socket, a serial
//! port and an in-memory `tokio::io::duplex` pipe (in tests) share one
//! implementation. It counts the bytes it moves, for the history.
//!
//! It is a thin driver of fedcore's protocol: frames come out of a
//! [`FrameReader`] that the link refills from the stream, and parameters go
//! out and come in through the transfer engine ([`Chunking`], [`Receiver`]).
//! Over TCP nothing is lost, so the link receives strictly: a chunk skipped or
//! repeated is a protocol error. The server's serial conversations drive the
//! same engine leniently (host-server's `exchange`).

use fedcore::protocol::frame::{self, FrameError, FrameReader};
use fedcore::protocol::transfer::{Arrival, Chunking, Receiver, Span};
use fedcore::protocol::{Encoding, Message};
use fedcore::scalar::Scalar;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The server's address unless told otherwise: loopback, the reference lab's port.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8000";

/// A serial line's speed unless told otherwise, on both ends (a device's UART
/// and the server's port): the common UART rate.
pub const DEFAULT_BAUD: u32 = 115_200;

/// Largest frame a host sends or takes over TCP, delimiter included (64 KiB).
pub const HOST_MAX_FRAME: usize = 1 << 16;

/// How a host cuts a vector of `total` values for a peer whose frames are at
/// most `max_frame` bytes (capped at [`HOST_MAX_FRAME`], what a host's buffers
/// hold): the one chunking rule of both directions.
pub fn chunking(
    total: usize,
    max_frame: usize,
    encoding: Encoding,
) -> Result<Chunking, fedcore::Error> {
    Chunking::new(total, max_frame.min(HOST_MAX_FRAME), encoding)
}

/// The next connection on `listener`, with Nagle off (a link's frames are
/// small and answered at once). A failed accept (out of file descriptors,
/// say) is logged and retried after 50 ms rather than ending the listener.
pub async fn accept(
    listener: &tokio::net::TcpListener,
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                let _ = socket.set_nodelay(true);
                return (socket, peer);
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// A byte stream a link can run over, chosen at run time (plain TCP or TLS): boxed as `Box<dyn ByteStream>`.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> ByteStream for T {}

/// Why a link failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The byte stream failed.
    #[error("link I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
    /// A frame arrived damaged or unreadable.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// A message could not be encoded (too large for a frame).
    #[error("cannot send: {0}")]
    Encode(#[from] fedcore::Error),
    /// The peer sent something the conversation does not allow here.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// fedcore's wire encodings, as the hosts' `--encoding` flags name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WireEncoding {
    /// One byte a value and a scale per chunk: a quarter of the bytes.
    Int8,
    /// Q16.16, four bytes a value: exact for a fixed-point device.
    Q16,
    /// IEEE f32, four bytes a value.
    F32,
}

impl From<WireEncoding> for Encoding {
    fn from(e: WireEncoding) -> Self {
        match e {
            WireEncoding::Int8 => Encoding::Int8,
            WireEncoding::Q16 => Encoding::Q16,
            WireEncoding::F32 => Encoding::F32,
        }
    }
}

/// Bytes taken from the stream per read. A frame may span many reads; a
/// server holds one of these per connection, so it is kept small.
const READ_BUFFER: usize = 16 << 10;

/// fedcore frames over an async byte stream.
pub struct Link<T> {
    io: T,
    reader: Box<FrameReader<Box<[u8]>, { HOST_MAX_FRAME - 1 }>>,
    write_buf: Vec<u8>,
    value_buf: Vec<u8>,
    sent: u64,
    received: u64,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Link<T> {
    /// A link over `io`.
    pub fn new(io: T) -> Self {
        Link {
            io,
            reader: Box::new(FrameReader::new(vec![0; READ_BUFFER].into_boxed_slice())),
            write_buf: vec![0; HOST_MAX_FRAME],
            value_buf: vec![0; HOST_MAX_FRAME],
            sent: 0,
            received: 0,
        }
    }

    /// Sends one message as one frame.
    pub async fn send(&mut self, message: &Message<'_>) -> Result<(), LinkError> {
        let frame = frame::encode(message, &mut self.write_buf)?;
        self.io.write_all(frame).await?;
        self.sent += frame.len() as u64;
        Ok(())
    }

    /// Receives the next message (valid until the next call).
    pub async fn recv(&mut self) -> Result<Message<'_>, LinkError> {
        loop {
            match self.reader.next_frame() {
                Some(Ok(())) => return Ok(self.reader.message()?),
                Some(Err(error)) => return Err(LinkError::Frame(error)),
                None => {
                    let n = self.io.read(self.reader.spare()).await?;
                    if n == 0 {
                        return Err(LinkError::Closed);
                    }
                    self.received += n as u64;
                    self.reader.filled(n);
                }
            }
        }
    }

    /// Sends the chunks of `params` (round `round`, cut as `chunking` says)
    /// that hold any value of `span`: the whole model, or what a peer asked for again.
    pub async fn send_chunks<S: Scalar>(
        &mut self,
        round: u32,
        params: &[S],
        span: Span,
        chunking: &Chunking,
    ) -> Result<(), LinkError> {
        for offset in chunking.offsets(span) {
            let frame = chunking.encode(
                round,
                params,
                offset,
                &mut self.value_buf,
                &mut self.write_buf,
            )?;
            self.io.write_all(frame).await?;
            self.sent += frame.len() as u64;
        }
        Ok(())
    }

    /// Sends all of `params` for `round`.
    pub async fn send_params(
        &mut self,
        round: u32,
        params: &[f32],
        chunking: &Chunking,
    ) -> Result<(), LinkError> {
        self.send_chunks(round, params, Span::all(chunking.total()), chunking)
            .await
    }

    /// Receives a whole parameter vector for `round` into `out`, strictly: over
    /// a link that loses nothing, every chunk must come once and in order.
    pub async fn recv_params(
        &mut self,
        round: u32,
        out: &mut [f32],
        chunking: &Chunking,
    ) -> Result<(), LinkError> {
        let words = Receiver::<Vec<u32>>::words(chunking.total(), chunking.per_chunk());
        let mut receiver = Receiver::new(vec![0u32; words]);
        receiver.start(round, chunking)?;
        while !receiver.is_complete() {
            let message = self.recv().await?;
            let Message::ParamChunk(chunk) = message else {
                return Err(LinkError::Protocol(format!(
                    "expected parameters, got {}",
                    message.name()
                )));
            };
            let (offset, len) = (chunk.offset, chunk.values.len());
            match receiver.accept(&chunk, out) {
                Ok(Arrival::New { skipped: None }) => {}
                Ok(Arrival::New { skipped: Some(_) } | Arrival::Duplicate) => {
                    return Err(LinkError::Protocol(format!(
                        "parameter chunk at {offset} ({len} values) of round {round} came out of order"
                    )));
                }
                Err(e) => return Err(LinkError::Protocol(format!("parameter chunk refused: {e}"))),
            }
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn bytes_sent(&self) -> u64 {
        self.sent
    }

    /// Bytes read so far.
    pub fn bytes_received(&self) -> u64 {
        self.received
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedcore::protocol::EvaluateIns;

    #[tokio::test]
    async fn messages_and_parameters_cross_a_duplex_pipe() {
        let (a, b) = tokio::io::duplex(4096);
        let (mut a, mut b) = (Link::new(a), Link::new(b));
        let params: Vec<f32> = (0..100_000).map(|i| i as f32 * 0.001 - 7.0).collect();
        let f32s = chunking(params.len(), HOST_MAX_FRAME, Encoding::F32).unwrap();
        let int8s = chunking(params.len(), 256, Encoding::Int8).unwrap();
        let sender = tokio::spawn(async move {
            a.send(&Message::EvaluateIns(EvaluateIns { round: 4 }))
                .await
                .unwrap();
            a.send_params(4, &params, &f32s).await.unwrap();
            a.send_params(5, &params, &int8s).await.unwrap();
            (a.bytes_sent(), params)
        });
        assert_eq!(
            b.recv().await.unwrap(),
            Message::EvaluateIns(EvaluateIns { round: 4 })
        );
        let mut got = vec![0.0f32; 100_000];
        b.recv_params(4, &mut got, &f32s).await.unwrap();
        let mut int8 = vec![0.0f32; 100_000];
        b.recv_params(5, &mut int8, &int8s).await.unwrap();
        let (sent, params) = sender.await.unwrap();
        assert_eq!(got, params);
        // int8: within half a step of each chunk's max (below 93 here) / 127.
        assert!(
            int8.iter()
                .zip(&params)
                .all(|(q, p)| (q - p).abs() <= 93.0 / 254.0)
        );
        assert_eq!(b.bytes_received(), sent);
        assert!(matches!(b.recv().await, Err(LinkError::Closed)));
    }

    #[tokio::test]
    async fn chunks_of_another_round_or_out_of_order_are_a_protocol_error() {
        let (a, b) = tokio::io::duplex(4096);
        let (mut a, mut b) = (Link::new(a), Link::new(b));
        let c = chunking(3, 64, Encoding::F32).unwrap();
        a.send_params(1, &[1.0, 2.0, 3.0], &c).await.unwrap();
        let mut out = [0.0f32; 3];
        assert!(matches!(
            b.recv_params(2, &mut out, &c).await,
            Err(LinkError::Protocol(_))
        ));
        // In order, but one chunk twice.
        let c = chunking(40, 64, Encoding::F32).unwrap();
        let params = [0.5f32; 40];
        let first = Span {
            offset: 0,
            count: 1,
        };
        a.send_chunks(3, &params, first, &c).await.unwrap();
        a.send_chunks(3, &params, first, &c).await.unwrap();
        let mut out = [0.0f32; 40];
        assert!(matches!(
            b.recv_params(3, &mut out, &c).await,
            Err(LinkError::Protocol(_))
        ));
    }
}

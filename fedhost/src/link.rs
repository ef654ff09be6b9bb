//! The framed link: fedcore frames over any async byte stream.
//!
//! [`Link`] is generic over `AsyncRead + AsyncWrite`, so a TCP socket, a serial
//! port and an in-memory `tokio::io::duplex` pipe (in tests) share one
//! implementation. It counts the bytes it moves, for the history.

use fedcore::protocol::frame::{self, Decoder, Feed, FrameError};
use fedcore::protocol::{Encoding, Message, ParamChunk, Values};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame a host sends or takes over TCP, delimiter included (64 KiB).
pub const HOST_MAX_FRAME: usize = 1 << 16;

/// Values of `encoding` in each parameter chunk for a peer whose frames are at
/// most `max_frame` bytes (capped at [`HOST_MAX_FRAME`]): the chunking of both directions.
pub fn values_per_chunk(max_frame: usize, encoding: Encoding) -> usize {
    frame::chunk_capacity(max_frame.min(HOST_MAX_FRAME), encoding.value_bytes()).max(1)
}

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

/// fedcore frames over an async byte stream.
pub struct Link<T> {
    io: T,
    decoder: Box<Decoder<{ HOST_MAX_FRAME - 1 }>>,
    read_buf: Box<[u8]>,
    read_pos: usize,
    read_len: usize,
    write_buf: Vec<u8>,
    sent: u64,
    received: u64,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Link<T> {
    /// A link over `io`.
    pub fn new(io: T) -> Self {
        Link {
            io,
            decoder: Box::default(),
            read_buf: vec![0; 1 << 16].into_boxed_slice(),
            read_pos: 0,
            read_len: 0,
            write_buf: vec![0; HOST_MAX_FRAME],
            sent: 0,
            received: 0,
        }
    }

    /// Sends one message as one frame.
    pub async fn send(&mut self, message: &Message<'_>) -> Result<(), LinkError> {
        let frame = frame::encode(message, &mut self.write_buf)?;
        let n = frame.len();
        self.io.write_all(frame).await?;
        self.sent += n as u64;
        Ok(())
    }

    /// Receives the next message (valid until the next call).
    pub async fn recv(&mut self) -> Result<Message<'_>, LinkError> {
        loop {
            if self.read_pos == self.read_len {
                let n = self.io.read(&mut self.read_buf).await?;
                if n == 0 {
                    return Err(LinkError::Closed);
                }
                self.received += n as u64;
                (self.read_pos, self.read_len) = (0, n);
            }
            match self
                .decoder
                .feed(&self.read_buf[self.read_pos..self.read_len])
            {
                Feed::Consumed => self.read_pos = self.read_len,
                Feed::Frame { used } => {
                    self.read_pos += used;
                    return Ok(self.decoder.message()?);
                }
                Feed::Rejected { error, used } => {
                    self.read_pos += used;
                    return Err(LinkError::Frame(error));
                }
            }
        }
    }

    /// Sends `params` as chunks of `encoding` that fit in frames of `max_frame` bytes.
    pub async fn send_params(
        &mut self,
        round: u32,
        params: &[f32],
        encoding: Encoding,
        max_frame: usize,
    ) -> Result<(), LinkError> {
        let per_chunk = values_per_chunk(max_frame, encoding);
        self.send_chunks(round, params, 0..params.len(), encoding, per_chunk)
            .await
    }

    /// Sends the chunks of `per_chunk` values (counted from the start of `params`)
    /// that hold any of the values in `range`: the whole model, or what a peer asked for again.
    pub async fn send_chunks(
        &mut self,
        round: u32,
        params: &[f32],
        range: std::ops::Range<usize>,
        encoding: Encoding,
        per_chunk: usize,
    ) -> Result<(), LinkError> {
        let per_chunk = per_chunk.max(1);
        let mut buf = vec![0u8; per_chunk * encoding.value_bytes()];
        let total = params.len() as u32;
        let first = range.start / per_chunk * per_chunk;
        let end = range.end.min(params.len());
        for offset in (first..end).step_by(per_chunk) {
            let chunk = &params[offset..(offset + per_chunk).min(params.len())];
            let values = Values::encode(chunk, encoding, &mut buf)?;
            self.send(&Message::ParamChunk(ParamChunk {
                round,
                offset: offset as u32,
                total,
                values,
            }))
            .await?;
        }
        Ok(())
    }

    /// Receives a whole parameter vector for `round` into `out`: chunks in order,
    /// covering it exactly.
    pub async fn recv_params(&mut self, round: u32, out: &mut [f32]) -> Result<(), LinkError> {
        let mut next = 0;
        while next < out.len() {
            let message = self.recv().await?;
            let Message::ParamChunk(chunk) = message else {
                return Err(LinkError::Protocol(format!(
                    "expected parameters, got {}",
                    message.name()
                )));
            };
            let (offset, len) = (chunk.offset as usize, chunk.values.len());
            if chunk.round != round
                || offset != next
                || chunk.total as usize != out.len()
                || len == 0
                || offset + len > out.len()
            {
                return Err(LinkError::Protocol(format!(
                    "parameter chunk (round {}, offset {offset}, {len} of {}) does not continue round {round} at {next} of {}",
                    chunk.round,
                    chunk.total,
                    out.len()
                )));
            }
            chunk.values.decode(&mut out[offset..offset + len])?;
            next += len;
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
        let sender = tokio::spawn(async move {
            a.send(&Message::EvaluateIns(EvaluateIns { round: 4 }))
                .await
                .unwrap();
            a.send_params(4, &params, Encoding::F32, HOST_MAX_FRAME)
                .await
                .unwrap();
            a.send_params(5, &params, Encoding::Int8, 256)
                .await
                .unwrap();
            (a.bytes_sent(), params)
        });
        assert_eq!(
            b.recv().await.unwrap(),
            Message::EvaluateIns(EvaluateIns { round: 4 })
        );
        let mut got = vec![0.0f32; 100_000];
        b.recv_params(4, &mut got).await.unwrap();
        let mut int8 = vec![0.0f32; 100_000];
        b.recv_params(5, &mut int8).await.unwrap();
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
    async fn out_of_order_chunks_are_a_protocol_error() {
        let (a, b) = tokio::io::duplex(4096);
        let (mut a, mut b) = (Link::new(a), Link::new(b));
        a.send_params(1, &[1.0, 2.0, 3.0], Encoding::F32, 64)
            .await
            .unwrap();
        let mut out = [0.0f32; 3];
        assert!(matches!(
            b.recv_params(2, &mut out).await,
            Err(LinkError::Protocol(_))
        ));
    }
}

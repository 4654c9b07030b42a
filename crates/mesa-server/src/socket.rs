//! The connection's socket as tungstenite sees it: the upgraded stream, read ahead in large chunks, counting
//! the bytes handed to tungstenite.
//!
//! Two things tungstenite's own buffering does not do:
//! - **Few reads per message.** Its read buffer is kept small (`limits.read_buffer_size`, 256 B by default)
//!   because every idle connection pays for it, but it then reads at most that much per system call: a
//!   client pipelining 100-byte frames cost one `recv` per two frames. Once a read fills all tungstenite
//!   asked for (more is waiting), reads here take up to [`READ_AHEAD`] bytes from the socket at once and
//!   hand them over as tungstenite asks; the chunk is freed as soon as it is used up and the socket has
//!   nothing more. An idle connection, which reads one small frame at a time, never allocates one.
//! - **Buffers that shrink.** tungstenite keeps its buffers at the largest size they ever grew to, so one
//!   60 KB message would pin 60 KB on a connection for its whole life. The connection task gives them back
//!   by building a new `WebSocketStream` over the same socket after a large message, which is safe only
//!   when tungstenite holds no unread input: that is when the bytes handed to it (counted here) equal the
//!   bytes of the frames it returned (counted by the task). Bytes read ahead and not yet handed over move
//!   to the new stream with the socket ([`BufferedSocket::hand_over`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::poll_read_buf;

/// The most bytes one read takes from the socket.
pub(crate) const READ_AHEAD: usize = 4096;

/// The smallest read that, filled, shows more input waiting.
const BUSY_ASK: usize = 128;

/// A stream read ahead in chunks of [`READ_AHEAD`] bytes, counting what it handed out, that can hand its
/// inner stream over.
#[derive(Debug)]
pub(crate) struct BufferedSocket<S> {
    inner: Option<S>,
    /// Read from the stream, not handed out yet. Without capacity (no allocation) when empty and idle.
    ahead: BytesMut,
    /// A read filled all the caller asked for: read ahead until the socket has nothing more.
    busy: bool,
    handed_out: u64,
}

impl<S> BufferedSocket<S> {
    pub(crate) fn new(inner: S) -> BufferedSocket<S> {
        BufferedSocket {
            inner: Some(inner),
            ahead: BytesMut::new(),
            busy: false,
            handed_out: 0,
        }
    }

    /// Bytes handed to the reader so far.
    pub(crate) fn bytes_read(&self) -> u64 {
        self.handed_out
    }

    /// Moves the inner stream and what was read ahead of it into a new adapter (whose count starts at 0);
    /// this one then reports EOF and refuses writes.
    pub(crate) fn hand_over(&mut self) -> Option<BufferedSocket<S>> {
        let inner = self.inner.take()?;
        Some(BufferedSocket {
            inner: Some(inner),
            ahead: std::mem::take(&mut self.ahead),
            busy: self.busy,
            handed_out: 0,
        })
    }

    /// Copies what was read ahead into `buf`, as much as fits.
    fn hand_out(&mut self, buf: &mut ReadBuf<'_>) {
        let n = buf.remaining().min(self.ahead.len());
        buf.put_slice(&self.ahead[..n]);
        self.ahead.advance(n);
        self.handed_out += n as u64;
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "socket handed over")
}

impl<S: AsyncRead + Unpin> AsyncRead for BufferedSocket<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.ahead.is_empty() {
            this.hand_out(buf);
            return Poll::Ready(Ok(()));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        if !this.busy || buf.remaining() >= READ_AHEAD {
            // Straight into the caller's buffer: a large read (a long message), or a connection that has not
            // shown it has more waiting than the caller asks for (an idle one reads a heartbeat at a time).
            let (before, asked) = (buf.filled().len(), buf.remaining());
            let polled = Pin::new(inner).poll_read(cx, buf);
            match polled {
                Poll::Ready(Ok(())) => {
                    let read = buf.filled().len() - before;
                    this.handed_out += read as u64;
                    // The read filled what was asked: more is probably waiting, so read ahead from now on.
                    // Not for tiny asks: tungstenite's buffer runs down to a few bytes between refills,
                    // and an idle connection would then look busy.
                    this.busy = read == asked && (BUSY_ASK..READ_AHEAD).contains(&asked);
                }
                Poll::Pending => this.busy = false,
                Poll::Ready(Err(_)) => {}
            }
            return polled;
        }
        // Empty, so `reserve` reuses the chunk's allocation when there is one.
        this.ahead.reserve(READ_AHEAD);
        match poll_read_buf(Pin::new(inner), cx, &mut this.ahead) {
            Poll::Ready(Ok(_)) => {
                // Nothing read is EOF, which the caller sees as a read of nothing.
                this.hand_out(buf);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                // Nothing buffered and nothing to read: an idle connection keeps no chunk.
                this.ahead = BytesMut::new();
                this.busy = false;
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for BufferedSocket<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_write(cx, data),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_flush(cx),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// The wire size of one frame a client sent (clients mask, so 4 bytes of mask key) with `payload` bytes.
pub(crate) fn client_frame_len(payload: usize) -> u64 {
    let extended = match payload {
        0..=125 => 0,
        126..=65_535 => 2,
        _ => 8,
    };
    (2 + 4 + extended + payload) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_get_every_byte_in_order_and_the_chunk_goes_when_idle() {
        let (mut peer, socket) = tokio::io::duplex(64 * 1024);
        let sent: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        peer.write_all(&sent).await.expect("write");
        let mut socket = BufferedSocket::new(socket);
        let mut received = Vec::new();
        // 200-byte reads: the first fills, so the rest come from chunks read ahead.
        let mut small = [0u8; 200];
        let mut chunked = false;
        while received.len() < sent.len() {
            let n = socket.read(&mut small).await.expect("read");
            received.extend_from_slice(&small[..n]);
            chunked |= socket.ahead.capacity() > 0;
        }
        assert!(chunked, "read ahead once reads filled");
        assert_eq!(received, sent);
        assert_eq!(socket.bytes_read(), sent.len() as u64);
        // Nothing left to read: the next poll is pending, and the chunk is given back.
        let pending = futures_util::FutureExt::now_or_never(socket.read(&mut small));
        assert!(pending.is_none());
        assert_eq!(socket.ahead.capacity(), 0);
    }

    #[tokio::test]
    async fn bytes_read_ahead_move_with_the_socket() {
        let (mut peer, socket) = tokio::io::duplex(64 * 1024);
        peer.write_all(b"0123456789").await.expect("write");
        let mut first = BufferedSocket::new(socket);
        let mut three = [0u8; 3];
        first.read_exact(&mut three).await.expect("read");
        assert_eq!(&three, b"012");
        let mut second = first.hand_over().expect("inner stream");
        assert_eq!(second.bytes_read(), 0);
        let mut rest = [0u8; 7];
        second.read_exact(&mut rest).await.expect("read");
        assert_eq!(&rest, b"3456789");
        assert_eq!(second.bytes_read(), 7);
        // The old adapter is empty: EOF.
        assert_eq!(first.read(&mut three).await.expect("eof"), 0);
    }
}

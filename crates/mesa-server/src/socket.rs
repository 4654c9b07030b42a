//! The connection's socket as tungstenite sees it: the upgraded stream, counting the bytes read from it.
//!
//! tungstenite keeps its read and write buffers at the largest size they ever grew to, so one 60 KB message
//! would pin 60 KB on a connection for its whole life. The connection task gives them back by building a new
//! `WebSocketStream` over the same socket after a large message, which is safe only when tungstenite holds
//! no unread input: that is when the bytes read from the socket (counted here) equal the bytes of the frames
//! it returned (counted by the task).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream that counts what was read from it and can hand its inner stream over.
#[derive(Debug)]
pub(crate) struct CountingIo<S> {
    inner: Option<S>,
    read: u64,
}

impl<S> CountingIo<S> {
    pub(crate) fn new(inner: S) -> CountingIo<S> {
        CountingIo {
            inner: Some(inner),
            read: 0,
        }
    }

    /// Bytes read from the stream so far.
    pub(crate) fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Takes the inner stream out; this adapter then reports EOF and refuses writes.
    pub(crate) fn take(&mut self) -> Option<S> {
        self.inner.take()
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "socket handed over")
}

impl<S: AsyncRead + Unpin> AsyncRead for CountingIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let before = buf.filled().len();
        let polled = Pin::new(inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.read += (buf.filled().len() - before) as u64;
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountingIo<S> {
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

//! A connection whose first bytes were already read (to tell protocols apart): reads yield
//! those bytes first, then the stream's; writes go straight to the stream.
//!
//! For HTTP/2 it can also hide that the stream has vectored writes: h2 then copies each frame
//! of up to 1 KiB into its write buffer and sends many frames with one write, where with
//! vectored writes it keeps every frame over 256 bytes apart and writes (and flushes) it on
//! its own — one system call per watch event per stream, with thousands of watch streams over
//! a few connections most of the cost of a fan-out.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct Rewind<S> {
    /// What was read ahead and not yet handed out again; freed once it all has been.
    prefix: Bytes,
    inner: S,
    vectored_writes: bool,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Bytes, inner: S) -> Rewind<S> {
        Rewind { prefix, inner, vectored_writes: true }
    }

    /// Tells the writer that writes are not vectored (see the module's doc).
    pub fn without_vectored_writes(mut self) -> Rewind<S> {
        self.vectored_writes = false;
        self
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        if self.prefix.is_empty() {
            self.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.vectored_writes && self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn the_prefix_comes_before_the_stream() {
        let mut rewound = Rewind::new(Bytes::from_static(b"PRI * "), &b"HTTP/2.0"[..]);
        let mut first = [0u8; 4];
        rewound.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"PRI ");
        let mut rest = Vec::new();
        rewound.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"* HTTP/2.0");
    }
}

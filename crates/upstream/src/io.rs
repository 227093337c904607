//! Write coalescing for proxied connections.
//!
//! A proxy relays many small HTTP/2 frames: a response's HEADERS+DATA and its trailers, a
//! forwarded request's HEADERS, DATA and END_STREAM, each queued by a different task. Written
//! as they come, each is its own `writev` — most of a pass-through proxy's CPU goes into the
//! loopback TCP stack that way, and the peer (etcd) pays to read each small segment. This
//! wrapper lets a connection's first write of a batch wait one scheduler turn
//! (`yield_now`), so that frames other tasks queue meanwhile go out in the same write.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

type Yield = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// Wraps a connection so that writes between two flushes are batched.
pub struct CoalescingIo<T> {
    inner: T,
    turn: Option<Yield>,
    may_write: bool,
}

impl<T> CoalescingIo<T> {
    pub fn new(inner: T) -> Self {
        CoalescingIo { inner, turn: None, may_write: false }
    }

    /// Waits out one scheduler turn before the first write after a flush.
    fn poll_turn(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.may_write {
            return Poll::Ready(());
        }
        let turn = self.turn.get_or_insert_with(|| Box::pin(tokio::task::yield_now()));
        match turn.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.turn = None;
                self.may_write = true;
                Poll::Ready(())
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CoalescingIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescingIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_turn(cx));
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_turn(cx));
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if flushed.is_ready() {
            self.may_write = false;
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_pass_through_unchanged() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut client = CoalescingIo::new(client);
        client.write_all(b"hello ").await.unwrap();
        client.write_all(b"world").await.unwrap();
        client.flush().await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = String::new();
        server.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello world");
    }
}

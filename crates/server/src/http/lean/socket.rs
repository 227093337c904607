//! The lean connection's socket, shared by the request body (which reads it until the body
//! has ended) and the connection task (which writes the response and, once the body has
//! ended or was dropped, reads on only to notice the client going away).

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::task::AtomicWaker;
use tokio::net::TcpStream;

/// Bytes read and thrown away at a time while waiting for the client to close.
const DISCARD_PIECE: usize = 512;

pub struct SharedSocket {
    stream: TcpStream,
    request_body_done: AtomicBool,
    /// The connection task, waiting for the request body to be done.
    request_body_done_waker: AtomicWaker,
}

impl SharedSocket {
    pub fn new(stream: TcpStream) -> SharedSocket {
        SharedSocket { stream, request_body_done: AtomicBool::new(false), request_body_done_waker: AtomicWaker::new() }
    }

    pub fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            match self.stream.try_read(buf) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    /// Reads at most `wanted` bytes into a buffer of their own (empty at the end of input).
    pub fn poll_read_piece(&self, cx: &mut Context<'_>, wanted: usize) -> Poll<io::Result<Bytes>> {
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            let mut piece = BytesMut::with_capacity(wanted);
            match self.stream.try_read_buf(&mut piece) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result.map(|_| piece.freeze())),
            }
        }
    }

    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        poll_fn(|cx| self.poll_read(cx, buf)).await
    }

    pub fn poll_write_vectored(&self, cx: &mut Context<'_>, parts: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write_vectored(parts) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    /// Writes all of `parts`, in as few system calls as the socket allows.
    pub async fn write_all(&self, mut parts: &mut [IoSlice<'_>]) -> io::Result<()> {
        poll_fn(|cx| {
            while parts.iter().any(|part| !part.is_empty()) {
                match ready!(self.poll_write_vectored(cx, parts)) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => IoSlice::advance_slices(&mut parts, n),
                    Err(error) => return Poll::Ready(Err(error)),
                }
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// Called by the request body when it has ended or is dropped: from then on the
    /// connection task owns the read side.
    pub fn request_body_done(&self) {
        self.request_body_done.store(true, Ordering::Release);
        self.request_body_done_waker.wake();
    }

    /// Ready when the client has closed the connection (or it failed). Only looks once the
    /// request body is done; whatever the client sends after it is thrown away (the
    /// connection serves one request).
    pub fn poll_client_gone(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.request_body_done.load(Ordering::Acquire) {
            self.request_body_done_waker.register(cx.waker());
            if !self.request_body_done.load(Ordering::Acquire) {
                return Poll::Pending;
            }
        }
        let mut discard = [0u8; DISCARD_PIECE];
        loop {
            match ready!(self.poll_read(cx, &mut discard)) {
                Ok(0) | Err(_) => return Poll::Ready(()),
                Ok(_) => {}
            }
        }
    }

    pub async fn client_gone(&self) {
        poll_fn(|cx| self.poll_client_gone(cx)).await
    }

    /// Ends the connection in both directions, also for a request body still held elsewhere.
    pub fn shutdown(&self) {
        let _ = socket2::SockRef::from(&self.stream).shutdown(std::net::Shutdown::Both);
    }

    /// Ends the sending side only: the client sees the end of the response.
    pub fn shutdown_write(&self) {
        let _ = socket2::SockRef::from(&self.stream).shutdown(std::net::Shutdown::Write);
    }
}

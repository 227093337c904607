//! A lean connection's request body, read straight from the socket as the handler asks for
//! it, in small pieces (`Content-Length` or chunked): nothing is buffered once handed out.
//! When the body has ended, failed or is dropped, the socket's read side goes back to the
//! connection task. A body that ends does not end the response (a watch goes on).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::chunked::{ChunkedDecoder, Decoded};
use super::socket::SharedSocket;

/// Most bytes read from the socket by the first read; a read that fills its piece doubles
/// the next one (as hyper's read buffer grows), up to [`MAX_READ_PIECE`]. Each piece is
/// allocated for its read only and handed out at once.
const FIRST_READ_PIECE: usize = 4096;
const MAX_READ_PIECE: usize = 256 * 1024;

/// How the request says its body ends.
#[derive(Debug)]
pub enum Framing {
    /// `Content-Length` (0 without either header): this many bytes still to come.
    Length(u64),
    Chunked(ChunkedDecoder),
}

pub struct SocketBody {
    socket: Arc<SharedSocket>,
    /// Read and not yet handed out: at first what arrived with the request head.
    unread: Bytes,
    /// `None` once the body has ended or failed.
    framing: Option<Framing>,
    /// Most bytes the next read may take.
    read_piece: usize,
}

impl SocketBody {
    pub fn new(socket: Arc<SharedSocket>, unread: Bytes, framing: Framing) -> SocketBody {
        SocketBody { socket, unread, framing: Some(framing), read_piece: FIRST_READ_PIECE }
    }

    fn finish(&mut self) {
        self.framing = None;
        self.unread = Bytes::new();
        self.socket.request_body_done();
    }

    /// The next frame, or what is needed first.
    fn decode(&mut self) -> io::Result<Option<Decoded>> {
        Ok(Some(match &mut self.framing {
            None => return Ok(None),
            Some(Framing::Length(0)) => Decoded::End,
            Some(Framing::Length(_)) if self.unread.is_empty() => Decoded::NeedMore,
            Some(Framing::Length(remaining)) => {
                let n = usize::try_from(*remaining).unwrap_or(usize::MAX).min(self.unread.len());
                *remaining -= n as u64;
                Decoded::Data(self.unread.split_to(n))
            }
            Some(Framing::Chunked(decoder)) => decoder.decode(&mut self.unread)?,
        }))
    }

    /// Reads the next piece from the socket into `unread` (never past a known length).
    fn poll_read_piece(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let wanted = match &self.framing {
            Some(Framing::Length(remaining)) => usize::try_from(*remaining).unwrap_or(usize::MAX).min(self.read_piece),
            _ => self.read_piece,
        };
        let piece = ready!(self.socket.poll_read_piece(cx, wanted))?;
        if piece.is_empty() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the request body ended early")));
        }
        if piece.len() == self.read_piece {
            self.read_piece = (self.read_piece * 2).min(MAX_READ_PIECE);
        }
        self.unread = piece;
        Poll::Ready(Ok(()))
    }
}

impl Body for SocketBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = &mut *self;
        loop {
            let step = match this.decode() {
                Ok(step) => step,
                Err(error) => {
                    this.finish();
                    return Poll::Ready(Some(Err(error)));
                }
            };
            match step {
                None => return Poll::Ready(None),
                Some(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Some(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Some(Decoded::NeedMore) => {
                    if let Err(error) = ready!(this.poll_read_piece(cx)) {
                        this.finish();
                        return Poll::Ready(Some(Err(error)));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, None | Some(Framing::Length(0)))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.framing {
            None => SizeHint::with_exact(0),
            Some(Framing::Length(remaining)) => SizeHint::with_exact(*remaining),
            Some(Framing::Chunked(_)) => SizeHint::default(),
        }
    }
}

impl Drop for SocketBody {
    fn drop(&mut self) {
        self.socket.request_body_done();
    }
}

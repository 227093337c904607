//! Decoding a chunked message body (RFC 9112 §7.1) byte by byte as it arrives, without
//! buffering: chunk data is handed out as slices of what was read; sizes, extensions and
//! trailers are consumed on the fly (extensions and trailers are skipped, within limits).
//! The lean HTTP/1.1 server decodes request bodies with it; the watcher benchmark, etcd's
//! and etcdgate's chunked watch answers.

use std::io;

use bytes::{Buf, Bytes};

/// Most bytes of chunk extensions, and separately of trailer fields, a body may carry.
const MAX_SKIPPED_BYTES: usize = 16 * 1024;
/// Hex digits in a chunk size: 16 already reach `u64::MAX`.
const MAX_SIZE_DIGITS: u8 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk size (`digits` so far).
    Size {
        digits: u8,
    },
    /// Blanks after the size.
    SizeBlanks,
    /// A chunk extension, up to the line's end.
    Extension,
    /// The `\n` ending a size line.
    SizeLf,
    /// Chunk data, `remaining` bytes of it still to come.
    Data,
    DataCr,
    DataLf,
    /// After the last chunk: a trailer line or the final empty line.
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Ended,
}

/// What decoding the input read so far gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// Everything read has been consumed; more input is needed.
    NeedMore,
    /// The body is complete (the input may hold bytes after it, which are not the body's).
    End,
}

#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    /// The size of the chunk being read, then what is left of its data.
    remaining: u64,
    /// Extension and trailer bytes seen so far (each bounded on its own).
    extension_bytes: usize,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder { state: State::Size { digits: 0 }, remaining: 0, extension_bytes: 0, trailer_bytes: 0 }
    }
}

impl ChunkedDecoder {
    /// Consumes `input` until a piece of data, the end of the body, or the end of `input`.
    pub fn decode(&mut self, input: &mut Bytes) -> io::Result<Decoded> {
        loop {
            if self.state == State::Ended {
                return Ok(Decoded::End);
            }
            if self.state == State::Data {
                if input.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(input.len());
                let data = input.split_to(n);
                self.remaining -= n as u64;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                return Ok(Decoded::Data(data));
            }
            let Some(&byte) = input.first() else { return Ok(Decoded::NeedMore) };
            input.advance(1);
            self.state = self.step(byte)?;
        }
    }

    /// The state after one byte of the framing (everything but chunk data).
    fn step(&mut self, byte: u8) -> io::Result<State> {
        Ok(match (self.state, byte) {
            (State::Size { digits }, _) if (byte as char).is_ascii_hexdigit() => {
                if digits == MAX_SIZE_DIGITS || self.remaining >> 60 != 0 {
                    return Err(invalid("chunk size too large"));
                }
                self.remaining = self.remaining << 4 | u64::from((byte as char).to_digit(16).unwrap_or(0));
                State::Size { digits: digits + 1 }
            }
            (State::Size { digits: 0 }, _) => return Err(invalid("chunk size missing")),
            (State::Size { .. } | State::SizeBlanks, b' ' | b'\t') => State::SizeBlanks,
            (State::Size { .. } | State::SizeBlanks, b';') => State::Extension,
            (State::Size { .. } | State::SizeBlanks | State::Extension, b'\r') => State::SizeLf,
            (State::Size { .. } | State::SizeBlanks, _) => return Err(invalid("invalid chunk size")),
            (State::Extension, b'\n') => return Err(invalid("chunk extension contains a newline")),
            (State::Extension, _) => {
                self.extension_bytes += 1;
                if self.extension_bytes > MAX_SKIPPED_BYTES {
                    return Err(invalid("chunk extensions too large"));
                }
                State::Extension
            }
            (State::SizeLf, b'\n') if self.remaining == 0 => State::TrailerStart,
            (State::SizeLf, b'\n') => State::Data,
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::Size { digits: 0 },
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::Trailer, b'\r') => State::TrailerLf,
            (State::TrailerStart | State::Trailer, _) => {
                self.trailer_bytes += 1;
                if self.trailer_bytes > MAX_SKIPPED_BYTES {
                    return Err(invalid("chunked trailers too large"));
                }
                State::Trailer
            }
            (State::TrailerLf, b'\n') => State::TrailerStart,
            (State::EndLf, b'\n') => State::Ended,
            (State::SizeLf | State::DataCr | State::DataLf | State::TrailerLf | State::EndLf, _) => {
                return Err(invalid("chunk framing: missing CRLF"));
            }
            (State::Data | State::Ended, _) => self.state,
        })
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("bad chunked request body: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `pieces` fed one after the other; the data, or the error.
    fn decode(pieces: &[&[u8]]) -> Result<(Vec<u8>, bool), io::Error> {
        let mut decoder = ChunkedDecoder::default();
        let mut data = Vec::new();
        for piece in pieces {
            let mut input = Bytes::copy_from_slice(piece);
            loop {
                match decoder.decode(&mut input)? {
                    Decoded::Data(bytes) => data.extend_from_slice(&bytes),
                    Decoded::NeedMore => break,
                    Decoded::End => return Ok((data, true)),
                }
            }
        }
        Ok((data, false))
    }

    #[test]
    fn chunks_split_anywhere_decode_the_same() {
        let body = b"5;name=value\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n";
        assert_eq!(decode(&[body]).unwrap(), (b"helloabcdefghijklmnopqrstuvwxyz".to_vec(), true));
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(decode(&bytes).unwrap(), (b"helloabcdefghijklmnopqrstuvwxyz".to_vec(), true));
        assert_eq!(decode(&[b"3\r\nabc\r\n", b"0\r"]).unwrap(), (b"abc".to_vec(), false));
    }

    #[test]
    fn bad_framing_is_an_error() {
        for bad in [&b"zz\r\n"[..], b"\r\n", b"3\r\nabcX", b"3 x\r\n", b"11111111111111111\r\n", b"3;a\nb\r\n"] {
            assert_eq!(decode(&[bad]).unwrap_err().kind(), io::ErrorKind::InvalidData, "{:?}", String::from_utf8_lossy(bad));
        }
        let long_extension = [&b"1;"[..], &vec![b'x'; MAX_SKIPPED_BYTES + 1]].concat();
        assert!(decode(&[&long_extension]).is_err());
    }
}

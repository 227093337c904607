//! `bytes` fields of the JSON mapping, decoded as etcd's HTTP gateway decodes them (Go's
//! `encoding/json`, `base64.StdEncoding`): the standard alphabet with `=` padding, line
//! breaks skipped, non-zero trailing bits allowed; anything else is refused with Go's
//! message, `illegal base64 data at input byte N`. (pbjson's own decoder also takes the
//! URL-safe alphabet and missing padding, so a body etcd refuses would be executed.) The
//! generated serde code is pointed here by `build.rs`.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// The start of every error message this module produces (Go's `base64.CorruptInputError`).
pub const ERROR_PREFIX: &str = "illegal base64 data at input byte ";

/// A `bytes` field's value, decoded from base64 as Go decodes it.
pub struct Base64Bytes<T>(pub T);

impl<'de, T: From<Vec<u8>>> Deserialize<'de> for Base64Bytes<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Base64Visitor<T>(PhantomData<T>);
        impl<T: From<Vec<u8>>> Visitor<'_> for Base64Visitor<T> {
            type Value = T;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a base64 string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
                decode(s.as_bytes()).map(T::from).map_err(|at| E::custom(format_args!("{ERROR_PREFIX}{at}")))
            }
        }
        deserializer.deserialize_str(Base64Visitor(PhantomData)).map(Base64Bytes)
    }
}

/// The standard alphabet's value of `c`.
fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Decodes `src` as Go's `base64.StdEncoding.Decode` does; the error is the offset Go
/// reports.
pub fn decode(src: &[u8]) -> Result<Vec<u8>, usize> {
    let is_line_break = |c: u8| c == b'\n' || c == b'\r';
    let mut out = Vec::with_capacity(src.len() / 4 * 3);
    let mut si = 0;
    loop {
        // One quantum: up to four sextets, or fewer ended by padding.
        let mut quantum = [0u8; 4];
        let mut len = 0;
        let mut padded = false;
        while len < 4 {
            if si == src.len() {
                if len == 0 {
                    return Ok(out);
                }
                // Unpadded end of input.
                return Err(si - len);
            }
            let c = src[si];
            si += 1;
            if let Some(value) = sextet(c) {
                quantum[len] = value;
                len += 1;
                continue;
            }
            if is_line_break(c) {
                continue;
            }
            if c != b'=' || len < 2 {
                return Err(si - 1);
            }
            if len == 2 {
                // "==" is expected: the first "=" is consumed.
                while si < src.len() && is_line_break(src[si]) {
                    si += 1;
                }
                if si == src.len() {
                    return Err(src.len());
                }
                if src[si] != b'=' {
                    return Err(si - 1);
                }
                si += 1;
            }
            while si < src.len() && is_line_break(src[si]) {
                si += 1;
            }
            if si < src.len() {
                // Something after the padding.
                return Err(si);
            }
            padded = true;
            break;
        }
        let value = u32::from(quantum[0]) << 18 | u32::from(quantum[1]) << 12 | u32::from(quantum[2]) << 6 | u32::from(quantum[3]);
        let bytes = [(value >> 16) as u8, (value >> 8) as u8, value as u8];
        out.extend_from_slice(&bytes[..len - 1]);
        if padded {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_standard_padded_base64_and_skips_line_breaks() {
        assert_eq!(decode(b""), Ok(vec![]));
        assert_eq!(decode(b"YQ=="), Ok(b"a".to_vec()));
        assert_eq!(decode(b"YWI="), Ok(b"ab".to_vec()));
        assert_eq!(decode(b"YWJj"), Ok(b"abc".to_vec()));
        assert_eq!(decode(b"YWJj\r\nZA=\n="), Ok(b"abcd".to_vec()));
        assert_eq!(decode(b"+/+/"), Ok(vec![0xfb, 0xff, 0xbf]));
        // Go's StdEncoding is not strict: trailing bits need not be zero.
        assert_eq!(decode(b"YR=="), Ok(b"a".to_vec()));
    }

    #[test]
    fn refuses_what_go_refuses_at_the_offset_go_reports() {
        // Offsets as etcd 3.4 and 3.5 report them (`illegal base64 data at input byte N`).
        assert_eq!(decode(b"YQ"), Err(0));
        assert_eq!(decode(b"YQ="), Err(3));
        assert_eq!(decode(b"_-8="), Err(0));
        assert_eq!(decode(b"%%%"), Err(0));
        assert_eq!(decode(b"YWJjZ"), Err(4));
        assert_eq!(decode(b"Y==="), Err(1));
        assert_eq!(decode(b"YQ==YQ=="), Err(4));
        assert_eq!(decode(b"YQ=x"), Err(2));
        assert_eq!(decode(b"YWI=="), Err(4));
    }

    #[test]
    fn json_fields_decode_through_it() {
        let ok: Base64Bytes<Vec<u8>> = serde_json::from_str(r#""YQ==""#).unwrap();
        assert_eq!(ok.0, b"a");
        let error = serde_json::from_str::<Base64Bytes<Vec<u8>>>(r#""YQ""#).err().unwrap();
        assert!(error.to_string().starts_with("illegal base64 data at input byte 0"), "{error}");
    }
}

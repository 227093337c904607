//! JSON values that etcd's HTTP gateway (Go's `encoding/json` and jsonpb) reads differently
//! from pbjson, read here as the gateway reads them; `build.rs` points the generated serde
//! code here.
//!
//! - `bytes` fields: Go's `base64.StdEncoding` — the standard alphabet with `=` padding,
//!   line breaks skipped, non-zero trailing bits allowed; anything else is refused with Go's
//!   message, `illegal base64 data at input byte N` (pbjson also takes the URL-safe alphabet
//!   and missing padding, so a body etcd refuses would be executed). Go also takes an array
//!   of byte values.
//! - enum fields: a name, or any 32-bit number, known or not, as jsonpb takes it (pbjson
//!   refuses unknown numbers). The request then meets the same checks as over gRPC.
//! - integer fields: a number, or a string holding one with spaces around it allowed
//!   (`" 2"`, which pbjson refuses); a fraction, an exponent or a value out of the
//!   field's range is refused with Go's message (pbjson's is about an "untagged enum").
//!
//! Errors here are worded as Go's (see [`is_go_message`]).

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, Unexpected, Visitor};

/// The start of every base64 error message (Go's `base64.CorruptInputError`).
const BASE64_ERROR_PREFIX: &str = "illegal base64 data at input byte ";

/// A `bytes` field's value, decoded from base64 as Go decodes it.
pub struct Base64Bytes<T>(pub T);

impl<'de, T: From<Vec<u8>>> Deserialize<'de> for Base64Bytes<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Base64Visitor<T>(PhantomData<T>);
        impl<'de, T: From<Vec<u8>>> Visitor<'de> for Base64Visitor<T> {
            type Value = T;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a base64 string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
                decode(s.as_bytes()).map(T::from).map_err(|at| E::custom(format_args!("{BASE64_ERROR_PREFIX}{at}")))
            }
            /// Go also reads a `[]byte` from an array of byte values.
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut items: A) -> Result<T, A::Error> {
                let mut bytes = Vec::with_capacity(items.size_hint().unwrap_or(0).min(4096));
                while let Some(byte) = items.next_element::<u8>()? {
                    bytes.push(byte);
                }
                Ok(T::from(bytes))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<T, E> {
                Err(cannot_unmarshal("number", "[]uint8"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<T, E> {
                Err(cannot_unmarshal("number", "[]uint8"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<T, E> {
                Err(cannot_unmarshal("number", "[]uint8"))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<T, E> {
                Err(cannot_unmarshal("bool", "[]uint8"))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<T, A::Error> {
                Err(cannot_unmarshal("object", "[]uint8"))
            }
        }
        deserializer.deserialize_any(Base64Visitor(PhantomData)).map(Base64Bytes)
    }
}

/// An enum field's value: one of `E`'s names, or any 32-bit number.
pub struct OpenEnum<E>(pub i32, PhantomData<E>);

impl<'de, E: Deserialize<'de> + Into<i32>> Deserialize<'de> for OpenEnum<E> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EnumVisitor<E>(PhantomData<E>);
        impl<'de, E: Deserialize<'de> + Into<i32>> Visitor<'de> for EnumVisitor<E> {
            type Value = i32;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("an enum name or a 32-bit number")
            }
            fn visit_str<Err: de::Error>(self, name: &str) -> Result<i32, Err> {
                E::deserialize(de::value::StrDeserializer::<Err>::new(name)).map(Into::into)
            }
            fn visit_i64<Err: de::Error>(self, number: i64) -> Result<i32, Err> {
                i32::try_from(number).map_err(|_| Err::invalid_value(Unexpected::Signed(number), &self))
            }
            fn visit_u64<Err: de::Error>(self, number: u64) -> Result<i32, Err> {
                i32::try_from(number).map_err(|_| Err::invalid_value(Unexpected::Unsigned(number), &self))
            }
        }
        deserializer.deserialize_any(EnumVisitor::<E>(PhantomData)).map(|value| OpenEnum(value, PhantomData))
    }
}

/// An integer field's value, read as jsonpb reads it: a JSON number, or a string holding
/// one (spaces around it allowed), which must be an integer in the field's range.
/// Errors are worded as Go's `encoding/json` words them.
pub struct GoNumber<T>(pub T);

/// The integer types of proto3 fields, by their Go names.
pub trait GoInteger: Sized + TryFrom<i64> + TryFrom<u64> + std::str::FromStr {
    const GO_TYPE: &'static str;
}

macro_rules! go_integer {
    ($($rust:ty => $go:literal),*) => {
        $(impl GoInteger for $rust {
            const GO_TYPE: &'static str = $go;
        })*
    };
}
go_integer!(i64 => "int64", u64 => "uint64", i32 => "int32", u32 => "uint32");

/// Go's error for a JSON value of kind `value` (e.g. `number 2.5`, `bool`) in a field of
/// Go type `go_type`.
fn cannot_unmarshal<E: de::Error>(value: impl fmt::Display, go_type: &str) -> E {
    E::custom(format_args!("json: cannot unmarshal {value} into Go value of type {go_type}"))
}

impl<'de, T: GoInteger> Deserialize<'de> for GoNumber<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NumberVisitor<T>(PhantomData<T>);
        impl<T: GoInteger> NumberVisitor<T> {
            fn integer<E: de::Error, N: Copy + fmt::Display>(number: N) -> Result<T, E>
            where
                T: TryFrom<N>,
            {
                T::try_from(number).map_err(|_| cannot_unmarshal(format_args!("number {number}"), T::GO_TYPE))
            }
        }
        impl<'de, T: GoInteger> Visitor<'de> for NumberVisitor<T> {
            type Value = T;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                write!(formatter, "an integer ({}) or a string holding one", T::GO_TYPE)
            }
            fn visit_i64<E: de::Error>(self, number: i64) -> Result<T, E> {
                Self::integer(number)
            }
            fn visit_u64<E: de::Error>(self, number: u64) -> Result<T, E> {
                Self::integer(number)
            }
            fn visit_f64<E: de::Error>(self, number: f64) -> Result<T, E> {
                Err(cannot_unmarshal(format_args!("number {number}"), T::GO_TYPE))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
                let literal = scan_number(text).map_err(E::custom)?;
                literal.parse().map_err(|_| cannot_unmarshal(format_args!("number {literal}"), T::GO_TYPE))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<T, E> {
                Err(cannot_unmarshal("bool", T::GO_TYPE))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<T, A::Error> {
                Err(cannot_unmarshal("array", T::GO_TYPE))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<T, A::Error> {
                Err(cannot_unmarshal("object", T::GO_TYPE))
            }
        }
        deserializer.deserialize_any(NumberVisitor(PhantomData)).map(GoNumber)
    }
}

/// The JSON number literal `text` holds, with spaces around it trimmed, or Go's scanner's
/// error for it (jsonpb unmarshals a quoted integer's raw contents as JSON, so spaces are
/// whitespace there; any other whitespace in a JSON string is escaped, which Go refuses).
fn scan_number(text: &str) -> Result<&str, String> {
    let is_space = |c: u8| c == b' ';
    let bytes = text.as_bytes();
    let start = bytes.iter().position(|&c| !is_space(c)).unwrap_or(bytes.len());
    if start == bytes.len() {
        return Err("unexpected end of JSON input".into());
    }
    let invalid = |at: usize, context: &str| {
        // Go's scanner reports the end of input as a space it could not take.
        let c = bytes.get(at).copied().unwrap_or(b' ');
        Err(format!("invalid character {} {context}", crate::go_scanner::quote_char(c)))
    };
    let digits = |mut at: usize| {
        while at < bytes.len() && bytes[at].is_ascii_digit() {
            at += 1;
        }
        at
    };
    let mut at = start;
    if bytes[at] == b'-' {
        at += 1;
        if at == bytes.len() || !bytes[at].is_ascii_digit() {
            return invalid(at, "in numeric literal");
        }
    } else if !bytes[at].is_ascii_digit() {
        return invalid(at, "looking for beginning of value");
    }
    at = if bytes[at] == b'0' { at + 1 } else { digits(at) };
    if at < bytes.len() && bytes[at] == b'.' {
        at += 1;
        if at == bytes.len() || !bytes[at].is_ascii_digit() {
            return invalid(at, "after decimal point in numeric literal");
        }
        at = digits(at);
    }
    if at < bytes.len() && matches!(bytes[at], b'e' | b'E') {
        at += 1;
        if at < bytes.len() && matches!(bytes[at], b'+' | b'-') {
            at += 1;
        }
        if at == bytes.len() || !bytes[at].is_ascii_digit() {
            return invalid(at, "in exponent of numeric literal");
        }
        at = digits(at);
    }
    let end = at;
    match bytes[end..].iter().position(|&c| !is_space(c)) {
        None => Ok(&text[start..end]),
        Some(offset) => invalid(end + offset, "after top-level value"),
    }
}

/// `text` with each byte that is not part of a valid UTF-8 character replaced by U+FFFD, as
/// Go's decoder reads JSON strings (serde refuses such strings); a character cut off by the
/// end of `text` is left as it is, for the rest of it may still arrive. Borrowed when there
/// is nothing to replace.
pub fn coerce_utf8(text: &[u8]) -> Cow<'_, [u8]> {
    let mut coerced = Vec::new();
    let mut rest = text;
    while let Err(error) = std::str::from_utf8(rest) {
        let Some(invalid) = error.error_len() else { break };
        let valid = error.valid_up_to();
        coerced.extend_from_slice(&rest[..valid]);
        for _ in 0..invalid {
            coerced.extend_from_slice("\u{fffd}".as_bytes());
        }
        rest = &rest[valid + invalid..];
    }
    if rest.len() == text.len() {
        return Cow::Borrowed(text);
    }
    coerced.extend_from_slice(rest);
    Cow::Owned(coerced)
}

/// Go's words for serde's "invalid type" error `message` (a JSON value of the wrong kind for
/// a bool, string, repeated or message field), if it is one: jsonpb reads a message as a
/// `map[string]json.RawMessage` and a repeated field as a `[]json.RawMessage`.
pub fn go_type_error(message: &str) -> Option<String> {
    let (found, expected) = message.strip_prefix("invalid type: ")?.split_once(", expected ")?;
    let kind = match found.split(' ').next()? {
        "boolean" => "bool",
        "integer" | "floating" => "number",
        "string" => "string",
        "sequence" => "array",
        "map" => "object",
        _ => return None,
    };
    let go_type = match expected {
        "a boolean" => "bool",
        "a string" => "string",
        "a sequence" => "[]json.RawMessage",
        _ if expected.starts_with("struct ") => "map[string]json.RawMessage",
        _ => return None,
    };
    Some(format!("json: cannot unmarshal {kind} into Go value of type {go_type}"))
}

/// Whether `message` is one of Go's, worded here as Go words it (serde's position is not
/// part of it).
pub fn is_go_message(message: &str) -> bool {
    message.starts_with(BASE64_ERROR_PREFIX) || message.starts_with("json: ") || message.starts_with("invalid character ") || message.starts_with("unexpected end of JSON input")
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
/// reports. Canonical base64 (what every client sends) takes the base64 crate's fast path,
/// which agrees with Go on it.
fn decode(src: &[u8]) -> Result<Vec<u8>, usize> {
    use base64::Engine;
    if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(src) {
        return Ok(decoded);
    }
    decode_as_go(src)
}

/// Go's decoding loop, for what is not canonical base64: line breaks, non-zero trailing
/// bits, errors and their offsets.
fn decode_as_go(src: &[u8]) -> Result<Vec<u8>, usize> {
    let is_line_break = |c: u8| c == b'\n' || c == b'\r';
    let skip_line_breaks = |mut at: usize| {
        while at < src.len() && is_line_break(src[at]) {
            at += 1;
        }
        at
    };
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
                si = skip_line_breaks(si);
                if si == src.len() {
                    return Err(src.len());
                }
                if src[si] != b'=' {
                    return Err(si - 1);
                }
                si += 1;
            }
            si = skip_line_breaks(si);
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
    fn bytes_that_are_not_utf8_read_as_replacement_characters_one_each() {
        let coerced = |text: &[u8]| String::from_utf8(coerce_utf8(text).into_owned()).unwrap();
        assert!(matches!(coerce_utf8(b"{\"a\":\"\xc3\xa9\"}"), Cow::Borrowed(_)));
        assert_eq!(coerced(b"n\xffme"), "n\u{fffd}me");
        // Go's decoder replaces each byte that starts no valid character.
        assert_eq!(coerced(b"a\xe2\x82b"), "a\u{fffd}\u{fffd}b");
        assert_eq!(coerced(b"\xed\xa0\x80"), "\u{fffd}\u{fffd}\u{fffd}");
        // A character cut off at the end may still be completed by what arrives next.
        assert_eq!(coerce_utf8(b"\xffa\xe2\x82").as_ref(), "\u{fffd}a".bytes().chain([0xe2, 0x82]).collect::<Vec<u8>>().as_slice());
    }

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
        // The fast path and Go's loop agree on canonical base64.
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bytes);
            assert_eq!(decode_as_go(encoded.as_bytes()), Ok(bytes.clone()));
            assert_eq!(decode(encoded.as_bytes()), Ok(bytes));
        }
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
    fn enums_take_names_and_any_32_bit_number() {
        use crate::etcdserverpb::range_request::SortTarget;
        let read = |json: &str| serde_json::from_str::<OpenEnum<SortTarget>>(json).map(|value| value.0);
        assert_eq!(read(r#""MOD""#).unwrap(), 3);
        assert_eq!(read("4").unwrap(), 4);
        assert_eq!(read("99").unwrap(), 99);
        assert_eq!(read("-1").unwrap(), -1);
        assert!(read(r#""BOGUS""#).is_err());
        assert!(read("2147483648").is_err());
        assert!(read("1.5").is_err());
    }

    #[test]
    fn integers_are_read_as_jsonpb_reads_them_with_gos_errors() {
        let read = |json: &str| serde_json::from_str::<GoNumber<i64>>(json).map(|n| n.0).map_err(|e| e.to_string());
        assert_eq!(read("2"), Ok(2));
        assert_eq!(read(r#""-7""#), Ok(-7));
        assert_eq!(read(r#"" 2  ""#), Ok(2), "spaces around a quoted number");
        assert!(read(r#""\t2""#).is_err(), "escaped whitespace: Go reads the escape");
        let error = |json: &str| {
            let message = read(json).unwrap_err();
            message.split(" at line ").next().unwrap_or_default().to_string()
        };
        // Each as etcd 3.5's gateway answers it.
        assert_eq!(error("2.5"), "json: cannot unmarshal number 2.5 into Go value of type int64");
        assert_eq!(error(r#""2.5""#), "json: cannot unmarshal number 2.5 into Go value of type int64");
        assert_eq!(error(r#""x""#), "invalid character 'x' looking for beginning of value");
        assert_eq!(error(r#""-""#), "invalid character ' ' in numeric literal");
        assert_eq!(error(r#""1x""#), "invalid character 'x' after top-level value");
        assert_eq!(error(r#""1.""#), "invalid character ' ' after decimal point in numeric literal");
        assert_eq!(error(r#""1e+""#), "invalid character ' ' in exponent of numeric literal");
        assert_eq!(error(r#""""#), "unexpected end of JSON input");
        assert_eq!(error("true"), "json: cannot unmarshal bool into Go value of type int64");
        assert_eq!(error("{}"), "json: cannot unmarshal object into Go value of type int64");
        assert_eq!(error(r#""99999999999999999999""#), "json: cannot unmarshal number 99999999999999999999 into Go value of type int64");
        let unsigned = serde_json::from_str::<GoNumber<u32>>("-1").err().unwrap().to_string();
        assert!(unsigned.starts_with("json: cannot unmarshal number -1 into Go value of type uint32"), "{unsigned}");
        assert!(is_go_message(&error("2.5")) && is_go_message(&error(r#""x""#)));
    }

    #[test]
    fn serdes_type_errors_in_gos_words() {
        let words = |json: &str| {
            let error = serde_json::from_str::<crate::etcdserverpb::TxnRequest>(json).err().unwrap().to_string();
            go_type_error(error.split(" at line ").next().unwrap_or_default())
        };
        // Each as etcd 3.4 and 3.5 answer it.
        let words_for = |kind: &str, go_type: &str| Some(format!("json: cannot unmarshal {kind} into Go value of type {go_type}"));
        assert_eq!(words("5"), words_for("number", "map[string]json.RawMessage"));
        assert_eq!(words(r#"{"compare":5}"#), words_for("number", "[]json.RawMessage"));
        assert_eq!(words(r#"{"success":{}}"#), words_for("object", "[]json.RawMessage"));
        assert_eq!(words(r#"{"success":[true]}"#), words_for("bool", "map[string]json.RawMessage"));
        assert_eq!(words(r#"{"success":[{"request_range":{"keys_only":"yes"}}]}"#), words_for("string", "bool"));
        assert_eq!(words(r#"{"success":[{"request_range":{"keys_only":[1]}}]}"#), words_for("array", "bool"));
        assert_eq!(words(r#"{"success":[{"request_range":{"keys_only":1.5}}]}"#), words_for("number", "bool"));
        assert_eq!(go_type_error("missing field `x`"), None);
    }

    #[test]
    fn json_fields_decode_through_it() {
        let ok: Base64Bytes<Vec<u8>> = serde_json::from_str(r#""YQ==""#).unwrap();
        assert_eq!(ok.0, b"a");
        let error = serde_json::from_str::<Base64Bytes<Vec<u8>>>(r#""YQ""#).err().unwrap();
        assert!(error.to_string().starts_with("illegal base64 data at input byte 0"), "{error}");
        let array: Base64Bytes<Vec<u8>> = serde_json::from_str("[97, 98]").unwrap();
        assert_eq!(array.0, b"ab");
        assert!(serde_json::from_str::<Base64Bytes<Vec<u8>>>("[300]").is_err());
        let number = serde_json::from_str::<Base64Bytes<Vec<u8>>>("5").err().unwrap().to_string();
        assert!(number.starts_with("json: cannot unmarshal number into Go value of type []uint8"), "{number}");
    }
}

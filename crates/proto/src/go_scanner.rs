//! Go's `encoding/json` scanner, for its words: where a request body is not JSON, etcd's HTTP
//! gateway answers with the message of the `json.Decoder` that read it (`invalid character
//! '}' looking for beginning of object key string`), and so does etcdgate. serde_json still
//! does the parsing; this only tells, once serde has refused a body, what Go's decoder would
//! have found first: a syntax error (named as Go names it), a value cut off, or neither.

/// Go's `maxNestingDepth`: deeper objects and arrays are a syntax error.
const MAX_DEPTH: usize = 10_000;

/// What the scanner is inside of, innermost last (Go's `parseState`).
#[derive(Clone, Copy)]
enum Nest {
    ObjectKey,
    ObjectValue,
    Array,
}

/// Where in a value the scanner is (Go's `step` functions).
#[derive(Clone, Copy)]
enum Step {
    BeginValue,
    BeginValueOrEmpty,
    BeginStringOrEmpty,
    BeginString,
    EndValue,
    InString,
    InStringEscape,
    /// Hex digits of a `\u` escape read so far.
    InUnicodeEscape(u8),
    Minus,
    Digits,
    Zero,
    Dot,
    Fraction,
    Exponent,
    ExponentSign,
    ExponentDigits,
    /// A literal (`true`, `false`, `null`) and how many of its bytes were read.
    Literal(&'static [u8], usize),
}

/// How Go's `json.Decoder` finds the first JSON value of a body.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstValue {
    /// Whole and well-formed (what follows it is not read, as the decoder does not read it).
    Whole,
    /// Cut off by the end of the input (Go: `unexpected EOF`, or more to come on a stream).
    CutOff,
    /// A syntax error, in Go's words.
    Invalid(String),
}

/// Scans the first JSON value of `input` as Go's decoder does before it decodes anything: a
/// syntax error anywhere in that value is the error, whatever else is wrong with it.
pub fn first_value(input: &[u8]) -> FirstValue {
    let mut nests: Vec<Nest> = Vec::new();
    let mut step = Step::BeginValue;
    for &c in input {
        step = match next(&mut nests, step, c) {
            Scanned::Next(next) => next,
            Scanned::Whole => return FirstValue::Whole,
            Scanned::Invalid(context) => return FirstValue::Invalid(format!("invalid character {} {context}", quote_char(c))),
        };
    }
    // A number (or a literal) at the top level is whole once the input ends.
    match step {
        Step::EndValue | Step::Digits | Step::Zero | Step::Fraction | Step::ExponentDigits if nests.is_empty() => FirstValue::Whole,
        _ => FirstValue::CutOff,
    }
}

/// What one byte did.
enum Scanned {
    Next(Step),
    /// The first value is whole.
    Whole,
    /// A syntax error, with Go's words for where it is.
    Invalid(String),
}

fn next(nests: &mut Vec<Nest>, step: Step, c: u8) -> Scanned {
    let is_space = is_space(c);
    let invalid = |context: &str| Scanned::Invalid(context.to_string());
    Scanned::Next(match step {
        Step::BeginValue | Step::BeginValueOrEmpty if is_space => step,
        Step::BeginValueOrEmpty if c == b']' => return end_value(nests, c),
        Step::BeginValue | Step::BeginValueOrEmpty => match c {
            b'{' | b'[' => {
                nests.push(if c == b'{' { Nest::ObjectKey } else { Nest::Array });
                if nests.len() > MAX_DEPTH {
                    return invalid("exceeded max depth");
                }
                if c == b'{' {
                    Step::BeginStringOrEmpty
                } else {
                    Step::BeginValueOrEmpty
                }
            }
            b'"' => Step::InString,
            b'-' => Step::Minus,
            b'0' => Step::Zero,
            b'1'..=b'9' => Step::Digits,
            b't' => Step::Literal(b"true", 1),
            b'f' => Step::Literal(b"false", 1),
            b'n' => Step::Literal(b"null", 1),
            _ => return invalid("looking for beginning of value"),
        },
        Step::BeginStringOrEmpty | Step::BeginString if is_space => step,
        Step::BeginStringOrEmpty if c == b'}' => {
            if let Some(nest) = nests.last_mut() {
                *nest = Nest::ObjectValue;
            }
            return end_value(nests, c);
        }
        Step::BeginStringOrEmpty | Step::BeginString if c == b'"' => Step::InString,
        Step::BeginStringOrEmpty | Step::BeginString => return invalid("looking for beginning of object key string"),
        Step::EndValue => return end_value(nests, c),
        Step::InString => match c {
            b'"' => Step::EndValue,
            b'\\' => Step::InStringEscape,
            0..0x20 => return invalid("in string literal"),
            _ => step,
        },
        Step::InStringEscape => match c {
            b'b' | b'f' | b'n' | b'r' | b't' | b'\\' | b'/' | b'"' => Step::InString,
            b'u' => Step::InUnicodeEscape(0),
            _ => return invalid("in string escape code"),
        },
        Step::InUnicodeEscape(3) if c.is_ascii_hexdigit() => Step::InString,
        Step::InUnicodeEscape(read) if c.is_ascii_hexdigit() => Step::InUnicodeEscape(read + 1),
        Step::InUnicodeEscape(_) => return invalid("in \\u hexadecimal character escape"),
        Step::Minus => match c {
            b'0' => Step::Zero,
            b'1'..=b'9' => Step::Digits,
            _ => return invalid("in numeric literal"),
        },
        Step::Digits | Step::Fraction | Step::ExponentDigits if c.is_ascii_digit() => step,
        Step::Digits | Step::Zero if c == b'.' => Step::Dot,
        Step::Digits | Step::Zero | Step::Fraction if matches!(c, b'e' | b'E') => Step::Exponent,
        // A number ends at the first byte that cannot continue it.
        Step::Digits | Step::Zero | Step::Fraction | Step::ExponentDigits => return end_value(nests, c),
        Step::Dot if c.is_ascii_digit() => Step::Fraction,
        Step::Dot => return invalid("after decimal point in numeric literal"),
        Step::Exponent if matches!(c, b'+' | b'-') => Step::ExponentSign,
        Step::Exponent | Step::ExponentSign if c.is_ascii_digit() => Step::ExponentDigits,
        Step::Exponent | Step::ExponentSign => return invalid("in exponent of numeric literal"),
        Step::Literal(word, read) if c == word[read] && read + 1 == word.len() => Step::EndValue,
        Step::Literal(word, read) if c == word[read] => Step::Literal(word, read + 1),
        Step::Literal(word, read) => {
            return invalid(&format!("in literal {} (expecting {})", String::from_utf8_lossy(word), quote_char(word[read])));
        }
    })
}

/// `c` after a value (Go's `stateEndValue`): what separates or closes it.
fn end_value(nests: &mut Vec<Nest>, c: u8) -> Scanned {
    let is_space = is_space(c);
    let close = |nests: &mut Vec<Nest>| {
        nests.pop();
        if nests.is_empty() {
            Scanned::Whole
        } else {
            Scanned::Next(Step::EndValue)
        }
    };
    let invalid = |context: &str| Scanned::Invalid(context.to_string());
    match nests.last_mut() {
        None => Scanned::Whole,
        Some(_) if is_space => Scanned::Next(Step::EndValue),
        Some(nest @ Nest::ObjectKey) if c == b':' => {
            *nest = Nest::ObjectValue;
            Scanned::Next(Step::BeginValue)
        }
        Some(Nest::ObjectKey) => invalid("after object key"),
        Some(nest @ Nest::ObjectValue) if c == b',' => {
            *nest = Nest::ObjectKey;
            Scanned::Next(Step::BeginString)
        }
        Some(Nest::ObjectValue) if c == b'}' => close(nests),
        Some(Nest::ObjectValue) => invalid("after object key:value pair"),
        Some(Nest::Array) if c == b',' => Scanned::Next(Step::BeginValue),
        Some(Nest::Array) if c == b']' => close(nests),
        Some(Nest::Array) => invalid("after array element"),
    }
}

/// Go's `isSpace`: the whitespace JSON allows between tokens.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

/// A byte as Go's scanner quotes it in its messages (`quoteChar`): in single quotes, escaped
/// as `strconv.Quote` escapes the character of that code point.
pub fn quote_char(c: u8) -> String {
    match c {
        b'\'' => "'\\''".to_string(),
        b'"' => "'\"'".to_string(),
        0x07 => "'\\a'".to_string(),
        0x08 => "'\\b'".to_string(),
        0x0c => "'\\f'".to_string(),
        b'\n' => "'\\n'".to_string(),
        b'\r' => "'\\r'".to_string(),
        b'\t' => "'\\t'".to_string(),
        0x0b => "'\\v'".to_string(),
        b'\\' => "'\\\\'".to_string(),
        0..0x20 => format!("'\\x{c:02x}'"),
        // Not printable for Go: DEL, the C1 controls, the no-break space and the soft hyphen.
        0x7f..=0xa0 | 0xad => format!("'\\u{c:04x}'"),
        _ => format!("'{}'", c as char),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages of etcd 3.5.1's gateway for the same bodies (POST /v3/kv/put); the quoting of
    /// every byte was compared with it as well.
    #[test]
    fn syntax_errors_are_worded_as_gos() {
        for (body, go) in [
            (r#"{"1e99name": "ZW\uw=", "l"#, "invalid character 'w' in \\u hexadecimal character escape"),
            (r#"{"key": "a\u00"}"#, "invalid character '\"' in \\u hexadecimal character escape"),
            (r#"{"key" "a"}"#, "invalid character '\"' after object key"),
            (r#"{"key":"YQ==",}"#, "invalid character '}' looking for beginning of object key string"),
            ("not json", "invalid character 'o' in literal null (expecting 'u')"),
            ("\u{0}\u{1}", "invalid character '\\x00' looking for beginning of value"),
            (r#"{"a":1 "b":2}"#, "invalid character '\"' after object key:value pair"),
            ("[1 2]", "invalid character '2' after array element"),
            ("[1,]", "invalid character ']' looking for beginning of value"),
            (r#"{"a":"\x"}"#, "invalid character 'x' in string escape code"),
            ("{\"a\":\"\t\"}", "invalid character '\\t' in string literal"),
            (r#"{"a":-x}"#, "invalid character 'x' in numeric literal"),
            (r#"{"a":1.}"#, "invalid character '}' after decimal point in numeric literal"),
            (r#"{"a":1e+}"#, "invalid character '}' in exponent of numeric literal"),
            (r#"{"a":tru}"#, "invalid character '}' in literal true (expecting 'e')"),
            (r#"{"a":01}"#, "invalid character '1' after object key:value pair"),
            ("{'a':1}", "invalid character '\\'' looking for beginning of object key string"),
            ("\u{feff}{}", "invalid character 'ï' looking for beginning of value"),
            ("[1,2,}", "invalid character '}' looking for beginning of value"),
        ] {
            assert_eq!(first_value(body.as_bytes()), FirstValue::Invalid(go.to_string()), "{body}");
        }
    }

    #[test]
    fn whole_and_cut_off_values_are_told_apart() {
        for body in [
            r#"{"key":"YQ==","value":"YQ=="}"#,
            r#" {"a":[1,-2.5e+3,true,false,null,{"b":{}},[]],"c":"\u00e9\n"} trailing garbage"#,
            "[]",
            "{}x",
            "12x",
            "12",
            "null",
            r#""a" "b""#,
        ] {
            assert_eq!(first_value(body.as_bytes()), FirstValue::Whole, "{body}");
        }
        for body in [r#"{"key":"YQ=="#, r#"{"a":[1,"#, "", "  ", "nul", r#""abc"#, "-", "1."] {
            assert_eq!(first_value(body.as_bytes()), FirstValue::CutOff, "{body}");
        }
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert_eq!(first_value(deep.as_bytes()), FirstValue::Invalid("invalid character '[' exceeded max depth".into()));
    }

    #[test]
    fn bytes_are_quoted_as_go_quotes_them() {
        assert_eq!(quote_char(b'x'), "'x'");
        assert_eq!(quote_char(0x1b), "'\\x1b'");
        assert_eq!(quote_char(0x7f), "'\\u007f'");
        assert_eq!(quote_char(0x85), "'\\u0085'");
        assert_eq!(quote_char(0xa0), "'\\u00a0'");
        assert_eq!(quote_char(0xad), "'\\u00ad'");
        assert_eq!(quote_char(0xae), "'®'");
        assert_eq!(quote_char(0xc4), "'Ä'");
        assert_eq!(quote_char(b'\\'), "'\\\\'");
    }
}

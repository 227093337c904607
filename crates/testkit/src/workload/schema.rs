//! The workload's key space, as APISIX lays out its configuration: `/apisix/<resource>/<id>`
//! with JSON values. Every value the writer puts carries the sequence number of its write
//! (`"seq":N`), so etcd's history tells which write each event came from.

/// Everything the workload touches is under this prefix (`/apisix/` .. `/apisix0`).
pub const PREFIX: &str = "/apisix/";
/// `range_end` of [`PREFIX`]: its last byte plus one.
pub const PREFIX_END: &str = "/apisix0";

/// Resource types APISIX keeps in etcd and reads one prefix at a time.
pub const RESOURCES: [&str; 8] =
    ["routes", "upstreams", "services", "ssls", "consumers", "plugin_configs", "global_rules", "stream_routes"];

/// `/apisix/<resource>/`.
pub fn resource_prefix(resource: &str) -> String {
    format!("{PREFIX}{resource}/")
}

/// The key range of one resource prefix: `(key, range_end)`.
pub fn resource_range(resource: &str) -> (Vec<u8>, Vec<u8>) {
    let key = resource_prefix(resource).into_bytes();
    let end = prefix_end(&key);
    (key, end)
}

/// The `range_end` that makes a range of every key starting with `prefix` (etcd's rule: the
/// prefix with its last byte incremented, trailing 0xff bytes dropped; empty means "to the end").
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `/apisix/<resource>/<id, 8 digits>`: ids sort as numbers, so id ranges are key ranges.
pub fn key(resource: &str, id: u64) -> Vec<u8> {
    format!("{}{id:08}", resource_prefix(resource)).into_bytes()
}

/// An APISIX-like JSON object for `id`, carrying the write's sequence number.
pub fn value(resource: &str, id: u64, seq: u64) -> Vec<u8> {
    format!(
        r#"{{"id":"{id}","seq":{seq},"desc":"etcdgate-testkit workload {resource}","uri":"/{resource}/{id}/*","upstream":{{"type":"roundrobin","nodes":{{"127.0.0.1:1980":1}}}}}}"#
    )
    .into_bytes()
}

/// The sequence number in a value written by [`value`]; `None` for anything else.
pub fn seq_of(value: &[u8]) -> Option<u64> {
    let json: serde_json::Value = serde_json::from_slice(value).ok()?;
    json.get("seq")?.as_u64()
}

/// A small deterministic random number generator (xorshift64*), so a seed replays a run.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`; 0 when `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_carry_their_sequence_number() {
        assert_eq!(seq_of(&value("routes", 7, 42)), Some(42));
        assert_eq!(seq_of(b"not json"), None);
        assert_eq!(seq_of(br#"{"id":"1"}"#), None);
    }

    #[test]
    fn prefix_ends_follow_etcd() {
        assert_eq!(prefix_end(PREFIX.as_bytes()), PREFIX_END.as_bytes());
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
        assert_eq!(resource_range("routes"), (b"/apisix/routes/".to_vec(), b"/apisix/routes0".to_vec()));
    }

    #[test]
    fn keys_sort_by_id() {
        assert!(key("routes", 9) < key("routes", 10));
        assert!(key("routes", 10).starts_with(resource_prefix("routes").as_bytes()));
    }
}

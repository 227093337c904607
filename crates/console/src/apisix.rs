//! The console's APISIX-aware key browser: APISIX's configuration as it lies in etcd (every key
//! under its prefix, `/apisix` by default), by resource type, and what in it APISIX would skip,
//! ignore or serve wrongly. Read-only.
//!
//! Reading ([`read_prefix`]: pages of serializable Range calls at one revision) and judging
//! ([`analyze`]: pure, unit tested) are apart. The judgement knows where APISIX 2.x and 3.x keep
//! each resource type (`apisix/constants.lua`, `apisix/admin/*.lua`), how its loader treats a
//! value (`apisix/core/config_etcd.lua`) and which ids it resolves while serving, and what it
//! does when one names nothing (`apisix/init.lua` and the plugins), as cited where each check is.
//! It checks what can be known from etcd alone: not APISIX's JSON schemas nor its plugins'.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use etcdgate_proto::etcdserverpb::{kv_client::KvClient, RangeRequest, RangeResponse};
use etcdgate_cache::KeyRange;
use etcdgate_proto::mvccpb::KeyValue;
use etcdgate_upstream::{Pool, RetryPolicy, Target, Timing};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::calls::{call_as, status_message, with_token, Credentials};
use crate::inspect::Severity;

/// Keys whose values are asked for per Range call: a page of APISIX objects stays far below
/// gRPC's message limits, however many routes there are.
const PAGE_KEYS: usize = 1000;

/// Deadline of each page.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// A page at the first page's revision, asked of a member not there yet, is asked again this
/// many times, a little later each time.
const FUTURE_RETRIES: u32 = 10;

/// Items listed per resource type; the others are counted and checked all the same.
pub const LISTED_PER_TYPE: usize = 500;

/// Problems listed per item (and unknown directories named); the others are counted.
const LISTED_PER_ITEM: usize = 20;

/// etcd's default `--max-request-bytes` (1.5 MiB), which is also the largest body APISIX's
/// Admin API accepts (`MAX_REQ_BODY` in `apisix/admin/init.lua`).
pub const ETCD_REQUEST_LIMIT: usize = 1536 * 1024;

/// Longest one-line summary, in characters.
const SUMMARY_CHARS: usize = 160;

const COMPACTED: &str = "required revision has been compacted";
const FUTURE_REVISION: &str = "required revision is a future revision";

/// The keys under a prefix, as etcd held them at one revision.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadPrefix {
    /// The revision every page was read at.
    pub revision: i64,
    /// Sorted by key, each key once.
    pub kvs: Vec<KeyValue>,
}

/// Reads every key that starts with `prefix` (bytes as given: pass `/apisix/` to leave out
/// `/apisix2/...`), through the pool, at one revision however long it takes: first the keys
/// alone (one serializable Range, `keys_only`), then their values in pages of [`PAGE_KEYS`]
/// keys, each page the exact range from its first key to the next page's, at that revision.
/// (Paging with `limit` would cost etcd a walk over the rest of the range for every page, for
/// the `count` it always computes: 51 pages of a 50k-route configuration took 3.9 s that way,
/// against etcdctl's 0.5 s for one Range.) If a compaction overtakes that revision, the read
/// starts over once. With etcd's auth on, etcd gives only what `credentials` may read.
pub async fn read_prefix(pool: &Pool, credentials: Credentials<'_>, prefix: &[u8]) -> Result<ReadPrefix, String> {
    let mut restarted = false;
    loop {
        match read_pages(pool, credentials, prefix).await {
            Err(error) if !restarted && error.contains(COMPACTED) => restarted = true,
            result => return result,
        }
    }
}

/// One pass over the prefix: the keys, then the values page after page.
async fn read_pages(pool: &Pool, credentials: Credentials<'_>, prefix: &[u8]) -> Result<ReadPrefix, String> {
    let range = KeyRange::prefix(prefix);
    let whole = RangeRequest {
        key: range.request_key(),
        range_end: range.end.clone(),
        keys_only: true,
        serializable: true,
        ..RangeRequest::default()
    };
    let listed = read_page(pool, credentials, whole).await?;
    let revision = listed.header.map(|h| h.revision).filter(|r| *r > 0).ok_or_else(|| "etcd's answer has no revision".to_string())?;
    let keys: Vec<Vec<u8>> = listed.kvs.into_iter().map(|kv| kv.key).collect();
    let mut read = ReadPrefix { revision, kvs: Vec::with_capacity(keys.len()) };
    for (index, page) in keys.chunks(PAGE_KEYS).enumerate() {
        let Some(first) = page.first() else { continue };
        let page_end = keys.get((index + 1) * PAGE_KEYS).cloned().unwrap_or_else(|| range.end.clone());
        let request = RangeRequest {
            key: first.clone(),
            range_end: page_end,
            revision,
            serializable: true,
            ..RangeRequest::default()
        };
        read.kvs.extend(read_page(pool, credentials, request).await?.kvs);
    }
    Ok(read)
}

/// One page. A member behind the revision asked for is asked again (the pool may pick
/// another), as it catches up in moments.
async fn read_page(pool: &Pool, credentials: Credentials<'_>, request: RangeRequest) -> Result<RangeResponse, String> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let call = call_as(pool, credentials, |token| {
            let request = request.clone();
            async move {
                pool.call(&Target::Any, RetryPolicy::Read, Timing::Unmeasured, |connection| {
                    let request = with_token(request.clone(), &token);
                    async move { KvClient::new(connection).max_decoding_message_size(usize::MAX).range(request).await }
                })
                .await
            }
        });
        match tokio::time::timeout(PAGE_TIMEOUT, call).await {
            Ok(Ok(answer)) => return Ok(answer.into_inner()),
            Ok(Err(status)) if status.message().contains(FUTURE_REVISION) && attempt < FUTURE_RETRIES => {
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            Ok(Err(status)) => return Err(status_message(&status)),
            Err(_) => return Err(format!("no answer to Range within {PAGE_TIMEOUT:?}")),
        }
    }
}

/// What is under the prefix, by resource type, and what is wrong with it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ApisixReport {
    /// The prefix judged, without its trailing `/`.
    pub prefix: String,
    /// The resource types found (with items, a placeholder or a problem), in APISIX's order,
    /// then `unknown`: the keys in directories that are no APISIX resource type.
    pub types: Vec<TypeReport>,
    pub totals: Totals,
}

impl ApisixReport {
    /// The most severe problem's severity, `None` when there is none.
    pub fn worst(&self) -> Option<Severity> {
        let counts = &self.totals.problems;
        [(counts.critical, Severity::Critical), (counts.warning, Severity::Warning), (counts.info, Severity::Info)]
            .into_iter()
            .find(|(count, _)| *count > 0)
            .map(|(_, severity)| severity)
    }
}

/// One resource type: a directory under the prefix (`routes`, `ssl`, ...).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TypeReport {
    /// Its directory under the prefix (`data_plane/server_info`); for a resource kept under
    /// another's items (`consumers/<username>/credentials/<id>`), its own part (`credentials`).
    pub name: String,
    /// What APISIX keeps there.
    pub about: String,
    /// Whether it is an APISIX resource type (or the APISIX Dashboard's).
    pub known: bool,
    /// Whether its directory placeholder (APISIX's `init_dir` at `<prefix>/<name>/`) is there.
    pub placeholder: bool,
    /// Items (keys other than the placeholder).
    pub count: u64,
    /// Bytes of the items' values.
    pub bytes: u64,
    /// The newest item's mod_revision, 0 without items.
    pub newest_mod_revision: i64,
    /// Problems of the type as a whole (those of one item are on the item).
    pub problems: Vec<Problem>,
    /// At most [`LISTED_PER_TYPE`] items, sorted by key: chosen by their worst problem (most
    /// severe first), then by key.
    pub items: Vec<Item>,
    /// Items not listed.
    pub truncated: u64,
}

/// One key of a resource type.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Item {
    /// The whole key (invalid UTF-8 replaced).
    pub key: String,
    /// The id APISIX knows it by: the key after `<prefix>/<type>/`. Secrets have two parts
    /// (`vault/1`), credentials three (`jack/credentials/1`); the plugin list none.
    pub id: String,
    /// What it is, in one line (never a secret: no keys, certificates nor plugin settings).
    pub summary: String,
    pub mod_revision: i64,
    /// Bytes of its value.
    pub size: u64,
    /// Most severe first, at most 20.
    pub problems: Vec<Problem>,
    /// Problems beyond those listed.
    pub unlisted_problems: u64,
}

/// Something wrong, or worth knowing, about an item or a resource type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub severity: Severity,
    pub kind: ProblemKind,
    pub text: String,
}

/// The checks [`analyze`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The value is not JSON: APISIX does not load it.
    InvalidJson,
    /// JSON, but not the object (for the plugin list, array) APISIX loads.
    WrongShape,
    /// An id in the value (or a credential's consumer in its key) names nothing APISIX has.
    DanglingReference,
    /// A `$secret://` reference names a secret manager configuration that does not exist.
    MissingSecret,
    /// The value's `id` (a consumer's `username`) is not the one in its key.
    IdMismatch,
    /// The value is larger than etcd's default request limit.
    TooLarge,
    /// The key is bound to a lease: it goes when the lease expires.
    Leased,
    /// Enabled routes that match exactly the same requests: only one can ever be used.
    DuplicateRoute,
    /// A directory APISIX 3.x no longer reads (its 2.x name).
    RenamedDirectory,
    /// A directory with items but without APISIX's `init_dir` placeholder.
    MissingPlaceholder,
    /// Keys in a directory that is no APISIX resource type.
    UnknownType,
}

/// Figures over every key read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Keys read.
    pub keys: u64,
    /// Bytes of their values.
    pub bytes: u64,
    /// Keys that are items of a resource type, known or not.
    pub items: u64,
    /// Directory placeholders (`<prefix>/<type>/`): neither items nor problems.
    pub placeholders: u64,
    /// Keys that start with the prefix but are not under `<prefix>/` (the prefix itself,
    /// another APISIX's `/apisix2/...`): not judged.
    pub outside: u64,
    pub problems: ProblemCounts,
}

/// Problems by severity, listed or not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProblemCounts {
    pub info: u64,
    pub warning: u64,
    pub critical: u64,
}

impl ProblemCounts {
    fn add(&mut self, severity: Severity) {
        match severity {
            Severity::Info => self.info += 1,
            Severity::Warning => self.warning += 1,
            Severity::Critical => self.critical += 1,
        }
    }
}

/// Where a resource type's keys are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `<dir>/<id>`.
    Dir,
    /// The one key `<dir>`, holding a JSON array (`<prefix>/plugins`).
    Single,
    /// `<parent>/<parent id>/<dir>/<id>`: each belongs to an item of the `parent` directory.
    Sub { parent: &'static str },
}

/// A resource type APISIX (or its Dashboard) keeps under the prefix.
struct Kind {
    dir: &'static str,
    /// The type references name: the 3.x name of a directory 2.x named otherwise.
    name: &'static str,
    /// One item, in problems' text.
    one: &'static str,
    about: &'static str,
    layout: Layout,
    /// Whether APISIX loads it (so must be able to decode it), rather than only write it
    /// (`data_plane/server_info`) or leave it to the Dashboard (`scripts`).
    loaded: bool,
    /// Whether `apisix init` writes its `init_dir` placeholder: the directories APISIX watches
    /// (`HTTP_ETCD_DIRECTORY` and `STREAM_ETCD_DIRECTORY` in `apisix/constants.lua`).
    placeholder: bool,
    /// The value's field that repeats the key's id.
    id_field: Option<&'static str>,
    /// The 3.x directory that replaced this 2.x one.
    renamed_to: Option<&'static str>,
}

const fn kind(dir: &'static str, one: &'static str, about: &'static str) -> Kind {
    let (layout, loaded, placeholder, id_field, renamed_to) = (Layout::Dir, true, true, Some("id"), None);
    Kind { dir, name: dir, one, about, layout, loaded, placeholder, id_field, renamed_to }
}

/// APISIX's resource types, 2.x and 3.x: `apisix/admin/init.lua` (Admin API resources),
/// `apisix/admin/resource.lua` (keys), `apisix/constants.lua` (watched directories, 2.15
/// and 3.x), the `core.config.new` calls that load them; `ssl` and `proto` are 2.x's names,
/// renamed in 3.0 (apache/apisix#7622) with no migration of the data.
const KINDS: &[Kind] = &[
    kind("routes", "route", "HTTP routes"),
    kind("services", "service", "services: plugins, upstream and hosts shared by routes"),
    kind("upstreams", "upstream", "upstreams: backend nodes and how to balance them"),
    Kind { id_field: Some("username"), ..kind("consumers", "consumer", "consumers (API users), keyed by username") },
    Kind {
        layout: Layout::Sub { parent: "consumers" },
        placeholder: false,
        ..kind("credentials", "credential", "consumers' credentials, at consumers/<username>/credentials/<id> (3.11+)")
    },
    kind("consumer_groups", "consumer group", "plugins shared by groups of consumers (3.0+)"),
    kind("ssls", "SSL certificate", "certificates, by SNI (2.x kept them in ssl)"),
    Kind { name: "ssls", renamed_to: Some("ssls"), ..kind("ssl", "SSL certificate", "certificates, where APISIX 2.x kept them") },
    kind("plugin_configs", "plugin config", "plugin sets shared by routes"),
    kind("global_rules", "global rule", "plugins run on every request"),
    kind("stream_routes", "stream route", "TCP and UDP routes"),
    kind("protos", "proto", "protobuf definitions for grpc-transcode (2.x kept them in proto)"),
    Kind { name: "protos", renamed_to: Some("protos"), ..kind("proto", "proto", "protobuf definitions, where 2.x kept them") },
    kind("secrets", "secret manager configuration", "secret manager configurations, at secrets/<manager>/<id> (3.2+)"),
    kind("plugin_metadata", "plugin metadata", "plugins' own settings, keyed by plugin name"),
    Kind { layout: Layout::Single, id_field: None, ..kind("plugins", "plugin list", "the plugins enabled, for data planes") },
    Kind {
        layout: Layout::Sub { parent: "services" },
        placeholder: false,
        ..kind("graphql_cost_decorations", "GraphQL cost decoration", "services' GraphQL cost decorations (APISIX master)")
    },
    Kind {
        loaded: false,
        placeholder: false,
        ..kind("data_plane/server_info", "server info", "APISIX instances' reports (server-info plugin), each on a lease")
    },
    Kind { loaded: false, placeholder: false, ..kind("scripts", "script", "the APISIX Dashboard's orchestration scripts") },
];

/// A field of one resource type that names an item of another, resolved by APISIX while it
/// serves.
struct Reference {
    /// The types whose values hold it (by [`Kind::name`]).
    from: &'static [&'static str],
    /// Field names separated by `.`; `*` is every member of an object, a trailing `[]` every
    /// element of an array; `@parent` is the item's parent in its key. A plugin turned off
    /// (`_meta.disable`) is not looked into.
    path: &'static str,
    /// The type named (by [`Kind::name`]).
    to: &'static str,
    severity: Severity,
    /// What APISIX does when the id names nothing.
    effect: &'static str,
}

/// The ids APISIX resolves at run time, and what it does when one names nothing (file
/// references to apache/apisix, the same in 2.15 and 3.x unless said):
const REFERENCES: &[Reference] = &[
    // init.lua handle_upstream: `apisix_upstream.get_by_id` fails -> exit(502).
    Reference {
        from: &["routes"],
        path: "upstream_id",
        to: "upstreams",
        severity: Severity::Critical,
        effect: "APISIX answers its requests with 502",
    },
    // plugin.lua merge_service_route copies the service's upstream_id to routes without one.
    Reference {
        from: &["services"],
        path: "upstream_id",
        to: "upstreams",
        severity: Severity::Critical,
        effect: "routes of this service without an upstream of their own get 502",
    },
    // init.lua stream_preread_phase: no upstream -> ngx_exit(1); no service -> exit.
    Reference {
        from: &["stream_routes"],
        path: "upstream_id",
        to: "upstreams",
        severity: Severity::Critical,
        effect: "APISIX closes its connections",
    },
    Reference {
        from: &["stream_routes"],
        path: "service_id",
        to: "services",
        severity: Severity::Critical,
        effect: "APISIX closes its connections",
    },
    // init.lua http_access_phase: `service_fetch` fails -> exit(404).
    Reference {
        from: &["routes"],
        path: "service_id",
        to: "services",
        severity: Severity::Critical,
        effect: "APISIX answers its requests with 404",
    },
    // init.lua http_access_phase: `plugin_config.get` fails -> exit(503).
    Reference {
        from: &["routes"],
        path: "plugin_config_id",
        to: "plugin_configs",
        severity: Severity::Critical,
        effect: "APISIX answers its requests with 503",
    },
    // init.lua http_access_phase: `consumer_group.get` fails -> exit(503) (3.0+).
    Reference {
        from: &["consumers"],
        path: "group_id",
        to: "consumer_groups",
        severity: Severity::Critical,
        effect: "requests authenticated as this consumer get 503",
    },
    // init.lua resolve_upstream_client_cert: no such ssl -> 502.
    Reference {
        from: &["upstreams"],
        path: "tls.client_cert_id",
        to: "ssls",
        severity: Severity::Critical,
        effect: "requests to this upstream get 502",
    },
    Reference {
        from: &["routes", "services", "stream_routes"],
        path: "upstream.tls.client_cert_id",
        to: "ssls",
        severity: Severity::Critical,
        effect: "requests to its upstream get 502",
    },
    // plugins/traffic-split.lua access: checks every upstream_id of its rules -> 500.
    Reference {
        from: &["routes", "services", "plugin_configs"],
        path: "plugins.traffic-split.rules[].weighted_upstreams[].upstream_id",
        to: "upstreams",
        severity: Severity::Critical,
        effect: "traffic-split answers its requests with 500",
    },
    // plugins/{key,basic,jwt,hmac}-auth.lua: no anonymous consumer -> 401 (3.11+).
    Reference {
        from: &["routes", "services", "plugin_configs", "global_rules"],
        path: "plugins.*.anonymous_consumer",
        to: "consumers",
        severity: Severity::Critical,
        effect: "requests without valid credentials get 401 instead of passing as the anonymous consumer",
    },
    // plugins/grpc-transcode.lua access: no proto -> logs and returns, no transcoding.
    Reference {
        from: &["routes", "services", "plugin_configs"],
        path: "plugins.grpc-transcode.proto_id",
        to: "protos",
        severity: Severity::Critical,
        effect: "grpc-transcode passes requests on untranscoded",
    },
    // stream/router/ip_port.lua skips subordinate routes; stream/xrpc/sdk.lua finds them by
    // their superior only.
    Reference {
        from: &["stream_routes"],
        path: "protocol.superior_id",
        to: "stream_routes",
        severity: Severity::Warning,
        effect: "this subordinate route is never used",
    },
    // consumer.lua construct_consumer_data: "a wild credential has appeared!", not used.
    Reference {
        from: &["credentials"],
        path: "@parent",
        to: "consumers",
        severity: Severity::Warning,
        effect: "APISIX ignores the credential",
    },
    // admin/services.lua: decorations left behind by a deleted service are inert.
    Reference {
        from: &["graphql_cost_decorations"],
        path: "@parent",
        to: "services",
        severity: Severity::Info,
        effect: "the decoration is inert",
    },
];

/// How `$secret://<manager>/<id>/<key>` references start (`apisix/secret.lua`, 3.2+).
const SECRET_PREFIX: &str = "$secret://";

/// Where a key is, within the tree.
enum Place<'a> {
    Placeholder(Option<usize>),
    Item { kind: Option<usize>, dir: &'a str, id: &'a str, parent: Option<&'a str> },
}

/// Where `rest` (a key after `<prefix>/`) is: a placeholder, or an item of a known type or of
/// an unknown directory.
fn locate(rest: &str) -> Place<'_> {
    for (index, kind) in KINDS.iter().enumerate() {
        if matches!(kind.layout, Layout::Sub { .. }) {
            continue;
        }
        let Some(after) = rest.strip_prefix(kind.dir) else { continue };
        if after.is_empty() && kind.layout == Layout::Single {
            return Place::Item { kind: Some(index), dir: kind.dir, id: "", parent: None };
        }
        let Some(id) = after.strip_prefix('/') else { continue };
        if id.is_empty() {
            return Place::Placeholder(Some(index));
        }
        if kind.layout == Layout::Single {
            return Place::Item { kind: None, dir: kind.dir, id: rest, parent: None };
        }
        // consumer.lua is_credential_etcd_key: the 2nd segment after `consumers` is `credentials`.
        let mut segments = id.split('/');
        let (parent, sub_dir, sub_id) = (segments.next(), segments.next(), segments.next());
        let below = |k: &Kind| matches!(k.layout, Layout::Sub { parent } if parent == kind.dir) && sub_dir == Some(k.dir);
        let sub = KINDS.iter().position(below);
        if let (Some(sub), Some(parent), Some(sub_id)) = (sub, parent, sub_id) {
            if !parent.is_empty() && !sub_id.is_empty() {
                return Place::Item { kind: Some(sub), dir: KINDS[sub].dir, id, parent: Some(parent) };
            }
        }
        return Place::Item { kind: Some(index), dir: kind.dir, id, parent: None };
    }
    // Not APISIX's: the id is the whole rest of the key (directories are mixed in `unknown`).
    match rest.split_once('/') {
        _ if rest.is_empty() => Place::Placeholder(None),
        Some((_, "")) => Place::Placeholder(None),
        Some((dir, _)) => Place::Item { kind: None, dir, id: rest, parent: None },
        None => Place::Item { kind: None, dir: rest, id: rest, parent: None },
    }
}

/// One item while it is judged.
struct Seen {
    kind: Option<usize>,
    dir: String,
    key: String,
    id: String,
    parent: Option<String>,
    mod_revision: i64,
    size: u64,
    /// Whether APISIX can load its value (decodes, has the right shape).
    loadable: bool,
    summary: String,
    problems: Vec<Problem>,
    /// (index in [`REFERENCES`], id named).
    references: Vec<(usize, String)>,
    /// `$secret://` references and the secret manager configuration each names.
    secrets: Vec<(String, String)>,
    /// An enabled route's matching, and the service its hosts come from if it has none.
    matching: Option<(Matching, Option<String>)>,
    /// A service's hosts (`None`: it has none), unless they are not as expected.
    hosts: Option<Option<Vec<String>>>,
}

/// What decides which requests an enabled route without other conditions matches.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Matching {
    uris: Vec<String>,
    /// `None`: any host.
    hosts: Option<Vec<String>>,
    /// `None`: any method.
    methods: Option<Vec<String>>,
    priority: i64,
}

/// Judges APISIX's configuration: `kvs` are the keys read under `prefix` (`/apisix`, with or
/// without its trailing `/`), in any order. Every key is counted and checked; the items listed
/// per type are capped at [`LISTED_PER_TYPE`].
pub fn analyze(prefix: &str, kvs: &[KeyValue]) -> ApisixReport {
    let prefix = prefix.trim_end_matches('/');
    let tree = format!("{prefix}/");
    let mut report = ApisixReport { prefix: prefix.to_string(), ..ApisixReport::default() };
    let mut order: Vec<&KeyValue> = kvs.iter().collect();
    order.sort_by(|a, b| a.key.cmp(&b.key));

    let mut placeholders = vec![false; KINDS.len()];
    let mut seen: Vec<Seen> = Vec::new();
    for kv in order {
        report.totals.keys += 1;
        report.totals.bytes += kv.value.len() as u64;
        let Some(rest) = kv.key.strip_prefix(tree.as_bytes()) else {
            report.totals.outside += 1;
            continue;
        };
        let rest = String::from_utf8_lossy(rest);
        match locate(&rest) {
            Place::Placeholder(kind) => {
                report.totals.placeholders += 1;
                if let Some(kind) = kind {
                    placeholders[kind] = true;
                }
            }
            Place::Item { kind, dir, id, parent } => {
                report.totals.items += 1;
                seen.push(look_at(kv, kind, dir, id, parent));
            }
        }
    }

    // APISIX 3.x's directories tell a 3.x deployment, which does not read 2.x's `ssl`, `proto`.
    let is_v3 = ["ssls", "protos", "consumer_groups", "secrets"]
        .iter()
        .filter_map(|name| KINDS.iter().position(|k| k.dir == *name))
        .any(|index| placeholders[index] || seen.iter().any(|s| s.kind == Some(index)));
    let ignored = |index: usize| is_v3 && KINDS[index].renamed_to.is_some();

    // The ids APISIX has, by type: whether it can load each.
    let mut ids: HashMap<&str, HashMap<&str, bool>> = HashMap::new();
    for item in &seen {
        if let Some(index) = item.kind.filter(|i| KINDS[*i].loaded && !ignored(*i)) {
            let loadable = ids.entry(KINDS[index].name).or_default().entry(item.id.as_str()).or_insert(false);
            *loadable |= item.loadable;
        }
    }
    // What is wrong with an id of a type: `None` if APISIX has it.
    let missing = |to: &str, id: &str| match ids.get(to).and_then(|known| known.get(id)) {
        Some(true) => None,
        Some(false) => Some("which APISIX cannot load (see its problems)"),
        None => Some("which does not exist"),
    };
    let mut found: Vec<Vec<Problem>> = seen.iter().map(|_| Vec::new()).collect();
    for (item, problems) in seen.iter().zip(found.iter_mut()) {
        for (reference, id) in &item.references {
            let reference = &REFERENCES[*reference];
            let Some(state) = missing(reference.to, id) else { continue };
            let one = KINDS.iter().find(|k| k.name == reference.to).map_or(reference.to, |k| k.one);
            let text = match reference.path {
                "@parent" => format!("belongs to {one} \"{id}\" (by its key), {state}: {}", reference.effect),
                path => format!("`{path}` names {one} \"{id}\", {state}: {}", reference.effect),
            };
            problems.push(Problem { severity: reference.severity, kind: ProblemKind::DanglingReference, text });
        }
        for (uri, id) in &item.secrets {
            let Some(state) = missing("secrets", id) else { continue };
            problems.push(Problem {
                severity: Severity::Critical,
                kind: ProblemKind::MissingSecret,
                text: format!(
                    "`{uri}` names secret manager configuration \"{id}\" ({prefix}/secrets/{id}), {state}: APISIX uses the reference itself as the value"
                ),
            });
        }
    }
    // Services' hosts, for routes without their own.
    let service_hosts: HashMap<&str, &Option<Vec<String>>> = seen
        .iter()
        .filter(|item| item.kind.is_some_and(|i| KINDS[i].name == "services"))
        .filter_map(|item| Some((item.id.as_str(), item.hosts.as_ref()?)))
        .collect();
    duplicate_routes(&seen, &service_hosts, &mut found);
    for (item, problems) in seen.iter_mut().zip(found) {
        item.problems.extend(problems);
    }

    // The report, type by type.
    let mut by_kind: Vec<Vec<Seen>> = KINDS.iter().map(|_| Vec::new()).collect();
    let mut unknown: Vec<Seen> = Vec::new();
    for item in seen {
        match item.kind {
            Some(index) => by_kind[index].push(item),
            None => unknown.push(item),
        }
    }
    for (index, items) in by_kind.into_iter().enumerate() {
        let kind = &KINDS[index];
        let mut problems = Vec::new();
        if !items.is_empty() && ignored(index) {
            let now = kind.renamed_to.unwrap_or_default();
            problems.push(Problem {
                severity: Severity::Warning,
                kind: ProblemKind::RenamedDirectory,
                text: format!(
                    "APISIX 3.x reads {prefix}/{now}/, which 3.0 renamed from {prefix}/{}/ without moving the data: it does not load the {} here",
                    kind.dir,
                    counted(items.len(), "item", "items")
                ),
            });
        } else if !items.is_empty() && kind.placeholder && kind.layout == Layout::Dir && !placeholders[index] {
            problems.push(Problem {
                severity: Severity::Warning,
                kind: ProblemKind::MissingPlaceholder,
                text: format!(
                    "no placeholder key {prefix}/{}/ (APISIX's `init_dir`): APISIX before 3.8 loads a directory without it as empty, so {} here may not be served (apache/apisix#10569); `apisix init` writes the placeholders",
                    kind.dir,
                    counted(items.len(), "item", "items")
                ),
            });
        }
        if items.is_empty() && problems.is_empty() && !placeholders[index] {
            continue;
        }
        let entry = TypeReport {
            name: kind.dir.to_string(),
            about: kind.about.to_string(),
            known: true,
            placeholder: placeholders[index],
            problems,
            ..TypeReport::default()
        };
        report.types.push(list(entry, items, &mut report.totals.problems));
    }
    if !unknown.is_empty() {
        let mut dirs: BTreeMap<&str, usize> = BTreeMap::new();
        for item in &unknown {
            *dirs.entry(item.dir.as_str()).or_default() += 1;
        }
        let mut problems: Vec<Problem> = dirs
            .iter()
            .take(LISTED_PER_ITEM)
            .map(|(dir, count)| Problem {
                severity: Severity::Info,
                kind: ProblemKind::UnknownType,
                text: format!("{} in {prefix}/{dir}, which is no APISIX resource type: APISIX does not read it", counted(*count, "key", "keys")),
            })
            .collect();
        if dirs.len() > LISTED_PER_ITEM {
            let rest: usize = dirs.values().skip(LISTED_PER_ITEM).sum();
            problems.push(Problem {
                severity: Severity::Info,
                kind: ProblemKind::UnknownType,
                text: format!(
                    "{} in {} more directories that are no APISIX resource type",
                    counted(rest, "key", "keys"),
                    dirs.len() - LISTED_PER_ITEM
                ),
            });
        }
        let entry = TypeReport {
            name: "unknown".into(),
            about: "keys in directories that are no APISIX resource type (their ids are the whole key after the prefix)".into(),
            problems,
            ..TypeReport::default()
        };
        report.types.push(list(entry, unknown, &mut report.totals.problems));
    }
    report
}

/// Fills a type's figures and list from its items, and counts the problems.
fn list(mut entry: TypeReport, items: Vec<Seen>, counts: &mut ProblemCounts) -> TypeReport {
    for problem in &entry.problems {
        counts.add(problem.severity);
    }
    entry.count = items.len() as u64;
    entry.bytes = items.iter().map(|i| i.size).sum();
    entry.newest_mod_revision = items.iter().map(|i| i.mod_revision).max().unwrap_or(0);
    let mut items = items;
    items.sort_by_key(|item| std::cmp::Reverse(item.problems.iter().map(|p| p.severity).max()));
    let mut listed: Vec<Item> = Vec::new();
    for mut item in items {
        for problem in &item.problems {
            counts.add(problem.severity);
        }
        if listed.len() == LISTED_PER_TYPE {
            entry.truncated += 1;
            continue;
        }
        item.problems.sort_by_key(|p| std::cmp::Reverse(p.severity));
        let unlisted = item.problems.len().saturating_sub(LISTED_PER_ITEM);
        item.problems.truncate(LISTED_PER_ITEM);
        listed.push(Item {
            key: item.key,
            id: item.id,
            summary: item.summary,
            mod_revision: item.mod_revision,
            size: item.size,
            problems: item.problems,
            unlisted_problems: unlisted as u64,
        });
    }
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    entry.items = listed;
    entry
}

/// One key: its summary, the problems of its own, and what it names.
fn look_at(kv: &KeyValue, kind: Option<usize>, dir: &str, id: &str, parent: Option<&str>) -> Seen {
    let mut item = Seen {
        kind,
        dir: dir.to_string(),
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        id: id.to_string(),
        parent: parent.map(str::to_string),
        mod_revision: kv.mod_revision,
        size: kv.value.len() as u64,
        loadable: false,
        summary: String::new(),
        problems: Vec::new(),
        references: Vec::new(),
        secrets: Vec::new(),
        matching: None,
        hosts: None,
    };
    if kv.value.len() > ETCD_REQUEST_LIMIT {
        item.problems.push(Problem {
            severity: Severity::Warning,
            kind: ProblemKind::TooLarge,
            text: format!(
                "value is {:.1} MiB, over etcd's default request limit of 1.5 MiB (--max-request-bytes): etcd refuses to write it unless the limit was raised, and APISIX's Admin API refuses bodies over 1.5 MiB",
                kv.value.len() as f64 / (1024.0 * 1024.0)
            ),
        });
    }
    let Some(kind) = kind.map(|index| &KINDS[index]).filter(|k| k.loaded) else {
        return item;
    };
    if kv.lease != 0 {
        item.problems.push(Problem {
            severity: Severity::Info,
            kind: ProblemKind::Leased,
            text: format!("is bound to lease {:x}: etcd deletes it when the lease expires (Admin API `?ttl=`)", kv.lease),
        });
    }
    // config_etcd.lua: values are decoded as JSON; an item whose value is not an object is
    // logged ("it should be an object") and not loaded; `/plugins` must be an array
    // (schema_def.lua `plugins`).
    let value: Value = match serde_json::from_slice(&kv.value) {
        Ok(value) => value,
        Err(error) => {
            item.problems.push(Problem {
                severity: Severity::Critical,
                kind: ProblemKind::InvalidJson,
                text: format!("value is not valid JSON ({error}): APISIX cannot decode it and does not load this {}", kind.one),
            });
            return item;
        }
    };
    let expected = if kind.layout == Layout::Single { "an array" } else { "an object" };
    let shaped = if kind.layout == Layout::Single { value.is_array() } else { value.is_object() };
    if !shaped {
        item.problems.push(Problem {
            severity: Severity::Critical,
            kind: ProblemKind::WrongShape,
            text: format!("value is {}, not {expected}: APISIX does not load this {}", json_type(&value), kind.one),
        });
        return item;
    }
    item.loadable = true;
    item.summary = clip(summarize(kind.name, &value));
    let Value::Object(object) = &value else { return item };

    // config_etcd.lua sets every loaded value's `id` to its key's; admin/resource.lua refuses
    // a body whose id is not the URL's ("wrong ... id"), admin/consumers.lua a username
    // ("wrong username"), so such a value was not written through the Admin API.
    if let Some(field) = kind.id_field {
        if let Some(stated) = object.get(field).and_then(id_text) {
            let last = item.id.rsplit('/').next().unwrap_or_default();
            let agrees = stated == item.id || (item.parent.is_some() && stated == last);
            if !agrees {
                let effect = match field {
                    "username" => format!("APISIX knows the consumer as \"{}\", and the Admin API refuses to change it", item.id),
                    _ => format!("APISIX serves it as \"{}\", and the Admin API refuses to PATCH it", item.id),
                };
                item.problems.push(Problem {
                    severity: Severity::Warning,
                    kind: ProblemKind::IdMismatch,
                    text: format!("its `{field}` is \"{stated}\" but its key says \"{}\": {effect}", item.id),
                });
            }
        }
    }

    for (index, reference) in REFERENCES.iter().enumerate() {
        if !reference.from.contains(&kind.name) {
            continue;
        }
        let mut named = Vec::new();
        match reference.path {
            "@parent" => named.extend(item.parent.clone()),
            path => ids_at(&value, &path.split('.').collect::<Vec<_>>(), &mut named),
        }
        named.sort();
        named.dedup();
        item.references.extend(named.into_iter().map(|id| (index, id)));
    }

    // secret.lua fetch_secrets resolves `$secret://` in plugins' settings (plugin.lua,
    // consumer.lua) and in whole certificates (ssl/router/radixtree_sni.lua, init.lua).
    let mut uris = Vec::new();
    match kind.name {
        "ssls" => secret_uris(&value, &mut uris),
        _ => {
            if let Some(plugins) = object.get("plugins") {
                secret_uris(plugins, &mut uris);
            }
        }
    }
    uris.sort();
    uris.dedup();
    item.secrets = uris.into_iter().filter_map(|uri| secret_id(&uri).map(|id| (uri.clone(), id))).collect();

    match kind.name {
        "routes" => item.matching = route_matching(object),
        "services" => item.hosts = one_or_many(object, "host", "hosts").ok(),
        _ => {}
    }
    item
}

/// The ids at `path` (see [`Reference::path`]) in `value`.
fn ids_at(value: &Value, path: &[&str], out: &mut Vec<String>) {
    if turned_off(value) {
        return;
    }
    let Some((first, rest)) = path.split_first() else {
        out.extend(id_text(value));
        return;
    };
    let (name, each) = match first.strip_suffix("[]") {
        Some(name) => (name, true),
        None => (*first, false),
    };
    let children: Vec<&Value> = match (name, value) {
        ("*", Value::Object(members)) => members.values().collect(),
        ("*", _) => Vec::new(),
        (name, value) => value.get(name).into_iter().collect(),
    };
    for child in children {
        match (each, child) {
            (true, Value::Array(elements)) => elements.iter().for_each(|element| ids_at(element, rest, out)),
            (true, _) => {}
            (false, child) => ids_at(child, rest, out),
        }
    }
}

/// An id as APISIX compares them (`tostring`): `"1"` and `1` alike.
fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(match (number.as_i64(), number.as_u64(), number.as_f64()) {
            (Some(integer), ..) => integer.to_string(),
            (None, Some(integer), _) => integer.to_string(),
            (None, None, Some(float)) if float.fract() == 0.0 && float.abs() < 1e15 => (float as i64).to_string(),
            _ => number.to_string(),
        }),
        _ => None,
    }
}

/// Every `$secret://` string in `value`, but in plugins turned off.
fn secret_uris(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(text) if text.starts_with(SECRET_PREFIX) => out.push(text.clone()),
        Value::Array(elements) => elements.iter().for_each(|element| secret_uris(element, out)),
        Value::Object(members) if !turned_off(value) => members.values().for_each(|member| secret_uris(member, out)),
        _ => {}
    }
}

/// Whether `value` is a plugin's settings with the plugin turned off (`_meta.disable`).
fn turned_off(value: &Value) -> bool {
    value.get("_meta").and_then(|meta| meta.get("disable")) == Some(&Value::Bool(true))
}

/// The secret manager configuration `$secret://<manager>/<id>/<key>` names, `<manager>/<id>`
/// (secret.lua parse_secret_uri); `None` for a malformed one.
fn secret_id(uri: &str) -> Option<String> {
    let path = uri.strip_prefix(SECRET_PREFIX)?;
    let mut parts = path.splitn(3, '/');
    let (manager, id, key) = (parts.next()?, parts.next()?, parts.next()?);
    (!manager.is_empty() && !id.is_empty() && !key.is_empty()).then(|| format!("{manager}/{id}"))
}

/// An enabled route's matching, if nothing but its uri, host, methods and priority decide it
/// (no `vars`, `filter_func` nor remote address), with the service its hosts come from when it
/// has none of its own; `None` for a route it cannot be sure of.
fn route_matching(route: &Map<String, Value>) -> Option<(Matching, Option<String>)> {
    // schema_def.lua route.status: 1 enabled (the default), 0 disabled.
    match route.get("status") {
        None => {}
        Some(status) if status.as_i64() == Some(1) => {}
        Some(_) => return None,
    }
    if ["filter_func", "remote_addr", "remote_addrs"].iter().any(|field| route.contains_key(*field)) {
        return None;
    }
    if route.get("vars").is_some_and(|vars| vars.as_array().is_none_or(|conditions| !conditions.is_empty())) {
        return None;
    }
    let uris = one_or_many(route, "uri", "uris").ok()??;
    let hosts = one_or_many(route, "host", "hosts").ok()?;
    let methods = match route.get("methods") {
        None => None,
        Some(Value::Array(methods)) => Some(sorted_strings(methods)?),
        Some(_) => return None,
    };
    let priority = match route.get("priority") {
        None => 0,
        Some(priority) => priority.as_i64()?,
    };
    let service = match (&hosts, route.get("service_id")) {
        (None, Some(service)) => Some(id_text(service)?),
        _ => None,
    };
    Some((Matching { uris, hosts, methods, priority }, service))
}

/// A field that is one string, or its plural a list of them: sorted, without duplicates;
/// `Ok(None)` when neither is there, `Err` when both are, or either is not as expected.
fn one_or_many(object: &Map<String, Value>, one: &str, many: &str) -> Result<Option<Vec<String>>, ()> {
    match (object.get(one), object.get(many)) {
        (None, None) => Ok(None),
        (Some(Value::String(single)), None) => Ok(Some(vec![single.clone()])),
        (None, Some(Value::Array(several))) if !several.is_empty() => sorted_strings(several).map(Some).ok_or(()),
        _ => Err(()),
    }
}

fn sorted_strings(values: &[Value]) -> Option<Vec<String>> {
    let mut strings: Vec<String> = values.iter().map(|v| v.as_str().map(str::to_string)).collect::<Option<_>>()?;
    strings.sort();
    strings.dedup();
    Some(strings)
}

/// Enabled routes that match the same requests (the same uris, hosts, methods and priority,
/// and no other condition): lua-resty-radixtree tries routes of one path by priority and takes
/// the first whose conditions hold, so only one of them is ever used.
fn duplicate_routes(seen: &[Seen], service_hosts: &HashMap<&str, &Option<Vec<String>>>, found: &mut [Vec<Problem>]) {
    let mut groups: BTreeMap<Matching, Vec<usize>> = BTreeMap::new();
    for (index, item) in seen.iter().enumerate() {
        let Some((matching, service)) = &item.matching else { continue };
        let mut matching = matching.clone();
        if let Some(service) = service {
            // http/route.lua: a route without hosts takes its service's; unknown service, unsure.
            let Some(hosts) = service_hosts.get(service.as_str()) else { continue };
            matching.hosts = (*hosts).clone();
        }
        groups.entry(matching).or_default().push(index);
    }
    for members in groups.values().filter(|members| members.len() > 1) {
        for &index in members {
            let others: Vec<&str> = members.iter().filter(|i| **i != index).map(|i| seen[*i].id.as_str()).collect();
            let mut named = others.iter().take(5).map(|id| format!("\"{id}\"")).collect::<Vec<_>>().join(", ");
            if others.len() > 5 {
                named.push_str(&format!(" and {} more", others.len() - 5));
            }
            let route = if others.len() == 1 { "route" } else { "routes" };
            found[index].push(Problem {
                severity: Severity::Warning,
                kind: ProblemKind::DuplicateRoute,
                text: format!(
                    "matches the same requests as {route} {named} (same uri, host, methods and priority, all enabled, no other condition): only one of them is ever used"
                ),
            });
        }
    }
}

/// `1 item`, `2 items`.
fn counted(count: usize, one: &str, several: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { several })
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// At most [`SUMMARY_CHARS`] characters.
fn clip(text: String) -> String {
    match text.char_indices().nth(SUMMARY_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The strings of a field that is a string or an array of them.
fn strings<'v>(object: &'v Map<String, Value>, field: &str) -> Vec<&'v str> {
    match object.get(field) {
        Some(Value::String(text)) => vec![text.as_str()],
        Some(Value::Array(values)) => values.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// `a,b,c +2 more`.
fn few(values: &[&str], at_most: usize) -> String {
    let mut text = values.iter().take(at_most).copied().collect::<Vec<_>>().join(",");
    if values.len() > at_most {
        text.push_str(&format!(" +{} more", values.len() - at_most));
    }
    text
}

/// One line about an item, from fields that hold no secret.
fn summarize(kind: &str, value: &Value) -> String {
    let Value::Object(object) = value else {
        // The plugin list (plugins.lua sync_local_conf_to_etcd): `[{name, stream?}]`.
        let plugins = value.as_array().map_or(&[][..], Vec::as_slice);
        let stream = plugins.iter().filter(|p| p.get("stream") == Some(&Value::Bool(true))).count();
        return format!("{} plugins ({} for streams)", plugins.len(), stream);
    };
    let text = |field: &str| object.get(field).and_then(Value::as_str).filter(|t| !t.is_empty());
    let reference = |field: &str| object.get(field).and_then(id_text);
    let plugin_names = || {
        let plugins = object.get("plugins").and_then(Value::as_object);
        let names: Vec<&str> = plugins.map(|p| p.keys().map(String::as_str).collect()).unwrap_or_default();
        (!names.is_empty()).then(|| format!("plugins {}", few(&names, 4)))
    };
    let mut parts: Vec<String> = Vec::new();
    match kind {
        "routes" => {
            parts.extend(text("name").map(str::to_string));
            parts.push(few(&[strings(object, "uri"), strings(object, "uris")].concat(), 3));
            let hosts = [strings(object, "host"), strings(object, "hosts")].concat();
            if !hosts.is_empty() {
                parts.push(format!("host {}", few(&hosts, 3)));
            }
            let methods = strings(object, "methods");
            if !methods.is_empty() {
                parts.push(methods.join(","));
            }
            if object.get("status").and_then(Value::as_i64) == Some(0) {
                parts.push("disabled".into());
            }
        }
        "services" => {
            parts.extend(text("name").map(str::to_string));
            let hosts = strings(object, "hosts");
            if !hosts.is_empty() {
                parts.push(format!("host {}", few(&hosts, 3)));
            }
            parts.extend(reference("upstream_id").map(|id| format!("upstream {id}")));
        }
        "upstreams" => {
            parts.extend(text("name").map(str::to_string));
            parts.push(text("type").unwrap_or("roundrobin").to_string());
            match (object.get("nodes"), text("service_name")) {
                (Some(Value::Object(nodes)), _) => parts.push(format!("{} nodes", nodes.len())),
                (Some(Value::Array(nodes)), _) => parts.push(format!("{} nodes", nodes.len())),
                (_, Some(service)) => parts.push(format!("discovery {} {service}", text("discovery_type").unwrap_or("?"))),
                _ => {}
            }
        }
        "consumers" => {
            parts.extend(text("username").map(str::to_string));
            parts.extend(reference("group_id").map(|id| format!("group {id}")));
            parts.extend(plugin_names());
        }
        "ssls" => {
            let snis = [strings(object, "sni"), strings(object, "snis")].concat();
            parts.push(few(&snis, 3));
            parts.extend(text("type").filter(|t| *t != "server").map(str::to_string));
        }
        "stream_routes" => {
            let server = match (text("server_addr"), object.get("server_port").and_then(id_text)) {
                (Some(addr), Some(port)) => Some(format!("{addr}:{port}")),
                (None, Some(port)) => Some(format!(":{port}")),
                (Some(addr), None) => Some(addr.to_string()),
                (None, None) => None,
            };
            parts.extend(server);
            parts.extend(text("sni").map(|sni| format!("sni {sni}")));
            parts.extend(text("remote_addr").map(|addr| format!("from {addr}")));
            parts.extend(reference("upstream_id").map(|id| format!("upstream {id}")));
        }
        "protos" => {
            parts.extend(text("name").or(text("desc")).map(str::to_string));
            parts.extend(text("content").map(|content| format!("{} bytes of proto", content.len())));
        }
        "secrets" => parts.extend(text("uri").map(str::to_string)),
        "graphql_cost_decorations" => parts.extend(text("field_path").map(str::to_string)),
        _ => {
            parts.extend(text("name").or(text("desc")).map(str::to_string));
            parts.extend(plugin_names());
        }
    }
    parts.retain(|part| !part.is_empty());
    parts.join("  ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue { key: key.as_bytes().to_vec(), value: value.as_bytes().to_vec(), create_revision: 2, mod_revision: 3, version: 1, lease: 0 }
    }

    /// The data set `etcdgate dev` puts (crates/etcdgate/src/dev.rs), and a few more types.
    fn sample() -> Vec<KeyValue> {
        let mut data = Vec::new();
        for i in 1..=3 {
            let upstream = format!(r#"{{"id":"{i}","type":"roundrobin","nodes":{{"127.0.0.1:{}":1}},"create_time":1700000000}}"#, 8080 + i);
            data.push(kv(&format!("/apisix/upstreams/{i}"), &upstream));
        }
        for i in 1..=5 {
            let route = format!(r#"{{"id":"{i}","uri":"/api/v{i}/*","methods":["GET","POST"],"upstream_id":"{}","status":1,"priority":0}}"#, (i % 3) + 1);
            data.push(kv(&format!("/apisix/routes/{i}"), &route));
        }
        data.push(kv("/apisix/services/1", r#"{"id":"1","name":"web","upstream_id":"1"}"#));
        data.push(kv("/apisix/consumers/jack", r#"{"username":"jack","plugins":{"key-auth":{"key":"auth-one"}}}"#));
        data.push(kv("/apisix/global_rules/1", r#"{"id":"1","plugins":{"prometheus":{}}}"#));
        data.push(kv("/apisix/plugin_metadata/log-rotate", r#"{"id":"log-rotate","interval":3600}"#));
        data.push(kv("/apisix/consumers/jack/credentials/one", r#"{"id":"one","plugins":{"basic-auth":{"username":"j","password":"p"}}}"#));
        data.push(kv("/apisix/secrets/vault/1", r#"{"id":"vault/1","uri":"http://127.0.0.1:8200","prefix":"kv/apisix","token":"t"}"#));
        data.push(kv("/apisix/ssls/1", r#"{"id":"1","snis":["example.com"],"cert":"$secret://vault/1/cert","key":"$secret://vault/1/key"}"#));
        data.push(kv("/apisix/plugins", r#"[{"name":"key-auth"},{"name":"ip-restriction","stream":true}]"#));
        for dir in [
            "routes", "upstreams", "services", "consumers", "ssls", "global_rules", "plugin_metadata", "protos", "stream_routes",
            "plugin_configs", "consumer_groups", "secrets", "plugins",
        ] {
            data.push(kv(&format!("/apisix/{dir}/"), "init_dir"));
        }
        data
    }

    fn kind_of<'r>(report: &'r ApisixReport, name: &str) -> &'r TypeReport {
        report.types.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no {name} in {report:#?}"))
    }

    fn item<'r>(report: &'r ApisixReport, kind: &str, id: &str) -> &'r Item {
        kind_of(report, kind).items.iter().find(|i| i.id == id).unwrap_or_else(|| panic!("no {kind} {id} in {report:#?}"))
    }

    /// Every problem as (type, id, kind, severity); type-level ones with id `*`.
    fn problems(report: &ApisixReport) -> Vec<(String, String, ProblemKind, Severity)> {
        let mut all = Vec::new();
        for kind in &report.types {
            all.extend(kind.problems.iter().map(|p| (kind.name.clone(), "*".to_string(), p.kind, p.severity)));
            for item in &kind.items {
                all.extend(item.problems.iter().map(|p| (kind.name.clone(), item.id.clone(), p.kind, p.severity)));
            }
        }
        all
    }

    fn with(mut data: Vec<KeyValue>, more: &[(&str, &str)]) -> Vec<KeyValue> {
        for (key, value) in more {
            data.retain(|kv| kv.key != key.as_bytes());
            data.push(kv(key, value));
        }
        data
    }

    #[test]
    fn a_clean_data_set_has_no_problems_and_is_summarized() {
        let report = analyze("/apisix", &sample());
        assert_eq!(problems(&report), vec![], "{report:#?}");
        assert_eq!(report.worst(), None);
        assert_eq!(report.totals.placeholders, 13);
        assert_eq!(report.totals.items, 16);
        assert_eq!(report.totals.keys, 29);
        assert_eq!(report.totals.problems, ProblemCounts::default());
        let routes = kind_of(&report, "routes");
        assert_eq!((routes.count, routes.placeholder, routes.newest_mod_revision, routes.truncated), (5, true, 3, 0));
        assert_eq!(item(&report, "routes", "1").summary, "/api/v1/*  GET,POST");
        assert_eq!(item(&report, "upstreams", "2").summary, "roundrobin  1 nodes");
        assert_eq!(item(&report, "services", "1").summary, "web  upstream 1");
        assert_eq!(item(&report, "consumers", "jack").summary, "jack  plugins key-auth");
        assert_eq!(item(&report, "credentials", "jack/credentials/one").summary, "plugins basic-auth");
        assert_eq!(item(&report, "ssls", "1").summary, "example.com");
        assert_eq!(item(&report, "secrets", "vault/1").summary, "http://127.0.0.1:8200");
        assert_eq!(item(&report, "plugins", "").summary, "2 plugins (1 for streams)");
        // Types with only a placeholder are listed, empty; a trailing `/` on the prefix is the same.
        assert_eq!(kind_of(&report, "stream_routes").count, 0);
        assert_eq!(analyze("/apisix/", &sample()), report);
    }

    #[test]
    fn each_dangling_reference_is_found_on_the_item_that_holds_it() {
        let data = with(
            sample(),
            &[
                ("/apisix/routes/1", r#"{"uri":"/a","upstream_id":"9"}"#),
                ("/apisix/routes/2", r#"{"uri":"/b","service_id":"7","plugin_config_id":"3"}"#),
                ("/apisix/services/1", r#"{"name":"web","upstream_id":8}"#),
                ("/apisix/consumers/jack", r#"{"username":"jack","group_id":"gold"}"#),
                ("/apisix/consumers/ann/credentials/k", r#"{"plugins":{"key-auth":{"key":"x"}}}"#),
                ("/apisix/upstreams/1", r#"{"nodes":{"a:1":1},"tls":{"client_cert_id":"5"}}"#),
                ("/apisix/stream_routes/1", r#"{"server_port":9100,"upstream_id":"6","protocol":{"name":"redis","superior_id":"0"}}"#),
                (
                    "/apisix/routes/3",
                    r#"{"uri":"/c","plugins":{"traffic-split":{"rules":[{"weighted_upstreams":[{"upstream_id":4,"weight":1},{"weight":1}]}]},
                       "key-auth":{"anonymous_consumer":"anon"},"grpc-transcode":{"proto_id":"1","service":"s","method":"m"},
                       "basic-auth":{"_meta":{"disable":true},"anonymous_consumer":"nobody"}}}"#,
                ),
                ("/apisix/routes/4", r#"{"uri":"/d","plugins":{"key-auth":{"key":"$secret://vault/2/key"}}}"#),
            ],
        );
        let report = analyze("/apisix", &data);
        let found = problems(&report);
        let expected: Vec<(&str, &str, ProblemKind, Severity)> = vec![
            ("consumers", "jack", ProblemKind::DanglingReference, Severity::Critical),
            ("credentials", "ann/credentials/k", ProblemKind::DanglingReference, Severity::Warning),
            ("routes", "1", ProblemKind::DanglingReference, Severity::Critical),
            ("routes", "2", ProblemKind::DanglingReference, Severity::Critical),
            ("routes", "2", ProblemKind::DanglingReference, Severity::Critical),
            ("routes", "3", ProblemKind::DanglingReference, Severity::Critical),
            ("routes", "3", ProblemKind::DanglingReference, Severity::Critical),
            ("routes", "3", ProblemKind::DanglingReference, Severity::Critical),
            ("routes", "4", ProblemKind::MissingSecret, Severity::Critical),
            ("services", "1", ProblemKind::DanglingReference, Severity::Critical),
            ("stream_routes", "1", ProblemKind::DanglingReference, Severity::Critical),
            ("stream_routes", "1", ProblemKind::DanglingReference, Severity::Warning),
            ("upstreams", "1", ProblemKind::DanglingReference, Severity::Critical),
        ];
        let mut found_sorted: Vec<_> = found.iter().map(|(t, i, k, s)| (t.as_str(), i.as_str(), *k, *s)).collect();
        found_sorted.sort_by_key(|p| (p.0, p.1));
        assert_eq!(found_sorted, expected, "{report:#?}");
        let texts = |kind: &str, id: &str| item(&report, kind, id).problems.iter().map(|p| p.text.clone()).collect::<Vec<_>>().join("\n");
        assert!(texts("routes", "1").contains("`upstream_id` names upstream \"9\", which does not exist: APISIX answers its requests with 502"));
        assert!(texts("routes", "2").contains("service \"7\"") && texts("routes", "2").contains("plugin config \"3\""));
        let route3 = texts("routes", "3");
        assert!(route3.contains("upstream \"4\"") && route3.contains("consumer \"anon\"") && route3.contains("proto \"1\""), "{route3}");
        assert!(!route3.contains("nobody"), "a plugin turned off is not looked into: {route3}");
        assert!(texts("services", "1").contains("upstream \"8\""));
        assert!(texts("upstreams", "1").contains("SSL certificate \"5\""));
        assert!(texts("credentials", "ann/credentials/k").contains("belongs to consumer \"ann\""));
        assert!(texts("routes", "4").contains("\"vault/2\""));
        assert_eq!(report.totals.problems, ProblemCounts { info: 0, warning: 2, critical: 11 });
        assert_eq!(report.worst(), Some(Severity::Critical));
    }

    #[test]
    fn ids_as_numbers_and_strings_are_alike() {
        let data = with(
            sample(),
            &[
                ("/apisix/routes/1", r#"{"id":1,"uri":"/a","upstream_id":1,"service_id":1.0}"#),
                ("/apisix/routes/2", r#"{"id":"2","uri":"/b","upstream_id":"2"}"#),
                ("/apisix/upstreams/7", r#"{"id":7,"nodes":[{"host":"a","port":1,"weight":1}]}"#),
                ("/apisix/routes/3", r#"{"uri":"/c","upstream_id":7}"#),
            ],
        );
        let report = analyze("/apisix", &data);
        assert_eq!(problems(&report), vec![], "{report:#?}");
        assert_eq!(item(&report, "upstreams", "7").summary, "roundrobin  1 nodes");
    }

    #[test]
    fn values_apisix_cannot_load_are_critical_and_references_to_them_say_so() {
        let data = with(
            sample(),
            &[
                ("/apisix/upstreams/1", "{\"nodes\": {"),
                ("/apisix/upstreams/2", r#"["not", "an", "object"]"#),
                ("/apisix/plugins", r#"{"name":"key-auth"}"#),
            ],
        );
        let report = analyze("/apisix", &data);
        let upstream = item(&report, "upstreams", "1");
        assert_eq!((upstream.problems[0].kind, upstream.problems[0].severity), (ProblemKind::InvalidJson, Severity::Critical));
        assert!(upstream.problems[0].text.contains("not valid JSON"), "{upstream:?}");
        assert_eq!(item(&report, "upstreams", "2").problems[0].kind, ProblemKind::WrongShape);
        assert!(item(&report, "plugins", "").problems[0].text.contains("not an array"));
        // Route 3 and service 1 use upstream 1, routes 1 and 4 use 2 (i % 3 + 1): APISIX cannot load either.
        for (kind, id) in [("routes", "1"), ("routes", "3"), ("routes", "4"), ("services", "1")] {
            let user = item(&report, kind, id);
            assert!(user.problems.iter().any(|p| p.text.contains("which APISIX cannot load")), "{user:?}");
        }
        assert_eq!(report.totals.problems.critical, 3 + 4, "{report:#?}");
    }

    #[test]
    fn an_id_that_disagrees_with_its_key_is_reported() {
        let data = with(
            sample(),
            &[
                ("/apisix/routes/1", r#"{"id":"10","uri":"/a"}"#),
                ("/apisix/consumers/jack", r#"{"username":"jill"}"#),
                ("/apisix/consumers/jack/credentials/one", r#"{"id":"jack/credentials/one","plugins":{}}"#),
            ],
        );
        let report = analyze("/apisix", &data);
        assert_eq!(
            problems(&report),
            vec![
                ("routes".into(), "1".into(), ProblemKind::IdMismatch, Severity::Warning),
                ("consumers".into(), "jack".into(), ProblemKind::IdMismatch, Severity::Warning),
            ]
        );
        assert!(item(&report, "routes", "1").problems[0].text.contains("APISIX serves it as \"1\""));
        assert!(item(&report, "consumers", "jack").problems[0].text.contains("its `username` is \"jill\""));
    }

    #[test]
    fn duplicate_routes_are_only_exact_ones() {
        let data = with(
            sample(),
            &[
                ("/apisix/routes/10", r#"{"uri":"/same","hosts":["a.com","b.com"],"methods":["GET","POST"],"upstream_id":"1"}"#),
                ("/apisix/routes/11", r#"{"uris":["/same"],"hosts":["b.com","a.com"],"methods":["POST","GET"],"priority":0,"upstream_id":"2"}"#),
                // Not the same: disabled, other priority, a condition, other methods, a service's host.
                ("/apisix/routes/12", r#"{"uri":"/same","hosts":["a.com","b.com"],"methods":["GET","POST"],"status":0,"upstream_id":"1"}"#),
                ("/apisix/routes/13", r#"{"uri":"/same","hosts":["a.com","b.com"],"methods":["GET","POST"],"priority":1,"upstream_id":"1"}"#),
                ("/apisix/routes/14", r#"{"uri":"/same","hosts":["a.com","b.com"],"methods":["GET","POST"],"vars":[["arg_a","==","1"]],"upstream_id":"1"}"#),
                ("/apisix/routes/15", r#"{"uri":"/same","hosts":["a.com","b.com"],"upstream_id":"1"}"#),
                ("/apisix/routes/16", r#"{"uri":"/svc","service_id":"2"}"#),
                ("/apisix/routes/17", r#"{"uri":"/svc","upstream_id":"1"}"#),
                ("/apisix/services/2", r#"{"hosts":["c.com"],"upstream_id":"1"}"#),
                // The same, through the service's hosts.
                ("/apisix/routes/18", r#"{"uri":"/svc","hosts":["c.com"],"upstream_id":"1"}"#),
            ],
        );
        let report = analyze("/apisix", &data);
        let mut found = problems(&report);
        found.sort();
        let duplicate = |id: &str| ("routes".to_string(), id.to_string(), ProblemKind::DuplicateRoute, Severity::Warning);
        assert_eq!(found, vec![duplicate("10"), duplicate("11"), duplicate("16"), duplicate("18")], "{report:#?}");
        assert!(item(&report, "routes", "10").problems[0].text.contains("as route \"11\""));
    }

    #[test]
    fn placeholders_renamed_and_unknown_directories() {
        let mut data = sample();
        // 3.x reads ssls: a 2.x ssl directory is not loaded.
        data.push(kv("/apisix/ssl/", "init_dir"));
        data.push(kv("/apisix/ssl/1", r#"{"snis":["old.com"]}"#));
        // Items without their placeholder.
        data.retain(|kv| kv.key != b"/apisix/services/");
        // Not APISIX's, and outside the tree.
        data.push(kv("/apisix/mine/a", "whatever"));
        data.push(kv("/apisix/mine/b", "{}"));
        data.push(kv("/apisix/stray", "x"));
        data.push(kv("/apisix2/routes/1", "{}"));
        data.push(kv("/apisix", ""));
        let report = analyze("/apisix", &data);
        let mut found = problems(&report);
        found.sort();
        assert_eq!(
            found,
            vec![
                ("services".into(), "*".into(), ProblemKind::MissingPlaceholder, Severity::Warning),
                ("ssl".into(), "*".into(), ProblemKind::RenamedDirectory, Severity::Warning),
                ("unknown".into(), "*".into(), ProblemKind::UnknownType, Severity::Info),
                ("unknown".into(), "*".into(), ProblemKind::UnknownType, Severity::Info),
            ],
            "{report:#?}"
        );
        assert_eq!((report.totals.outside, report.totals.placeholders), (2, 13));
        let unknown = kind_of(&report, "unknown");
        assert_eq!((unknown.count, unknown.known), (3, false));
        assert!(unknown.problems[0].text.starts_with("2 keys in /apisix/mine,"), "{unknown:?}");
        assert_eq!(unknown.items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["mine/a", "mine/b", "stray"]);
        // A 2.x deployment (no 3.x directory) reads ssl.
        let v2: Vec<KeyValue> = vec![kv("/apisix/ssl/", "init_dir"), kv("/apisix/ssl/1", r#"{"sni":"old.com"}"#), kv("/apisix/upstreams/", "init_dir")];
        let v2 = with(v2, &[("/apisix/upstreams/1", r#"{"nodes":{},"tls":{"client_cert_id":1}}"#)]);
        assert_eq!(problems(&analyze("/apisix", &v2)), vec![]);
    }

    #[test]
    fn large_and_leased_values_are_reported() {
        let mut data = sample();
        let big = format!(r#"{{"uri":"/big","upstream_id":"1","desc":"{}"}}"#, "x".repeat(ETCD_REQUEST_LIMIT));
        data.push(kv("/apisix/routes/big", &big));
        data.push(KeyValue { lease: 0x1234, ..kv("/apisix/routes/ttl", r#"{"uri":"/ttl","upstream_id":"1"}"#) });
        data.push(KeyValue { lease: 0x99, ..kv("/apisix/data_plane/server_info/abc", r#"{"id":"abc","hostname":"h"}"#) });
        let report = analyze("/apisix", &data);
        let mut found = problems(&report);
        found.sort();
        assert_eq!(
            found,
            vec![
                ("routes".into(), "big".into(), ProblemKind::TooLarge, Severity::Warning),
                ("routes".into(), "ttl".into(), ProblemKind::Leased, Severity::Info),
            ]
        );
        assert!(item(&report, "routes", "ttl").problems[0].text.contains("lease 1234"));
    }

    #[test]
    fn lists_are_capped_with_troubled_items_first_but_everything_counted() {
        let mut data = sample();
        for i in 0..LISTED_PER_TYPE + 100 {
            data.push(kv(&format!("/apisix/routes/r{i:05}"), r#"{"uri":"/x","upstream_id":"1","priority":1}"#));
        }
        data.push(kv("/apisix/routes/zzz", "not json"));
        let report = analyze("/apisix", &data);
        let routes = kind_of(&report, "routes");
        assert_eq!((routes.count, routes.items.len(), routes.truncated), (5 + 601, LISTED_PER_TYPE, 106));
        assert!(routes.items.windows(2).all(|pair| pair[0].key < pair[1].key));
        // 600 duplicates and one invalid value, all counted; the invalid one is listed.
        assert_eq!(report.totals.problems, ProblemCounts { info: 0, warning: 600, critical: 1 });
        assert!(routes.items.iter().any(|i| i.id == "zzz"));
        let listed = &routes.items.iter().find(|i| i.id == "r00000").unwrap().problems[0];
        assert!(listed.text.contains("and 594 more"), "{listed:?}");
    }

    #[test]
    fn garbage_does_not_panic() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let pieces: [&[u8]; 12] = [
            b"/apisix/", b"routes/", b"consumers/a/credentials/", b"/", b"\xff\xfe", b"{\"id\":", b"[", b"\"", b"secrets/", b"plugins",
            b"\xe2\x82", b"{\"plugins\":{\"x\":\"$secret://a/b/c\"}}",
        ];
        let mut kvs = Vec::new();
        for _ in 0..3000 {
            let mut piece = |n: u64| (0..n).map(|_| pieces[(next() % 12) as usize]).collect::<Vec<_>>().concat();
            let (key, value, lease) = (piece(1 + 4), piece(3), piece(1).len() as i64 % 3);
            kvs.push(KeyValue { key, value, lease, ..KeyValue::default() });
        }
        kvs.push(KeyValue::default());
        kvs.push(kv("/apisix/routes/deep", &format!("{}{}", "[".repeat(10_000), "]".repeat(10_000))));
        for prefix in ["/apisix", "", "/", "\u{fffd}"] {
            let report = analyze(prefix, &kvs);
            assert_eq!(report.totals.keys, kvs.len() as u64);
            serde_json::to_string(&report).unwrap();
        }
        assert_eq!(clip("é".repeat(SUMMARY_CHARS + 5)).chars().count(), SUMMARY_CHARS + 1);
        assert_eq!(KeyRange::prefix(b"/apisix").end, b"/apisiy");
        assert_eq!(KeyRange::prefix(b"a\xff\xff").end, b"b");
        assert_eq!(KeyRange::prefix(b"\xff").end, b"\0");
    }
}

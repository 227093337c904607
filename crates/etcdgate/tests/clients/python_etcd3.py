"""python-etcd3 (PyPI `etcd3`, gRPC) against one endpoint: prints what it sees, one line per
step, so that a run against etcd and one against etcdgate can be compared. Exits non-zero
if a step the script expects to work raises.
Usage: python_etcd3.py HOST:PORT KEY_PREFIX"""
import os
import sys

# etcd3 0.12's generated modules predate protobuf 4's C++ descriptors.
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
import etcd3  # noqa: E402

host, port = sys.argv[1].rsplit(":", 1)
p = sys.argv[2]
c = etcd3.client(host=host, port=int(port), timeout=10)


def log(*parts):
    print(*parts, flush=True)


def outcome(call):
    """What `call` returned, or the error it raised."""
    try:
        return repr(call())
    except Exception as error:  # noqa: BLE001 - what the client raised is the output
        code = getattr(error, "code", None)
        details = getattr(error, "details", None)
        return f"{type(error).__name__} {code() if code else ''} {details() if details else error}"


start = c.get_response(p + "/a").header.revision + 1
c.put(p + "/a", "1")
c.put(p + "/b", "2")
value, meta = c.get(p + "/a")
log("get", value, meta.key, meta.version, meta.create_revision == meta.mod_revision == start)
log("get missing", c.get(p + "/missing"))
log("prefix", [(v, m.key) for v, m in c.get_prefix(p + "/")])
log("prefix descending", [m.key for _, m in c.get_prefix(p + "/", sort_order="descend", sort_target="key")])
log("prefix keys only", [m.key for _, m in c.get_prefix(p + "/", keys_only=True)])
log("range", [(v, m.key) for v, m in c.get_range(p + "/a", p + "/b")])
ok, responses = c.transaction(
    compare=[c.transactions.value(p + "/a") == "1", c.transactions.version(p + "/b") > 0],
    success=[c.transactions.put(p + "/c", "3"), c.transactions.get(p + "/a")],
    failure=[c.transactions.delete(p + "/a")],
)
log("txn", ok, [[(v, m.key) for v, m in r] if isinstance(r, list) else type(r).__name__ for r in responses])
ok, _ = c.transaction(compare=[c.transactions.create(p + "/a") == 0], success=[], failure=[c.transactions.put(p + "/d", "4")])
log("txn failure branch", ok, c.get(p + "/d")[0])
log("replace", c.replace(p + "/a", "1", "5"), c.replace(p + "/a", "1", "6"), c.get(p + "/a")[0])
log("put_if_not_exists", c.put_if_not_exists(p + "/a", "7"), c.put_if_not_exists(p + "/e", "8"))

lease = c.lease(30)
c.put(p + "/leased", "x", lease=lease)
log("lease", lease.granted_ttl, 0 < lease.remaining_ttl <= 30, lease.keys)
lease.refresh()
lease.revoke()
log("after revoke", c.get(p + "/leased")[0], c.get_lease_info(lease.id).TTL)

events = []
iterator, cancel = c.watch_prefix(p + "/", start_revision=start)
for event in iterator:
    events.append((type(event).__name__, event.key, event.value))
    if len(events) == 8:
        cancel()
        break
log("watch prefix from start", events)
events = []
iterator, cancel = c.watch(p + "/a", start_revision=start, prev_kv=True)
for event in iterator:
    events.append((type(event).__name__, event.key, event.value, event.prev_value))
    if len(events) == 2:
        cancel()
        break
log("watch key with prev_kv", events)

with c.lock("lock" + p.replace("/", "-"), ttl=10) as lock:
    log("locked", lock.is_acquired())
log("members", len(list(c.members)))
status = c.status()
log("status", status.version != "", status.db_size > 0, status.leader is not None)
log("alarms", list(c.list_alarms()))
log("delete", c.delete(p + "/a"), c.delete(p + "/a"))
log("delete prefix", c.delete_prefix(p + "/").deleted)
log("empty after", list(c.get_prefix(p + "/")))

c.compact(c.get_response(p + "/a").header.revision)
events = []
iterator, cancel = c.watch_prefix(p + "/", start_revision=start)
log("watch compacted", outcome(lambda: (lambda event: (type(event).__name__, event.key))(next(iterator))))
cancel()
log("empty key", outcome(lambda: c.get("")))
log("revoke unknown lease", outcome(lambda: c.revoke_lease(123456789)))

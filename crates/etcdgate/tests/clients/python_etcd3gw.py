"""etcd3gw (PyPI `etcd3gw`, OpenStack's client of etcd's HTTP/JSON gateway) against one
endpoint: prints what it sees, one line per step, so that a run against etcd and one against
etcdgate can be compared. Exits non-zero if a step the script expects to work raises.
Usage: python_etcd3gw.py HOST:PORT KEY_PREFIX"""
import sys

from etcd3gw.client import Etcd3Client

host, port = sys.argv[1].rsplit(":", 1)
p = sys.argv[2]
c = Etcd3Client(host=host, port=int(port), timeout=10)


def log(*parts):
    print(*parts, flush=True)


def error_of(call):
    try:
        call()
        return "no error"
    except Exception as error:  # noqa: BLE001 - what the client raised is the output
        return f"{type(error).__name__} {getattr(error, 'detail_text', error)}"


def keys(found):
    return [meta["key"] for _, meta in found]


log("api", c.api_path)
start = int(c.status()["header"]["revision"]) + 1
c.put(p + "/a", "1")
c.put(p + "/b", "2")
c.put(p + "/c", "3")
log("get", c.get(p + "/a"), c.get(p + "/missing"))
value, meta = c.get(p + "/a", metadata=True)[0]
log("metadata", value, meta["key"], meta["version"], int(meta["create_revision"]) == start, "lease" in meta)
log("prefix", sorted((v, m["key"]) for v, m in c.get_prefix(p + "/")))
log("limit", keys(c.get(p + "/", metadata=True, range_end=p + "0", limit=2)))
log("descending by value", keys(c.get(p + "/", metadata=True, range_end=p + "0", sort_order="descend", sort_target="value")))
log("at revision", keys(c.get(p + "/", metadata=True, range_end=p + "0", revision=start + 1)))
log("serializable", keys(c.get(p + "/", metadata=True, range_end=p + "0", serializable=True)))
log("keys only", [(v, m["key"]) for v, m in c.get(p + "/", metadata=True, range_end=p + "0", keys_only=True)])
log("count only", c.get(p + "/", metadata=True, range_end=p + "0", count_only=True))
log("min mod revision", keys(c.get(p + "/", metadata=True, range_end=p + "0", min_mod_revision=start + 1)))
log("max create revision", keys(c.get(p + "/", metadata=True, range_end=p + "0", max_create_revision=start)))
log("create", c.create(p + "/a", "x"), c.create(p + "/new", "y"))
log("replace", c.replace(p + "/a", "1", "9"), c.replace(p + "/a", "1", "8"), c.get(p + "/a"))
b64 = __import__("base64").b64encode
txn = c.transaction({
    "compare": [{"key": b64((p + "/b").encode()).decode(), "result": "EQUAL", "target": "VALUE",
                 "value": b64(b"2").decode()}],
    "success": [{"request_put": {"key": b64((p + "/t").encode()).decode(), "value": b64(b"t").decode()}},
                {"request_range": {"key": b64((p + "/t").encode()).decode()}}],
    "failure": [],
})
log("txn", txn.get("succeeded"), [sorted(r) for r in txn["responses"]])

lease = c.lease(30)
c.put(p + "/leased", "x", lease=lease)
log("lease", 0 < lease.ttl() <= 30, lease.keys(), 0 < lease.refresh() <= 30)
log("revoke", lease.revoke(), c.get(p + "/leased"), lease.ttl())

events, cancel = c.watch_prefix(p + "/", start_revision=start, prev_kv=True)
got = []
for event in events:
    got.append((event.get("type", "PUT"), event["kv"]["key"], event["kv"].get("value"), "prev_kv" in event))
    if len(got) == 8:
        break
cancel()
log("watch prefix from start", got)

lock = c.lock(ttl=10)
log("lock", lock.acquire(), lock.is_acquired(), lock.release(), lock.is_acquired())
log("members", len(c.members()))
log("status", sorted(c.status()))
log("delete", c.delete(p + "/a"), c.delete(p + "/a"))
log("delete prefix", c.delete_prefix(p + "/"), c.get_prefix(p + "/"))

log("empty key", error_of(lambda: c.get("")))
log("future revision", error_of(lambda: c.get(p + "/a", revision=start + 100000)))
c.post(c.get_url("/kv/compaction"), json={"revision": int(c.status()["header"]["revision"])})
log("compacted revision", error_of(lambda: c.get(p + "/a", revision=start)))
# The message of a body that is not JSON comes from the JSON parser (Go's or serde's).
bad = c.session.post(c.get_url("/kv/range"), data="{not json", timeout=10)
log("bad json", bad.status_code, bad.json()["code"])

// etcd3 (npm `etcd3`, gRPC through @grpc/grpc-js) against one endpoint: prints what it sees,
// one line per step, so that a run against etcd and one against etcdgate can be compared.
// Exits non-zero if a step the script expects to work throws.
// Usage: node node_etcd3.js HOST:PORT KEY_PREFIX   (NODE_PATH: where etcd3 is installed)
const { Etcd3 } = require('etcd3');

const [endpoint, p] = process.argv.slice(2);
const c = new Etcd3({ hosts: endpoint, dialTimeout: 10000 });
const log = (...parts) => console.log(...parts.map(x => (typeof x === 'string' ? x : JSON.stringify(x))));
const errorOf = async call => {
  try {
    await call();
    return 'no error';
  } catch (error) {
    return `${error.constructor.name} ${error.message}`;
  }
};

(async () => {
  const start = Number((await c.maintenance.status({})).header.revision) + 1;
  await c.put(p + '/a').value('1');
  await c.put(p + '/b').value('2');
  await c.put(p + '/c').value('3');
  log('get', await c.get(p + '/a').string(), await c.get(p + '/missing').string());
  log('all', await c.getAll().prefix(p + '/').strings());
  log('count', await c.getAll().prefix(p + '/').count());
  log('keys', await c.getAll().prefix(p + '/').keys());
  log('sorted limit', await c.getAll().prefix(p + '/').sort('Value', 'Descend').limit(2).keys());
  log('at revision', await c.getAll().prefix(p + '/').revision(String(start + 1)).keys());
  log('serializable', await c.getAll().prefix(p + '/').options({ serializable: true }).keys());
  const txn = await c.if(p + '/a', 'Value', '==', '1').then(c.put(p + '/t').value('t'), c.get(p + '/a')).else(c.delete().key(p + '/a')).commit();
  log('txn', txn.succeeded, txn.responses.map(r => r.response));
  const other = await c.if(p + '/a', 'Create', '==', 0).then(c.put(p + '/x').value('x')).else(c.put(p + '/d').value('4')).commit();
  log('txn else', other.succeeded, await c.get(p + '/d').string());

  const lease = c.lease(30, { autoKeepAlive: false });
  await lease.put(p + '/leased').value('x');
  log('lease', (await lease.grant()).length > 0, await c.get(p + '/leased').string());
  await lease.keepaliveOnce();
  await lease.revoke();
  log('after revoke', await c.get(p + '/leased').string());

  const events = [];
  const watcher = await c.watch().prefix(p + '/').startRevision(String(start)).withPreviousKV().create();
  await new Promise(resolve => {
    const seen = (kind, kv, previous) => {
      if (events.length < 7) events.push([kind, kv.key.toString(), kv.value.toString(), previous ? previous.value.toString() : null]);
      if (events.length === 7) resolve();
    };
    watcher.on('put', (kv, previous) => seen('put', kv, previous));
    watcher.on('delete', (kv, previous) => seen('delete', kv, previous));
  });
  await watcher.cancel();
  log('watch from start', events);

  await c.lock('lock' + p.replaceAll('/', '-')).do(async () => log('locked'));
  const election = c.election('election' + p.replaceAll('/', '-'));
  const campaign = election.campaign('me');
  await new Promise((resolve, reject) => { campaign.on('elected', resolve); campaign.on('error', reject); });
  log('leader', await election.leader());
  await campaign.resign();
  log('members', (await c.cluster.memberList({})).members.length);
  log('status', !!(await c.maintenance.status({})).version);
  log('delete', (await c.delete().key(p + '/a')).deleted, (await c.delete().prefix(p + '/')).deleted);

  log('empty key', await errorOf(() => c.get('').string()));
  log('future revision', await errorOf(() => c.get(p + '/a').revision(String(start + 100000)).string()));
  log('unknown lease', await errorOf(() => c.put(p + '/z').value('z').lease('123456789').exec()));
  c.close();
})().catch(error => {
  console.log('FAILED', error);
  process.exit(1);
});

//! A member that loses its leader leaves rotation as `leaderless` and comes back when the
//! cluster has a leader again: with two of three members killed, the survivor has no quorum;
//! etcdgate's `/metrics` shows it leaderless, then healthy once a second member is back.

mod common;

use std::time::{Duration, Instant};

use etcdgate_testkit::{Cluster, EtcdVersion};

use common::{http_get, Etcdgate};

/// Waits (bounded) until `/metrics` says `member` is in `state`.
fn wait_for_state(gateway: &Etcdgate, member: &str, state: &str) {
    let line = format!("etcdgate_member_state{{member=\"{member}\",state=\"{state}\"}} 1");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = http_get(gateway.addr(), "/metrics");
        if metrics.contains(&line) {
            return;
        }
        assert!(Instant::now() < deadline, "{member} never became {state}:\n{metrics}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_without_quorum_is_leaderless_until_quorum_returns() {
    for version in EtcdVersion::all() {
        let mut cluster = Cluster::start(version, 3).await.unwrap();
        let gateway = Etcdgate::start(&cluster.endpoints());
        let survivor = cluster.client_url(0);
        wait_for_state(&gateway, &survivor, "healthy");

        cluster.kill(1);
        cluster.kill(2);
        wait_for_state(&gateway, &survivor, "leaderless");

        cluster.restart(1).await.unwrap();
        wait_for_state(&gateway, &survivor, "healthy");
    }
}

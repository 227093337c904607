//! A member that refuses connections never reaches clients: every read and write through
//! etcdgate succeeds while it is down, it gets no call while it is down, and it gets calls
//! again once it is back. `/metrics` shows the member's state change and the requests, per
//! RPC and per member (`etcdgate_member_requests_total`, which these checks read: balancing
//! is random among the cheaper members, so which member answers one call is not fixed).

mod common;

use std::time::{Duration, Instant};

use etcdgate_proto::etcdserverpb::{kv_client::KvClient, maintenance_client::MaintenanceClient, PutRequest, RangeRequest, StatusRequest};
use etcdgate_testkit::{Cluster, EtcdVersion};

use common::{http_get, member_requests, Etcdgate};

/// Longest wait for a member to get calls through etcdgate.
const WAIT: Duration = Duration::from_secs(60);

/// `calls` Status calls through etcdgate, each of which must succeed.
async fn statuses(maintenance: &mut MaintenanceClient<tonic::transport::Channel>, calls: usize) {
    for i in 0..calls {
        maintenance.status(StatusRequest {}).await.unwrap_or_else(|e| panic!("status {i} through etcdgate: {e}"));
    }
}

/// Makes Status calls through etcdgate until the member at `member_url` got one (bounded).
async fn wait_for_calls_to(gateway: &Etcdgate, maintenance: &mut MaintenanceClient<tonic::transport::Channel>, member_url: &str, what: &str) {
    let before = member_requests(gateway.addr(), member_url);
    let deadline = Instant::now() + WAIT;
    while member_requests(gateway.addr(), member_url) == before {
        assert!(Instant::now() < deadline, "{what} got no call through etcdgate in {WAIT:?}");
        statuses(maintenance, 10).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_member_is_skipped_and_used_again_after_restart() {
    for version in EtcdVersion::all() {
        let mut cluster = Cluster::start(version, 3).await.unwrap();
        let gateway = Etcdgate::start(&cluster.endpoints());
        let url = gateway.url();
        let mut kv = KvClient::connect(url.clone()).await.unwrap();
        let mut maintenance = MaintenanceClient::connect(url.clone()).await.unwrap();

        let victim = (cluster.leader().await.unwrap() + 1) % 3;
        let victim_url = cluster.client_url(victim);
        wait_for_calls_to(&gateway, &mut maintenance, &victim_url, "the member to be killed").await;

        cluster.kill(victim);
        for i in 0..30 {
            let key = format!("/failover/{i}").into_bytes();
            kv.put(PutRequest { key: key.clone(), value: b"v".to_vec(), ..Default::default() })
                .await
                .unwrap_or_else(|e| panic!("put {i} with a member down: {e}"));
            let got = kv
                .range(RangeRequest { key, ..Default::default() })
                .await
                .unwrap_or_else(|e| panic!("range {i} with a member down: {e}"))
                .into_inner();
            assert_eq!(got.kvs.len(), 1);
        }

        // The calls above may all have gone to the other members; then the next probe (every
        // 500 ms) finds the killed one down.
        let down = format!("etcdgate_member_state{{member=\"{victim_url}\",state=\"down\"}} 1");
        let deadline = Instant::now() + WAIT;
        let metrics = loop {
            let metrics = http_get(gateway.addr(), "/metrics");
            if metrics.contains(&down) || Instant::now() >= deadline {
                break metrics;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(metrics.contains(&down), "metrics show the killed member down:\n{metrics}");
        assert!(metrics.contains("etcdgate_member_state_changes_total{"), "{metrics}");
        assert!(metrics.contains("etcdgate_requests_total{rpc=\"Put\",code=\"OK\"} 30"), "{metrics}");

        // Down: its counter stands still while the others take every call.
        let survivors: Vec<String> = (0..3).filter(|&i| i != victim).map(|i| cluster.client_url(i)).collect();
        let victim_before = member_requests(gateway.addr(), &victim_url);
        let survivors_before: u64 = survivors.iter().map(|u| member_requests(gateway.addr(), u)).sum();
        statuses(&mut maintenance, 30).await;
        assert_eq!(member_requests(gateway.addr(), &victim_url), victim_before, "the killed member gets no calls");
        let survivors_after: u64 = survivors.iter().map(|u| member_requests(gateway.addr(), u)).sum();
        assert!(survivors_after - survivors_before >= 30, "the other members take all 30 calls");

        cluster.restart(victim).await.unwrap();
        wait_for_calls_to(&gateway, &mut maintenance, &victim_url, "the restarted member").await;
        let spread: Vec<u64> = cluster.client_urls().iter().map(|u| member_requests(gateway.addr(), u)).collect();
        eprintln!("{version}: calls sent to each member (member {victim} was killed): {spread:?}");
    }
}

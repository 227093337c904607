//! A member that refuses connections never reaches clients: every read and write through
//! etcdgate succeeds while it is down, and it gets traffic again once it is back. `/metrics`
//! shows the member's state change and the requests.

mod common;

use std::time::{Duration, Instant};

use etcdgate_proto::etcdserverpb::{kv_client::KvClient, maintenance_client::MaintenanceClient, PutRequest, RangeRequest, StatusRequest};
use etcdgate_testkit::{Cluster, EtcdVersion};

use common::{http_get, Etcdgate};

async fn member_ids_seen(url: &str, calls: usize) -> Vec<u64> {
    let mut maintenance = MaintenanceClient::connect(url.to_string()).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..calls {
        let status = maintenance.status(StatusRequest {}).await.expect("status through etcdgate").into_inner();
        ids.push(status.header.unwrap().member_id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_member_is_skipped_and_used_again_after_restart() {
    for version in EtcdVersion::all() {
        let mut cluster = Cluster::start(version, 3).await.unwrap();
        let gateway = Etcdgate::start(&cluster.endpoints());
        let url = gateway.url();
        let mut kv = KvClient::connect(url.clone()).await.unwrap();

        let mut before: Vec<u64> = member_ids_seen(&url, 9).await;
        before.sort();
        before.dedup();
        assert_eq!(before.len(), 3, "round-robin reaches every member");

        let victim = (cluster.leader().await.unwrap() + 1) % 3;
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
        let mut during = member_ids_seen(&url, 9).await;
        during.sort();
        during.dedup();
        assert_eq!(during.len(), 2, "the killed member gets no requests");

        let metrics = http_get(gateway.addr(), "/metrics");
        let victim_url = cluster.client_url(victim);
        assert!(
            metrics.contains(&format!("etcdgate_member_state{{member=\"{victim_url}\",state=\"down\"}} 1")),
            "metrics show the killed member down:\n{metrics}"
        );
        assert!(metrics.contains("etcdgate_member_state_changes_total{"), "{metrics}");
        assert!(metrics.contains("etcdgate_requests_total{rpc=\"Put\",code=\"OK\"} 30"), "{metrics}");

        cluster.restart(victim).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut seen = member_ids_seen(&url, 6).await;
            seen.sort();
            seen.dedup();
            if seen.len() == 3 {
                break;
            }
            assert!(Instant::now() < deadline, "restarted member never got traffic again");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

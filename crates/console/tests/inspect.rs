//! Inspections of real etcd clusters (3.4 and 3.5): a healthy cluster has nothing to report and
//! its members' hashes agree; a learner, an alarm and a dead member are each reported, with
//! the right severity, about the right member.

use std::time::Duration;

use etcdgate_console::inspect::{inspect, InspectOptions, Inspection, Severity};
use etcdgate_proto::etcdserverpb::{
    alarm_request::AlarmAction, kv_client::KvClient, maintenance_client::MaintenanceClient, AlarmRequest, AlarmType,
    PutRequest,
};
use etcdgate_testkit::{Cluster, EtcdVersion};
use etcdgate_upstream::{Pool, PoolOptions};

fn has(inspection: &Inspection, severity: Severity, subject: &str, part: &str) -> bool {
    inspection.findings.iter().any(|f| f.severity == severity && f.subject == subject && f.text.contains(part))
}

fn serious(inspection: &Inspection) -> Vec<String> {
    inspection.findings.iter().filter(|f| f.severity > Severity::Info).map(|f| format!("{}: {}", f.subject, f.text)).collect()
}

#[tokio::test]
async fn inspections_report_what_is_wrong_and_nothing_else() {
    for version in EtcdVersion::all() {
        let mut cluster = Cluster::start(version, 3).await.unwrap();
        let pool = Pool::new(&cluster.client_urls(), PoolOptions::default()).unwrap();
        let options = InspectOptions::default();
        let mut kv = KvClient::connect(cluster.client_url(0)).await.unwrap();
        for i in 0..50 {
            let put = PutRequest { key: format!("/apisix/routes/{i}").into_bytes(), value: vec![b'x'; 100], ..Default::default() };
            kv.put(put).await.unwrap();
        }

        // Healthy: every member answers with one leader, the hashes agree, nothing to report.
        let healthy = inspect(&pool, None, &options).await;
        assert_eq!(healthy.members.len(), 3, "{version}: {healthy:?}");
        assert_eq!(healthy.worst(), None, "{version}: {:?}", healthy.findings);
        assert!(healthy.member_list_error.is_none() && healthy.alarms == Some(vec![]), "{version}: {healthy:?}");
        let hashes: Vec<u32> = healthy.members.iter().map(|m| m.hash.as_ref().expect("hashed").hash).collect();
        assert!(hashes.windows(2).all(|pair| pair[0] == pair[1]), "{version}: {hashes:?}");
        let leaders: Vec<&str> = healthy.members.iter().map(|m| m.status.as_ref().unwrap().leader.as_str()).collect();
        assert!(leaders.iter().all(|l| *l == leaders[0]) && healthy.members.iter().any(|m| m.id == leaders[0]), "{version}");
        assert!(healthy.hashed_revision.unwrap() >= 51, "{version}: {healthy:?}");
        for member in &healthy.members {
            let status = member.status.as_ref().unwrap();
            assert!(status.db_size > 0 && member.quota_bytes == Some(2 << 30), "{version}: {member:?}");
            assert!(version.to_string().ends_with(&status.version[..3]), "{version}: {member:?}");
        }
        let text = healthy.render_text();
        assert!(text.contains("no findings") && text.contains("leader") && text.contains("follower"), "{text}");

        // A learner is listed as one, and is told to be promoted once it caught up.
        let learner = cluster.add_learner().await.unwrap();
        let learner_name = cluster.member_name(learner).to_string();
        let with_learner = inspect(&pool, None, &options).await;
        let listed = with_learner.members.iter().find(|m| m.name == learner_name).expect("learner listed");
        assert!(listed.is_learner && listed.status.is_some(), "{version}: {listed:?}");
        assert!(has(&with_learner, Severity::Info, &learner_name, "member promote"), "{version}: {:?}", with_learner.findings);
        assert!(serious(&with_learner).is_empty(), "{version}: {:?}", with_learner.findings);

        // An alarm is critical, about the member it was raised on.
        let alarmed = healthy.members[1].clone();
        let mut maintenance = MaintenanceClient::connect(cluster.client_url(0)).await.unwrap();
        let alarm = |action: AlarmAction| AlarmRequest {
            action: action as i32,
            member_id: u64::from_str_radix(&alarmed.id, 16).unwrap(),
            alarm: AlarmType::Nospace as i32,
        };
        maintenance.alarm(alarm(AlarmAction::Activate)).await.unwrap();
        let with_alarm = inspect(&pool, None, &options).await;
        assert_eq!(with_alarm.worst(), Some(Severity::Critical), "{version}: {:?}", with_alarm.findings);
        assert!(has(&with_alarm, Severity::Critical, &alarmed.name, "NOSPACE"), "{version}: {:?}", with_alarm.findings);
        maintenance.alarm(alarm(AlarmAction::Deactivate)).await.unwrap();

        // A dead voter: it does not answer, and one more failure would stop the cluster.
        let victim = (0..3).find(|i| cluster.client_url(*i) != cluster.client_url(0)).unwrap_or(1);
        let victim_name = cluster.member_name(victim).to_string();
        cluster.kill(victim);
        let degraded = inspect(&pool, None, &InspectOptions { call_timeout: Duration::from_secs(2), ..options.clone() }).await;
        assert_eq!(degraded.worst(), Some(Severity::Warning), "{version}: {:?}", degraded.findings);
        assert!(has(&degraded, Severity::Warning, &victim_name, "does not answer"), "{version}: {:?}", degraded.findings);
        assert!(has(&degraded, Severity::Warning, "cluster", "one more failure"), "{version}: {:?}", degraded.findings);
        let answering: Vec<&str> = degraded.members.iter().filter(|m| m.hash.is_some()).map(|m| m.name.as_str()).collect();
        assert_eq!(answering.len(), 2, "{version}: the two voters left are hashed (learners refuse HashKV): {answering:?}");

        // A second voter killed: quorum is lost; the member list still comes (a member's own).
        let second = (0..3).find(|i| *i != victim && cluster.is_running(*i)).unwrap();
        cluster.kill(second);
        let lost = inspect(&pool, None, &InspectOptions { call_timeout: Duration::from_secs(2), ..options.clone() }).await;
        assert_eq!((lost.worst(), lost.members.len()), (Some(Severity::Critical), 4), "{version}: {:?}", lost.findings);
        // The member left may still believe in the old leader for an election timeout, or not.
        let quorum_lost = |found: &str| has(&lost, Severity::Critical, "cluster", found);
        assert!(quorum_lost("only 1 of 3 voting members") || quorum_lost("only 0 of 3 voting members"), "{version}: {:?}", lost.findings);
    }
}

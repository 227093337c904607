//! Membership changes against real etcd 3.4 and 3.5: a member joins as a learner with the
//! flags to start it, is promoted only as a started learner, the leader hands over before it
//! is removed, and a removal that would cost the quorum is refused and changes nothing.

use std::time::Duration;

use etcdgate_console::inspect::{inspect, InspectOptions, Inspection, Severity};
use etcdgate_console::membership::{add_learner, promote, remove};
use etcdgate_console::Credentials;
use etcdgate_testkit::{etcdctl_ok, free_port, Cluster, EtcdVersion};
use etcdgate_upstream::login::Login;
use etcdgate_upstream::{Pool, PoolOptions};

/// Changes made without credentials (etcd's auth is off).
const NO_CREDENTIALS: Credentials = Credentials::Gateway(None);

async fn look(pool: &Pool) -> Inspection {
    inspect(pool, None, &InspectOptions { check_consistency: false, ..InspectOptions::default() }).await
}

/// The cluster as the members see it once `holds` (a change just made has reached the member
/// asked: etcd 3.4 answers MemberList from any member's own view), or after 10 s as it is.
async fn settled(pool: &Pool, holds: impl Fn(&Inspection) -> bool) -> Inspection {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let inspection = look(pool).await;
        if holds(&inspection) || std::time::Instant::now() > deadline {
            return inspection;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn leader_name(inspection: &Inspection) -> String {
    let leader = inspection.members.iter().find_map(|m| m.status.as_ref().map(|s| s.leader.clone())).unwrap();
    inspection.members.iter().find(|m| m.id == leader).unwrap().name.clone()
}

#[tokio::test]
async fn membership_changes_keep_the_quorum() {
    for version in EtcdVersion::all() {
        let mut cluster = Cluster::start(version, 3).await.unwrap();
        let pool = Pool::new(&cluster.client_urls(), PoolOptions::default()).unwrap();

        // Add: a learner, with the flags that start it; a second add waits for the first to start.
        let peer = format!("http://127.0.0.1:{}", free_port());
        let added = add_learner(&pool, None, NO_CREDENTIALS, "late", std::slice::from_ref(&peer)).await.unwrap_or_else(|e| panic!("{version}: {e}"));
        let initial_cluster = added.etcd_flags.iter().find(|f| f.starts_with("--initial-cluster=")).unwrap();
        for i in 0..3 {
            assert!(initial_cluster.contains(&format!("{}=", cluster.member_name(i))), "{version}: {initial_cluster}");
        }
        assert!(initial_cluster.contains(&format!("late={peer}")) && added.etcd_flags.contains(&"--initial-cluster-state=existing".to_string()));
        let listed = settled(&pool, |i| i.members.iter().any(|m| m.id == added.id)).await;
        let late = listed.members.iter().find(|m| m.id == added.id).expect("added member listed");
        assert!(late.is_learner && late.name.is_empty(), "{version}: {late:?}");
        let again = add_learner(&pool, None, NO_CREDENTIALS, "later", &[format!("http://127.0.0.1:{}", free_port())]).await.unwrap_err();
        assert!(again.contains("never started"), "{version}: {again}");
        let early = promote(&pool, None, NO_CREDENTIALS, &added.id, 1000, Duration::ZERO).await.unwrap_err();
        assert!(early.contains("never started"), "{version}: {early}");
        remove(&pool, None, NO_CREDENTIALS, &added.id, false).await.unwrap_or_else(|e| panic!("{version}: {e}"));
        assert_eq!(settled(&pool, |i| i.members.len() == 3).await.members.len(), 3, "{version}");

        // Promote: only a learner, once it has caught up.
        let not_learner = promote(&pool, None, NO_CREDENTIALS, cluster.member_name(0), 1000, Duration::ZERO).await.unwrap_err();
        assert!(not_learner.contains("not a learner"), "{version}: {not_learner}");
        let learner = cluster.add_learner().await.unwrap();
        let learner_name = cluster.member_name(learner).to_string();
        let promoted = promote(&pool, None, NO_CREDENTIALS, &learner_name, 1000, Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{version}: {e}"));
        assert!(promoted.steps[0].starts_with(&format!("promoted {learner_name}")), "{version}: {promoted:?}");
        let after = settled(&pool, |i| i.members.iter().all(|m| !m.is_learner)).await;
        assert!(after.members.iter().all(|m| !m.is_learner) && after.members.len() == 4, "{version}: {after:?}");

        // Remove the leader: it hands over first.
        let old_leader = leader_name(&after);
        let removed = remove(&pool, None, NO_CREDENTIALS, &old_leader, false).await.unwrap_or_else(|e| panic!("{version}: {e}"));
        assert!(removed.steps[0].starts_with(&format!("moved the leadership from {old_leader}")), "{version}: {removed:?}");
        let three = settled(&pool, |i| i.members.len() == 3 && i.members.iter().all(|m| m.status.is_some())).await;
        assert_eq!(three.members.len(), 3, "{version}: {three:?}");
        assert_ne!(leader_name(&three), old_leader, "{version}");

        // A member down: removing another voter would cost the quorum and is refused; the dead one can go.
        let names: Vec<String> = three.members.iter().map(|m| m.name.clone()).collect();
        let leader_now = leader_name(&three);
        let dead = names.iter().find(|n| **n != leader_now).unwrap().clone();
        let dead_index = (0..cluster.member_count()).find(|i| cluster.member_name(*i) == dead).unwrap();
        cluster.kill(dead_index);
        let other = names.iter().find(|n| **n != leader_now && **n != dead).unwrap().clone();
        let refused = remove(&pool, None, NO_CREDENTIALS, &other, false).await.unwrap_err();
        assert!(refused.contains("lose its quorum"), "{version}: {refused}");
        assert_eq!(look(&pool).await.members.len(), 3, "{version}: the refused removal changed nothing");
        remove(&pool, None, NO_CREDENTIALS, &dead, false).await.unwrap_or_else(|e| panic!("{version}: {e}"));
        let two = settled(&pool, |i| i.members.len() == 2).await;
        assert!(two.members.len() == 2 && two.members.iter().all(|m| m.status.is_some()), "{version}: {two:?}");
    }
}

/// With etcd's auth on, a promote sent to a follower fails (measured on 3.5.1: the client gets
/// `request timed out`, the leader logs `failed to promote a member ... auth: user name is
/// empty` for the request the follower forwarded over the peer port); sent to the leader, as
/// etcdgate sends it, it works. Inspections as root see the hashes; as a user without the
/// root role they say consistency was not checked.
#[tokio::test]
async fn with_auth_on_promote_goes_to_the_leader_and_inspections_say_what_they_could_not_check() {
    for version in EtcdVersion::all() {
        let mut cluster = Cluster::start(version, 3).await.unwrap();
        let learner = cluster.add_learner().await.unwrap();
        let learner_name = cluster.member_name(learner).to_string();
        for args in [
            &["user", "add", "root:rootpw"][..],
            &["user", "grant-role", "root", "root"],
            &["user", "add", "reader:readerpw"],
            &["role", "add", "apisix"],
            &["role", "grant-permission", "apisix", "--prefix=true", "read", "/apisix"],
            &["user", "grant-role", "reader", "apisix"],
            &["auth", "enable"],
        ] {
            // Not through the learner, which refuses these.
            etcdctl_ok(version, &cluster.client_url(0), args).unwrap_or_else(|e| panic!("{version}: {e}"));
        }
        let pool = Pool::new(&cluster.client_urls(), PoolOptions::default()).unwrap();
        let root = Login::new("root", "rootpw");
        let as_root = inspect(&pool, Some(&root), &InspectOptions::default()).await;
        assert!(as_root.members.iter().filter(|m| !m.is_learner).all(|m| m.hash.is_some()), "{version}: {as_root:?}");
        assert!(as_root.findings.iter().all(|f| f.severity == Severity::Info), "{version}: {:?}", as_root.findings);
        let reader = Login::new("reader", "readerpw");
        let as_reader = inspect(&pool, Some(&reader), &InspectOptions::default()).await;
        assert!(
            as_reader.findings.iter().any(|f| f.severity == Severity::Info && f.text.contains("HashKV needs the root role")),
            "{version}: {:?}",
            as_reader.findings
        );

        let promoted = promote(&pool, Some(&root), Credentials::Gateway(Some(&root)), &learner_name, 1000, Duration::from_secs(30)).await;
        assert!(promoted.is_ok(), "{version}: {promoted:?}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while look_as(&pool, &root).await.members.iter().any(|m| m.is_learner) {
            assert!(std::time::Instant::now() < deadline, "{version}: still a learner after its promote");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn look_as(pool: &Pool, login: &Login) -> Inspection {
    inspect(pool, Some(login), &InspectOptions { check_consistency: false, ..InspectOptions::default() }).await
}

//! gRPC clients of single members for the test kit's own calls (status, member list,
//! workload clients): tonic channels with connect and call deadlines, so that a hung or
//! partitioned member cannot hang a test.

use std::time::Duration;

use anyhow::Context;
use etcdgate_proto::etcdserverpb::{cluster_client::ClusterClient, maintenance_client::MaintenanceClient};
use tonic::transport::{Channel, Endpoint};

/// Deadline of the test kit's own calls to a member, connecting included.
pub(crate) const MEMBER_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// An endpoint for `url` (`http://host:port`) with a connect timeout and `TCP_NODELAY`.
pub(crate) fn endpoint(url: &str, timeout: Duration) -> anyhow::Result<Endpoint> {
    Ok(Endpoint::from_shared(url.to_string())
        .with_context(|| format!("bad endpoint URL {url:?}"))?
        .connect_timeout(timeout)
        .tcp_nodelay(true))
}

/// A connected channel to `url` whose every call is bounded by [`MEMBER_CALL_TIMEOUT`].
pub(crate) async fn member_channel(url: &str) -> anyhow::Result<Channel> {
    endpoint(url, MEMBER_CALL_TIMEOUT)?.timeout(MEMBER_CALL_TIMEOUT).connect().await.with_context(|| format!("connect {url}"))
}

pub(crate) async fn maintenance_client(url: &str) -> anyhow::Result<MaintenanceClient<Channel>> {
    Ok(MaintenanceClient::new(member_channel(url).await?))
}

pub(crate) async fn cluster_client(url: &str) -> anyhow::Result<ClusterClient<Channel>> {
    Ok(ClusterClient::new(member_channel(url).await?))
}

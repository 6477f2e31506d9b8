//! Keeps a flow's two ways of dividing its partitions apart: in lanes
//! (exactly-once with `transaction_lanes`) or through the source's consumer
//! group (every other flow).
//!
//! Instances of one flow that divide it differently would both copy the same
//! partitions, under transactional ids that do not fence each other: records
//! twice, and offset-map entries racing. Changing `transaction_lanes` (from 0
//! or to 0) is safe once every instance of the old setting has stopped, so a
//! flow checks, before it copies anything, that nobody of the other kind is
//! in its group: lanes instances are members of the group `group_id` on the
//! destination, the others of `group_id` on the source. If someone is, the
//! flow copies nothing and says so, and the check is retried.
//!
//! It is a check at start, not a lock: two instances of different settings
//! that start at the same moment can both pass it. A check that cannot be
//! made (no permission to describe groups, a cluster down) is logged and not
//! held against the flow.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::client::client_config;
use crate::error::ReplicationError;
use crate::spec::{ClusterSpec, FlowSpec};

/// How long describing a group may take.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// `Err` naming the group and its members when instances of the flow that
/// divide it the other way are running.
pub async fn ensure_no_other_mode(spec: &FlowSpec) -> Result<(), ReplicationError> {
    let (cluster, running) = if spec.in_lanes() {
        (
            &spec.source,
            "without lanes (transaction_lanes = 0, or at-least-once)",
        )
    } else {
        (&spec.destination, "in lanes (transaction_lanes > 0)")
    };
    match group_members(cluster, &spec.group_id).await {
        Ok(members) if members.is_empty() => Ok(()),
        Ok(members) => Err(ReplicationError::OtherMode {
            cluster: cluster.alias.clone(),
            group: spec.group_id.clone(),
            members: members.join(", "),
            running: running.to_string(),
        }),
        Err(error) => {
            tracing::warn!(flow = %spec.name, cluster = %cluster.alias, group = %spec.group_id, error = %error, "cannot check that no instance of this flow runs {running}; going on");
            Ok(())
        }
    }
}

/// The client ids of the members of `group` on `cluster` (none if the group
/// does not exist or is empty).
async fn group_members(cluster: &ClusterSpec, group: &str) -> Result<Vec<String>, String> {
    let client: BaseConsumer = client_config(cluster, &[], &[])
        .create()
        .map_err(|e| format!("creating a client: {e}"))?;
    let group = group.to_string();
    tokio::task::spawn_blocking(move || {
        let described = client
            .fetch_group_list(Some(&group), DESCRIBE_TIMEOUT)
            .map_err(|e| format!("describing the group: {e}"))?;
        Ok(described
            .groups()
            .iter()
            .flat_map(|g| g.members())
            .map(|m| format!("{} ({})", m.client_id(), m.client_host()))
            .collect())
    })
    .await
    .map_err(|e| format!("describing the group: {e}"))?
}

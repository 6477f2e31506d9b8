//! Creates and grows destination topics, for the flow.
//!
//! Kept apart from the destination actor so that topic creation never waits
//! behind a mailbox that is backed up by a slow destination.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;

use crate::client::{client_config, LoggingContext};
use crate::error::ReplicationError;
use crate::spec::ClusterSpec;

/// What a destination topic must look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPlan {
    /// Destination topic name.
    pub name: String,
    /// Partition count it needs at least.
    pub partitions: i32,
    /// Replication factor when created.
    pub replication_factor: i32,
    /// Configs set when created.
    pub configs: BTreeMap<String, String>,
}

/// What [`TopicAdmin::ensure_topic`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ensured {
    /// The topic was there with enough partitions.
    Existed,
    /// The topic was created.
    Created,
    /// The topic had fewer partitions; it now has enough.
    Grown { from: i32 },
    /// The topic has more partitions than the source's (left alone).
    HasMorePartitions { partitions: i32 },
}

/// Creates and grows destination topics. Shared by the flow.
pub struct TopicAdmin {
    cluster: String,
    admin: Arc<AdminClient<LoggingContext>>,
    timeout: Duration,
}

impl TopicAdmin {
    /// An admin client for `cluster`.
    pub fn new(cluster: &ClusterSpec) -> Result<Self, ReplicationError> {
        let admin = client_config(cluster, &[], &[])
            .create_with_context(LoggingContext {
                cluster: cluster.alias.clone(),
            })
            .map_err(|source| ReplicationError::ClientCreation {
                cluster: cluster.alias.clone(),
                source,
            })?;
        Ok(Self {
            cluster: cluster.alias.clone(),
            admin: Arc::new(admin),
            timeout: Duration::from_secs(10),
        })
    }

    /// Partition count of `topic`, or `None` when it does not exist.
    pub async fn partitions(&self, topic: &str) -> Result<Option<i32>, ReplicationError> {
        let admin = Arc::clone(&self.admin);
        let name = topic.to_string();
        let timeout = self.timeout;
        let metadata = tokio::task::spawn_blocking(move || {
            admin.inner().fetch_metadata(Some(&name), timeout)
        })
        .await
        .map_err(|_| ReplicationError::ActorGone { actor: "metadata" })?
        .map_err(|e| self.creation_error(topic, e.to_string()))?;
        Ok(metadata.topics().first().and_then(|t| match t.error() {
            None => Some(t.partitions().len() as i32),
            Some(_) => None,
        }))
    }

    /// Makes sure the destination topic exists with at least the planned
    /// partitions, creating it when `create` allows.
    pub async fn ensure_topic(
        &self,
        plan: &TopicPlan,
        create: bool,
    ) -> Result<Ensured, ReplicationError> {
        match self.partitions(&plan.name).await? {
            Some(have) if have == plan.partitions => Ok(Ensured::Existed),
            Some(have) if have > plan.partitions => {
                Ok(Ensured::HasMorePartitions { partitions: have })
            }
            Some(have) => {
                self.grow(&plan.name, plan.partitions).await?;
                Ok(Ensured::Grown { from: have })
            }
            None if !create => Err(self.creation_error(
                &plan.name,
                "it does not exist and topic_auto_create is false".to_string(),
            )),
            None => self.create(plan).await,
        }
    }

    async fn create(&self, plan: &TopicPlan) -> Result<Ensured, ReplicationError> {
        let mut topic = NewTopic::new(
            &plan.name,
            plan.partitions,
            TopicReplication::Fixed(plan.replication_factor),
        );
        for (k, v) in &plan.configs {
            topic = topic.set(k, v);
        }
        let options = AdminOptions::new().operation_timeout(Some(self.timeout));
        let results = self
            .admin
            .create_topics([&topic], &options)
            .await
            .map_err(|e| self.creation_error(&plan.name, e.to_string()))?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => return Ok(Ensured::Existed),
                Err((_, code)) => return Err(self.creation_error(&plan.name, code.to_string())),
            }
        }
        Ok(Ensured::Created)
    }

    async fn grow(&self, topic: &str, partitions: i32) -> Result<(), ReplicationError> {
        let count = usize::try_from(partitions).unwrap_or(0);
        let options = AdminOptions::new().operation_timeout(Some(self.timeout));
        let results = self
            .admin
            .create_partitions([&NewPartitions::new(topic, count)], &options)
            .await
            .map_err(|e| self.creation_error(topic, e.to_string()))?;
        for result in results {
            if let Err((_, code)) = result {
                // Another instance of the flow may have grown it first.
                if code != RDKafkaErrorCode::InvalidPartitions {
                    return Err(self.creation_error(topic, code.to_string()));
                }
            }
        }
        Ok(())
    }

    fn creation_error(&self, topic: &str, reason: String) -> ReplicationError {
        ReplicationError::TopicCreation {
            cluster: self.cluster.clone(),
            topic: topic.to_string(),
            reason,
        }
    }
}

//! One replication flow: wires source -> discovery -> copiers -> destination.
//!
//! The flow turns topic events into actions: a new source topic is created
//! (or grown) on the destination first, and only then added to the group
//! consumer's subscription, so no copier ever writes to a missing topic. A
//! topic that cannot be created yet is retried with backoff while the other
//! topics keep flowing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::destination::{Destination, Flush};
use crate::topic_admin::{Ensured, TopicAdmin, TopicPlan};
use crate::discovery::{Discovered, SourceTopic, StopDiscovery, TopicDiscovery, TopicEvent};
use crate::error::ReplicationError;
use crate::metrics::{self as names, labels};
use crate::source::{Source, StopSource, Subscribe};
use crate::spec::FlowSpec;
use crate::status::{FlowState, FlowStatus, StatusBoard, TopicStatus};

/// Longest wait between two attempts to create a destination topic.
const TOPIC_RETRY_MAX: Duration = Duration::from_secs(60);

/// Supervises one flow.
pub struct FlowSupervisor {
    spec: Arc<FlowSpec>,
    status: Arc<FlowStatus>,
    destination: Addr<Destination>,
    admin: Arc<TopicAdmin>,
    source: Addr<Source>,
    discovery: Option<Addr<TopicDiscovery>>,
    /// Source topics as discovery last reported them.
    known: BTreeMap<String, SourceTopic>,
    /// Topics whose destination is ready: the consumer's subscription.
    ready: BTreeSet<String>,
    /// Failed creation attempts per topic, for backoff and one warning per streak.
    attempts: BTreeMap<String, u32>,
    stopping: bool,
}

impl FlowSupervisor {
    /// Creates the flow's clients and starts its actors in the current System.
    /// Fails only when a client cannot be created from the cluster properties.
    pub fn start(spec: FlowSpec, board: &StatusBoard) -> Result<Addr<Self>, ReplicationError> {
        let spec = Arc::new(spec);
        let status = board.flow(&spec.name, &spec.source.alias, &spec.destination.alias);
        let destination =
            Destination::new(&spec.destination, spec.tuning.mailbox_capacity)?.start();
        let admin = Arc::new(TopicAdmin::new(&spec.destination)?);
        let source = Source::start(Arc::clone(&spec), Arc::clone(&status), destination.clone())?;
        let discovery_spec = Arc::clone(&spec);
        let mut discovery_error = None;
        let addr = FlowSupervisor::create(|ctx| {
            let discovery = TopicDiscovery::new(discovery_spec, ctx.address().recipient())
                .map(Actor::start)
                .map_err(|e| discovery_error = Some(e))
                .ok();
            FlowSupervisor {
                spec,
                status,
                destination,
                admin,
                source,
                discovery,
                known: BTreeMap::new(),
                ready: BTreeSet::new(),
                attempts: BTreeMap::new(),
                stopping: false,
            }
        });
        match discovery_error {
            Some(error) => Err(error),
            None => Ok(addr),
        }
    }

    fn set_topic_state(&self, topic: &str, state: impl Into<String>) {
        let partitions = self.known.get(topic).map_or(0, |t| t.partitions);
        self.status.set_topic(
            topic,
            TopicStatus {
                destination_topic: self.spec.destination_topic(topic),
                partitions,
                state: state.into(),
            },
        );
    }

    fn plan(&self, topic: &str, info: &SourceTopic) -> TopicPlan {
        let mut configs: BTreeMap<String, String> = info
            .configs
            .iter()
            .filter(|(k, _)| !self.spec.topic_config_exclude.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        configs.extend(self.spec.topic_config_overrides.clone());
        TopicPlan {
            name: self.spec.destination_topic(topic),
            partitions: info.partitions,
            replication_factor: self.spec.replication_factor.unwrap_or(info.replication_factor),
            configs,
        }
    }

    /// Makes the destination topic ready, then subscribes to the source topic.
    fn ensure(&mut self, topic: String, ctx: &mut Context<Self>) {
        let Some(info) = self.known.get(&topic) else {
            return;
        };
        let plan = self.plan(&topic, info);
        let admin = Arc::clone(&self.admin);
        let create = self.spec.topic_auto_create;
        if !self.ready.contains(&topic) {
            self.set_topic_state(&topic, "creating");
        }
        let work = async move { admin.ensure_topic(&plan, create).await };
        ctx.spawn(work.into_actor(self).map(move |result, act, ctx| {
            if act.stopping || !act.known.contains_key(&topic) {
                return;
            }
            match result {
                Ok(outcome) => act.topic_ready(topic, outcome, ctx),
                Err(error) => act.topic_failed(topic, error, ctx),
            }
        }));
    }

    fn topic_ready(&mut self, topic: String, outcome: Ensured, ctx: &mut Context<Self>) {
        let destination_topic = self.spec.destination_topic(&topic);
        match outcome {
            Ensured::Created => {
                tracing::info!(flow = %self.spec.name, topic, destination_topic, "created destination topic");
                metrics::counter!(names::TOPICS_CREATED, labels::FLOW => self.spec.name.clone(), labels::TOPIC => destination_topic.clone()).increment(1);
            }
            Ensured::Grown { from } => {
                tracing::info!(flow = %self.spec.name, topic, destination_topic, from, "added partitions to the destination topic");
            }
            Ensured::HasMorePartitions { partitions } => {
                tracing::warn!(flow = %self.spec.name, topic, destination_topic, partitions, "destination topic has more partitions than the source; the extra ones stay empty");
            }
            Ensured::Existed => {}
        }
        if self.attempts.remove(&topic).is_some() {
            tracing::info!(flow = %self.spec.name, topic, "destination topic is ready now");
        }
        self.set_topic_state(&topic, "copying");
        self.ready.insert(topic);
        self.subscribe(ctx);
    }

    fn topic_failed(&mut self, topic: String, error: ReplicationError, ctx: &mut Context<Self>) {
        let attempts = self.attempts.entry(topic.clone()).or_insert(0);
        *attempts += 1;
        if *attempts == 1 {
            tracing::warn!(flow = %self.spec.name, topic, error = %error, "cannot prepare the destination topic; retrying with backoff, other topics keep flowing");
        }
        let delay = Duration::from_secs(1)
            .saturating_mul(2u32.saturating_pow((*attempts - 1).min(6)))
            .min(TOPIC_RETRY_MAX);
        self.set_topic_state(&topic, format!("waiting: {error}"));
        ctx.run_later(delay, move |act, ctx| {
            if !act.stopping {
                act.ensure(topic, ctx);
            }
        });
    }

    fn subscribe(&mut self, ctx: &mut Context<Self>) {
        let topics = self.ready.clone();
        let name = self.spec.name.clone();
        ctx.spawn(self.source.send(Subscribe(topics)).into_actor(self).map(
            move |result, _, _| match result {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(flow = name, error = %error, "subscription failed"),
                Err(_) => tracing::error!(flow = name, "the source supervisor is gone"),
            },
        ));
    }

    fn apply(&mut self, event: TopicEvent, ctx: &mut Context<Self>) {
        match event {
            TopicEvent::Added { topic, info } => {
                tracing::info!(flow = %self.spec.name, topic, partitions = info.partitions, "found source topic");
                self.known.insert(topic.clone(), info);
                self.ensure(topic, ctx);
            }
            TopicEvent::PartitionsIncreased { topic, from, info } => {
                tracing::info!(flow = %self.spec.name, topic, from, to = info.partitions, "source topic gained partitions");
                self.known.insert(topic.clone(), info);
                self.ensure(topic, ctx);
            }
            TopicEvent::ConfigChanged { topic, info } => {
                tracing::debug!(flow = %self.spec.name, topic, "source topic config changed");
                self.known.insert(topic, info);
            }
            TopicEvent::Removed { topic } => {
                tracing::info!(flow = %self.spec.name, topic, destination_topic = %self.spec.destination_topic(&topic), "source topic deleted; stopping its copiers and leaving the destination topic as it is");
                self.known.remove(&topic);
                self.attempts.remove(&topic);
                self.status.remove_topic(&topic);
                if self.ready.remove(&topic) {
                    self.subscribe(ctx);
                }
            }
        }
    }
}

impl Actor for FlowSupervisor {
    type Context = Context<Self>;
}

impl Handler<Discovered> for FlowSupervisor {
    type Result = ();

    fn handle(&mut self, Discovered(result): Discovered, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        match result {
            Ok(events) => {
                if self.status.state() != FlowState::Running {
                    tracing::info!(flow = %self.spec.name, "source is reachable; flow running");
                }
                self.status.set_state(FlowState::Running);
                for event in events {
                    self.apply(event, ctx);
                }
            }
            Err(reason) => {
                if self.status.state() != FlowState::Degraded {
                    tracing::warn!(flow = %self.spec.name, reason, "cannot read the source's topics; retrying");
                }
                self.status.set_state(FlowState::Degraded);
            }
        }
    }
}

/// Stops the flow cleanly: stop discovery, drain and commit the copiers,
/// flush the producer. Answered when done.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopFlow;

impl Handler<StopFlow> for FlowSupervisor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: StopFlow, _: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        self.status.set_state(FlowState::Stopping);
        tracing::info!(flow = %self.spec.name, "stopping: delivering what is in flight and committing progress");
        if let Some(discovery) = self.discovery.take() {
            discovery.do_send(StopDiscovery);
        }
        let source = self.source.clone();
        let destination = self.destination.clone();
        let timeout = self.spec.tuning.shutdown_timeout;
        let stop = async move {
            let _ = source.send(StopSource).await;
            let _ = destination.send(Flush(timeout)).await;
        };
        Box::pin(stop.into_actor(self).map(|_, act, ctx| {
            act.status.set_state(FlowState::Stopped);
            tracing::info!(flow = %act.spec.name, "stopped");
            ctx.stop();
        }))
    }
}

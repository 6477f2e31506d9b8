//! One replication flow: wires source -> discovery -> copiers -> destination.
//!
//! The flow turns topic events into actions: a new source topic is created
//! (or grown) on the destination first, and only then added to the group
//! consumer's subscription, so no copier ever writes to a missing topic. A
//! topic that cannot be created yet is retried with backoff while the other
//! topics keep flowing. Partitions added at the source are added at the
//! destination, and config changes are applied there when
//! `topic_config_sync` is on (see [`crate::topic_admin`]).
//!
//! Two source topics must never be copied into one destination topic. The
//! config checks catch what they can see (topics named literally); at run
//! time every flow of the process claims each destination topic before
//! copying into it, and a topic whose destination another flow already
//! writes is refused with an error in the log and in `/status`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::destination::{Destination, Flush, RefusalPolicy};
use crate::discovery::{
    Discovered, PartitionHistory, SourceTopic, StopDiscovery, TopicDiscovery, TopicEvent,
};
use crate::error::ReplicationError;
use crate::lane_ownership;
use crate::metrics::{self as names, labels};
use crate::mode_guard;
use crate::offset_store;
use crate::source::{Source, StopSource, Subscribe};
use crate::spec::{ClusterSpec, Delivery, FlowSpec, OnError};
use crate::status::{FlowState, FlowStatus, StatusBoard, TopicStatus};
use crate::topic_admin::{
    ConfigOutcome, Ensured, FailureKind, Layout, TopicAdmin, TopicFailure, TopicPlan,
};
use crate::transactional;

/// Longest wait between two attempts to create a destination topic.
const TOPIC_RETRY_MAX: Duration = Duration::from_secs(60);
/// Longest a subscription change waits for topics still being created.
const SUBSCRIBE_COALESCE_MAX: Duration = Duration::from_secs(1);
/// How often a held-back subscription looks again.
const SUBSCRIBE_COALESCE_STEP: Duration = Duration::from_millis(20);

/// The wait before attempt `failures + 1` at preparing a topic: 1 s, doubling,
/// at most [`TOPIC_RETRY_MAX`].
fn topic_retry_delay(failures: u32) -> Duration {
    Duration::from_secs(1)
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(6)))
        .min(TOPIC_RETRY_MAX)
}

/// Who copies into a destination topic.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Claim {
    flow: String,
    source_cluster: String,
    source_topic: String,
}

/// Destination topics claimed by the flows of this process, keyed by
/// (destination cluster identity, destination topic).
#[derive(Debug, Default)]
struct Claims(BTreeMap<(String, String), Claim>);

impl Claims {
    const fn new() -> Self {
        Self(BTreeMap::new())
    }

    /// Claims `topic` on `cluster`; fails with the holder when another
    /// source topic already writes it.
    fn claim(&mut self, cluster: &str, topic: &str, claim: Claim) -> Result<(), Claim> {
        match self.0.get(&(cluster.to_string(), topic.to_string())) {
            Some(holder) if *holder != claim => Err(holder.clone()),
            Some(_) => Ok(()),
            None => {
                self.0
                    .insert((cluster.to_string(), topic.to_string()), claim);
                Ok(())
            }
        }
    }

    /// Gives up `flow`'s claim on `topic` of `cluster`.
    fn release(&mut self, cluster: &str, topic: &str, flow: &str) {
        let key = (cluster.to_string(), topic.to_string());
        if self.0.get(&key).is_some_and(|c| c.flow == flow) {
            self.0.remove(&key);
        }
    }

    /// Gives up every claim of `flow`.
    fn release_all(&mut self, flow: &str) {
        self.0.retain(|_, c| c.flow != flow);
    }
}

static CLAIMS: Mutex<Claims> = Mutex::new(Claims::new());

fn claims() -> std::sync::MutexGuard<'static, Claims> {
    CLAIMS.lock().unwrap_or_else(|e| e.into_inner())
}

/// One cluster whatever its alias: its bootstrap servers, sorted, lowercased
/// (as the config checks compare clusters).
fn cluster_identity(cluster: &ClusterSpec) -> String {
    let servers: BTreeSet<String> = cluster
        .bootstrap_servers()
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    servers.into_iter().collect::<Vec<_>>().join(",")
}

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
    /// Failed config reads or changes per topic (the topic is ready meanwhile).
    config_attempts: BTreeMap<String, u32>,
    /// Topics being prepared now; `again`: prepare once more when done.
    in_flight: BTreeSet<String>,
    again: BTreeSet<String>,
    /// The pending retry of each topic, cancelled when one starts earlier.
    retries: BTreeMap<String, SpawnHandle>,
    /// Topics not copied because another source topic writes their
    /// destination topic: why.
    refused: BTreeMap<String, String>,
    /// The last warning logged per topic about a destination that differs
    /// (more partitions, configs while sync is off), so it is logged once.
    warned: BTreeMap<String, BTreeSet<String>>,
    /// Partition counts when each topic was found, shared with the source.
    history: Arc<PartitionHistory>,
    /// Strait's own destination topics (offset map, dead-letter) exist.
    internal_topics_ready: bool,
    /// A subscription with topics in it went to the source.
    subscribed: bool,
    /// When a subscription was first held back for topics being created.
    subscribe_deferred_since: Option<Instant>,
    /// A held-back subscription is due to be looked at again.
    subscribe_pending: bool,
    stopping: bool,
}

impl FlowSupervisor {
    /// Creates the flow's clients and starts its actors in the current System.
    /// Fails only when a client cannot be created from the cluster properties.
    pub fn start(spec: FlowSpec, board: &StatusBoard) -> Result<Addr<Self>, ReplicationError> {
        let spec = Arc::new(spec);
        let status = board.flow(&spec.name, &spec.source.alias, &spec.destination.alias);
        let refusals = RefusalPolicy {
            on_error: spec.on_error.clone(),
            flow: spec.name.clone(),
            source_cluster: spec.source.alias.clone(),
        };
        let destination =
            Destination::new(&spec.destination, spec.tuning.mailbox_capacity, refusals)?.start();
        let admin = Arc::new(TopicAdmin::new(&spec.destination)?);
        let history = PartitionHistory::new();
        let source = Source::start(
            Arc::clone(&spec),
            Arc::clone(&status),
            destination.clone(),
            Arc::clone(&history),
        )?;
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
                config_attempts: BTreeMap::new(),
                in_flight: BTreeSet::new(),
                again: BTreeSet::new(),
                retries: BTreeMap::new(),
                refused: BTreeMap::new(),
                warned: BTreeMap::new(),
                history,
                internal_topics_ready: false,
                subscribed: false,
                subscribe_deferred_since: None,
                subscribe_pending: false,
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
        let spec = &self.spec;
        let mut configs: BTreeMap<String, String> = info
            .configs
            .iter()
            .filter(|(k, _)| !spec.topic_config_exclude.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        configs.extend(spec.topic_config_overrides.clone());
        // Excluded configs are the destination's own, unless the flow
        // overrides them explicitly.
        let unmanaged = spec
            .topic_config_exclude
            .iter()
            .filter(|k| !spec.topic_config_overrides.contains_key(*k))
            .cloned()
            .collect();
        TopicPlan {
            name: spec.destination_topic(topic),
            partitions: info.partitions,
            replication_factor: spec.replication_factor.unwrap_or(info.replication_factor),
            configs,
            unmanaged,
        }
    }

    /// Makes the destination topic ready (created, grown, configs compared
    /// or synced), then subscribes to the source topic. One preparation per
    /// topic at a time; a request meanwhile runs once more afterwards.
    fn ensure(&mut self, topic: String, ctx: &mut Context<Self>) {
        let Some(info) = self.known.get(&topic) else {
            return;
        };
        if self.refused.contains_key(&topic) {
            return;
        }
        if self.in_flight.contains(&topic) {
            self.again.insert(topic);
            return;
        }
        if let Some(pending) = self.retries.remove(&topic) {
            ctx.cancel_future(pending);
        }
        let plan = self.plan(&topic, info);
        let admin = Arc::clone(&self.admin);
        let create = self.spec.topic_auto_create;
        let sync = self.spec.topic_config_sync;
        if !self.ready.contains(&topic) {
            self.set_topic_state(&topic, "creating");
        }
        self.in_flight.insert(topic.clone());
        let work = async move { admin.ensure_topic(&plan, create, sync).await };
        ctx.spawn(work.into_actor(self).map(move |result, act, ctx| {
            act.in_flight.remove(&topic);
            if act.stopping || !act.known.contains_key(&topic) {
                return;
            }
            match result {
                Ok(outcome) => act.topic_ready(&topic, outcome, ctx),
                Err(failure) => act.topic_failed(&topic, failure, ctx),
            }
            if act.again.remove(&topic) {
                act.ensure(topic, ctx);
            }
        }));
    }

    fn topic_ready(&mut self, topic: &str, outcome: Ensured, ctx: &mut Context<Self>) {
        let flow = self.spec.name.clone();
        let destination_topic = self.spec.destination_topic(topic);
        let count = |name: &'static str| {
            metrics::counter!(name, labels::FLOW => flow.clone(), labels::TOPIC => destination_topic.clone()).increment(1);
        };
        match outcome.layout {
            Layout::Created => {
                tracing::info!(flow, topic, destination_topic, "created destination topic");
                count(names::TOPICS_CREATED);
            }
            Layout::Grown { from } => {
                let to = self.known.get(topic).map_or(0, |t| t.partitions);
                tracing::info!(
                    flow,
                    topic,
                    destination_topic,
                    from,
                    to,
                    "added partitions to the destination topic"
                );
                count(names::TOPIC_CONFIG_UPDATES);
            }
            Layout::HasMorePartitions { partitions } => {
                if self.warn_once(topic, format!("partitions:{partitions}")) {
                    tracing::warn!(flow, topic, destination_topic, partitions, source_partitions = self.known.get(topic).map_or(0, |t| t.partitions), "destination topic has more partitions than the source topic; copying each partition to the same number, the extra ones get nothing");
                }
            }
            Layout::Existed => {}
        }
        match outcome.configs {
            ConfigOutcome::SetAtCreation | ConfigOutcome::InSync => {
                self.forget_warnings(topic, "configs:");
                self.config_attempts.remove(topic);
            }
            ConfigOutcome::Updated(diff) => {
                tracing::info!(flow, topic, destination_topic, changes = %diff, "applied the source topic's configs to the destination topic");
                count(names::TOPIC_CONFIG_UPDATES);
                self.forget_warnings(topic, "configs:");
                self.config_attempts.remove(topic);
            }
            ConfigOutcome::Differs(diff) => {
                self.config_attempts.remove(topic);
                if self.warn_once(topic, format!("configs:{diff}")) {
                    tracing::warn!(flow, topic, destination_topic, differences = %diff, "destination topic's configs differ from the source topic's; leaving them as they are because topic_config_sync is false");
                }
            }
            ConfigOutcome::Failed(reason) => {
                let failures = self.config_attempts.entry(topic.to_string()).or_insert(0);
                *failures += 1;
                let delay = topic_retry_delay(*failures);
                if *failures == 1 {
                    tracing::warn!(flow, topic, destination_topic, reason, "cannot compare or sync the destination topic's configs; copying goes on, retrying with backoff");
                }
                self.schedule_retry(topic, delay, ctx);
            }
        }
        if self.attempts.remove(topic).is_some() {
            tracing::info!(
                flow,
                topic,
                destination_topic,
                "destination topic is ready now; copying"
            );
        }
        self.set_topic_state(topic, "copying");
        // In lanes the source assigns partitions itself, so it hears of a
        // topic's new partitions with the subscription (a group consumer
        // finds them on its own); an unchanged one costs it a comparison.
        if self.ready.insert(topic.to_string()) || self.spec.in_lanes() {
            self.subscribe(ctx);
        }
    }

    fn topic_failed(&mut self, topic: &str, failure: TopicFailure, ctx: &mut Context<Self>) {
        let flow = self.spec.name.clone();
        let destination_topic = self.spec.destination_topic(topic);
        let attempts = self.attempts.entry(topic.to_string()).or_insert(0);
        *attempts += 1;
        let delay = topic_retry_delay(*attempts);
        metrics::counter!(names::TOPIC_CREATION_RETRIES, labels::FLOW => flow.clone(), labels::TOPIC => destination_topic.clone()).increment(1);
        if *attempts == 1 {
            let kind = failure.kind.as_str();
            let error = &failure.error;
            if failure.kind == FailureKind::Missing {
                tracing::error!(flow, topic, destination_topic, kind, error = %error, "destination topic is missing; this topic is not copied until it exists, other topics keep flowing");
            } else {
                tracing::warn!(flow, topic, destination_topic, kind, error = %error, "cannot prepare the destination topic; retrying with backoff, other topics keep flowing");
            }
        }
        let word = match failure.kind {
            FailureKind::Missing => "error",
            _ => "waiting",
        };
        // A topic already copying keeps copying (e.g. when only adding
        // partitions failed): the state says what is wrong meanwhile.
        self.set_topic_state(
            topic,
            format!(
                "{word}: {}; retrying in {}s",
                failure.error,
                delay.as_secs()
            ),
        );
        self.schedule_retry(topic, delay, ctx);
    }

    fn schedule_retry(&mut self, topic: &str, delay: Duration, ctx: &mut Context<Self>) {
        let name = topic.to_string();
        let handle = ctx.run_later(delay, move |act, ctx| {
            act.retries.remove(&name);
            if !act.stopping {
                act.ensure(name, ctx);
            }
        });
        if let Some(old) = self.retries.insert(topic.to_string(), handle) {
            ctx.cancel_future(old);
        }
    }

    /// True the first time `what` is noted for `topic` (until forgotten).
    fn warn_once(&mut self, topic: &str, what: String) -> bool {
        let seen = self.warned.entry(topic.to_string()).or_default();
        let prefix = what.split(':').next().unwrap_or("").to_string();
        if seen.contains(&what) {
            return false;
        }
        // A new difference of the same kind replaces the old one.
        seen.retain(|w| !w.starts_with(&format!("{prefix}:")));
        seen.insert(what);
        true
    }

    fn forget_warnings(&mut self, topic: &str, prefix: &str) {
        if let Some(seen) = self.warned.get_mut(topic) {
            seen.retain(|w| !w.starts_with(prefix));
        }
    }

    /// Claims the destination topic of `topic` for this flow; on a
    /// collision, refuses the topic (logged once) and returns false.
    fn claim(&mut self, topic: &str) -> bool {
        let destination_topic = self.spec.destination_topic(topic);
        let claim = Claim {
            flow: self.spec.name.clone(),
            source_cluster: self.spec.source.alias.clone(),
            source_topic: topic.to_string(),
        };
        let cluster = cluster_identity(&self.spec.destination);
        match claims().claim(&cluster, &destination_topic, claim) {
            Ok(()) => {
                if self.refused.remove(topic).is_some() {
                    tracing::info!(flow = %self.spec.name, topic, destination_topic, "destination topic is free now; copying");
                }
                true
            }
            Err(holder) => {
                let reason = format!(
                    "topic `{}` of cluster `{}` (flow `{}`) is already copied to topic `{destination_topic}` of cluster `{}`; two source topics cannot share a destination topic: change topic_rename_format or topics_exclude of one flow",
                    holder.source_topic, holder.source_cluster, holder.flow, self.spec.destination.alias
                );
                if !self.refused.contains_key(topic) {
                    tracing::error!(flow = %self.spec.name, topic, destination_topic, "not copying this topic: {reason}");
                }
                self.set_topic_state(topic, format!("error: not copied: {reason}"));
                self.refused.insert(topic.to_string(), reason);
                false
            }
        }
    }

    /// Starts copying `topic`, found at the source: claims its destination
    /// topic, notes its partitions, prepares the destination topic.
    fn start_topic(&mut self, topic: String, ctx: &mut Context<Self>) {
        if !self.claim(&topic) {
            return;
        }
        if let Some(info) = self.known.get(&topic) {
            self.history.topic_found(&topic, info.partitions);
        }
        self.ensure(topic, ctx);
    }

    fn subscribe(&mut self, ctx: &mut Context<Self>) {
        if !self.internal_topics_ready {
            // Subscribed once they exist (see `prepare_internal_topics`).
            return;
        }
        // The first subscription goes out with the first topic ready, so
        // records flow while the others are still being created (on 1,000
        // partitions, 100 topics take 3–4 s). Later, topics still being
        // created join the same change: each change is a rebalance. (The
        // source holds a change that arrives while the group is joining: see
        // `source::Join`.)
        let preparing = self.subscribed && self.in_flight.iter().any(|t| !self.ready.contains(t));
        let since = *self
            .subscribe_deferred_since
            .get_or_insert_with(Instant::now);
        if preparing && since.elapsed() < SUBSCRIBE_COALESCE_MAX {
            if !self.subscribe_pending {
                self.subscribe_pending = true;
                ctx.run_later(SUBSCRIBE_COALESCE_STEP, |act, ctx| {
                    act.subscribe_pending = false;
                    act.subscribe(ctx);
                });
            }
            return;
        }
        self.subscribe_deferred_since = None;
        let topics = self.ready.clone();
        let partitions = topics
            .iter()
            .filter_map(|t| Some((t.clone(), self.known.get(t)?.partitions)))
            .collect();
        self.subscribed |= !topics.is_empty();
        let name = self.spec.name.clone();
        let subscribe = Subscribe { topics, partitions };
        ctx.spawn(self.source.send(subscribe).into_actor(self).map(
            move |result, _, _| match result {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::error!(flow = name, error = %error, "subscription failed")
                }
                Err(_) => tracing::error!(flow = name, "the source supervisor is gone"),
            },
        ));
    }

    fn apply(&mut self, event: TopicEvent, ctx: &mut Context<Self>) {
        match event {
            TopicEvent::Added { topic, info } => {
                tracing::info!(flow = %self.spec.name, topic, partitions = info.partitions, replication_factor = info.replication_factor, "found source topic");
                self.known.insert(topic.clone(), info);
                self.start_topic(topic, ctx);
            }
            TopicEvent::PartitionsIncreased { topic, from, info } => {
                tracing::info!(flow = %self.spec.name, topic, from, to = info.partitions, "source topic gained partitions; adding them at the destination and copying them from their beginning");
                self.known.insert(topic.clone(), info);
                self.ensure(topic, ctx);
            }
            TopicEvent::ConfigChanged { topic, info } => {
                if self.spec.topic_config_sync {
                    tracing::info!(flow = %self.spec.name, topic, "source topic's configs changed; syncing the destination topic");
                } else {
                    tracing::info!(flow = %self.spec.name, topic, "source topic's configs changed; not synced because topic_config_sync is false");
                }
                self.known.insert(topic.clone(), info);
                self.ensure(topic, ctx);
            }
            TopicEvent::Removed { topic } => {
                let destination_topic = self.spec.destination_topic(&topic);
                tracing::info!(flow = %self.spec.name, topic, destination_topic, "source topic deleted; stopping its copiers and leaving the destination topic as it is");
                self.known.remove(&topic);
                self.attempts.remove(&topic);
                self.config_attempts.remove(&topic);
                self.warned.remove(&topic);
                self.again.remove(&topic);
                if let Some(pending) = self.retries.remove(&topic) {
                    ctx.cancel_future(pending);
                }
                self.history.topic_removed(&topic);
                if self.refused.remove(&topic).is_none() {
                    claims().release(
                        &cluster_identity(&self.spec.destination),
                        &destination_topic,
                        &self.spec.name,
                    );
                }
                self.status.remove_topic(&topic);
                if self.ready.remove(&topic) {
                    self.subscribe(ctx);
                }
            }
        }
    }

    /// Tries again to claim the destination topics of refused topics: the
    /// source topic holding one may have been deleted since.
    fn retry_refused(&mut self, ctx: &mut Context<Self>) {
        let refused: Vec<String> = self.refused.keys().cloned().collect();
        for topic in refused {
            if self.known.contains_key(&topic) {
                self.start_topic(topic, ctx);
            }
        }
    }
}

impl FlowSupervisor {
    /// Checks that no instance of the flow divides it the other way
    /// ([`mode_guard`]), then creates the destination topics Strait writes
    /// besides the copies: the offset map (exactly-once), the lanes topic
    /// and the dead-letter topic. Copying starts only once both are done;
    /// until then this is retried.
    fn prepare_internal_topics(&mut self, ctx: &mut Context<Self>) {
        let spec = Arc::clone(&self.spec);
        let work = async move {
            mode_guard::ensure_no_other_mode(&spec).await?;
            if spec.delivery == Delivery::ExactlyOnce {
                offset_store::ensure_topic(&spec.destination).await?;
                if spec.in_lanes() {
                    lane_ownership::ensure_lanes_topic(
                        &spec.destination,
                        &spec.group_id,
                        spec.tuning.transaction_lanes,
                    )
                    .await?;
                }
            }
            if let OnError::DeadLetter(topic) = &spec.on_error {
                offset_store::ensure_internal_topic(&spec.destination, topic, 1, &[]).await?;
            }
            Ok::<(), ReplicationError>(())
        };
        ctx.spawn(work.into_actor(self).map(|result, act, ctx| match result {
            Ok(()) => {
                act.internal_topics_ready = true;
                act.subscribe(ctx);
            }
            Err(error @ ReplicationError::OtherMode { .. }) => {
                tracing::error!(flow = %act.spec.name, error = %error, "not copying; checking again in 5 s");
                ctx.run_later(Duration::from_secs(5), |act, ctx| act.prepare_internal_topics(ctx));
            }
            Err(error) => {
                tracing::warn!(flow = %act.spec.name, error = %error, "cannot create Strait's own destination topics; retrying");
                ctx.run_later(Duration::from_secs(5), |act, ctx| act.prepare_internal_topics(ctx));
            }
        }));
    }

    /// Exactly-once: brings the destination's transaction coordinator up
    /// while the flow creates topics and joins the group, instead of after
    /// (see [`transactional::warm_up`]). Nothing waits for it; if it fails,
    /// the copiers' own `init_transactions` say why.
    fn warm_up_transactions(&mut self, ctx: &mut Context<Self>) {
        let spec = Arc::clone(&self.spec);
        let work = async move {
            let began = Instant::now();
            let lanes = async {
                if spec.in_lanes() {
                    lane_ownership::warm_up(&spec.destination, &spec.group_id).await
                } else {
                    Ok(())
                }
            };
            let transactions = transactional::warm_up(&spec.destination, &spec.group_id);
            let (transactions, lanes) = futures::join!(transactions, lanes);
            (transactions.and(lanes), began.elapsed())
        };
        ctx.spawn(work.into_actor(self).map(|(result, took), act, _| match result {
            Ok(()) => tracing::debug!(flow = %act.spec.name, seconds = took.as_secs_f64(), "the destination's transaction coordinator is up"),
            Err(error) => tracing::debug!(flow = %act.spec.name, error = %error, "warming up the destination's transaction coordinator"),
        }));
    }
}

impl Actor for FlowSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.spec.delivery == Delivery::ExactlyOnce {
            self.warm_up_transactions(ctx);
        }
        self.prepare_internal_topics(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        claims().release_all(&self.spec.name);
    }
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
                self.retry_refused(ctx);
                metrics::gauge!(names::TOPICS_SELECTED, labels::FLOW => self.spec.name.clone())
                    .set(self.known.len() as f64);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(flow: &str, topic: &str) -> Claim {
        Claim {
            flow: flow.to_string(),
            source_cluster: "east".to_string(),
            source_topic: topic.to_string(),
        }
    }

    #[test]
    fn a_destination_topic_is_claimed_by_one_source_topic_at_a_time() {
        let mut claims = Claims::new();
        assert_eq!(
            claims.claim("dst:9092", "orders", claim("a", "orders")),
            Ok(())
        );
        assert_eq!(
            claims.claim("dst:9092", "orders", claim("a", "orders")),
            Ok(()),
            "claiming again is fine"
        );
        assert_eq!(
            claims.claim("dst:9092", "orders", claim("b", "orders")),
            Err(claim("a", "orders")),
            "another flow writing the same destination topic is refused"
        );
        assert_eq!(
            claims.claim("other:9092", "orders", claim("b", "orders")),
            Ok(()),
            "the same name on another cluster is another topic"
        );
        claims.release("dst:9092", "orders", "b");
        assert!(
            claims
                .claim("dst:9092", "orders", claim("b", "orders"))
                .is_err(),
            "only the holder releases"
        );
        claims.release_all("a");
        assert_eq!(
            claims.claim("dst:9092", "orders", claim("b", "orders")),
            Ok(())
        );
    }

    #[test]
    fn cluster_identity_ignores_order_case_and_spaces() {
        let spec = |servers: &str| ClusterSpec {
            alias: "x".to_string(),
            properties: BTreeMap::from([("bootstrap.servers".to_string(), servers.to_string())]),
        };
        assert_eq!(
            cluster_identity(&spec("B:1, a:2")),
            cluster_identity(&spec("A:2,b:1"))
        );
    }

    #[test]
    fn topic_retries_back_off_from_one_second_to_a_minute() {
        let delays: Vec<u64> = (1..=9).map(|n| topic_retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}

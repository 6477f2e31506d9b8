//! The source of an exactly-once flow in lanes: partitions are assigned by
//! lane, not by the source's consumer group.
//!
//! The lane group on the destination ([`crate::lane_ownership`]) says which
//! lanes this instance owns. Each owned lane is opened first (which fences
//! its older owner); then the source consumer is assigned, by hand, the
//! partitions of the ready topics that fall in open lanes
//! ([`crate::lane::lane_of`]), through the same routing as a group's
//! assignment ([`SourceContext::assign`]), and their copiers send to their
//! lane. A lane taken away is handled like a revocation: its partitions'
//! copiers drain (the lane commits what they handed it), the source group
//! is committed, and the lane closes before the group hands it on. The
//! source group is still committed to, for lag tools, but nobody joins it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use actix::prelude::*;
use futures::future::{BoxFuture, FutureExt, Shared};
use rdkafka::consumer::Consumer;
use rdkafka::TopicPartitionList;

use super::{Source, SourceConsumer};
use crate::error::ReplicationError;
use crate::lane::{lane_of, Lane, LaneOpened, LanePanic, LaneParts, StopLane};
use crate::lane_ownership::{LaneOwnership, LanesAssigned, LanesRevoked};

/// A source partition, by topic name.
type Partition = (String, i32);

/// A change of the consumer's assignment, done once polled to the end.
type Change = Shared<BoxFuture<'static, ()>>;

/// What the source keeps of its lanes.
pub(super) struct LaneState {
    /// The flow's number of lanes.
    count: u32,
    /// This instance's member of the lane group, joined at the first
    /// subscription (the lanes topic exists by then).
    ownership: Option<LaneOwnership>,
    /// Lanes owned, open or opening.
    lanes: HashMap<u32, Addr<Lane>>,
    /// Lanes open: their older owner is fenced, their partitions may go.
    open: BTreeSet<u32>,
    /// Topics ready to copy, with their partition counts.
    topics: BTreeMap<String, i32>,
    /// Partitions assigned to the consumer (or being assigned).
    assigned: BTreeSet<Partition>,
    /// The latest change of the consumer's assignment (see
    /// [`LaneState::queue_change`]).
    changes: Option<Change>,
    /// A panic to inject in the lane that writes one record (tests only).
    injected_panic: Option<LanePanic>,
}

impl LaneState {
    pub(super) fn new(count: u32, injected_panic: Option<LanePanic>) -> Self {
        Self {
            count,
            ownership: None,
            lanes: HashMap::new(),
            open: BTreeSet::new(),
            topics: BTreeMap::new(),
            assigned: BTreeSet::new(),
            changes: None,
            injected_panic,
        }
    }

    /// Queues a change of the consumer's assignment: it runs on tokio's
    /// blocking pool once every change queued before it is done. A lane
    /// revoked while its partitions were being assigned must have them
    /// unassigned after, not before: else they stayed assigned with no
    /// copier, their reads holding the flow's read budget for ever.
    fn queue_change(&mut self, change: impl FnOnce() + Send + 'static) -> Change {
        let before = self.changes.take();
        let next = async move {
            if let Some(before) = before {
                before.await;
            }
            let _ = tokio::task::spawn_blocking(change).await;
        }
        .boxed()
        .shared();
        self.changes = Some(next.clone());
        next
    }

    /// The lane a partition's copier sends to, if this instance owns it.
    pub(super) fn lane_for(&self, topic: &str, partition: i32) -> Option<Addr<Lane>> {
        let lane = lane_of(topic, partition, self.count);
        self.open
            .contains(&lane)
            .then(|| self.lanes.get(&lane).cloned())
            .flatten()
    }

    /// Every lane and the group member, for a stop.
    pub(super) fn take_all(&mut self) -> (Vec<Addr<Lane>>, Option<LaneOwnership>) {
        self.open.clear();
        let lanes = self.lanes.drain().map(|(_, lane)| lane).collect();
        (lanes, self.ownership.take())
    }

    /// The partitions of the ready topics that fall in open lanes.
    fn wanted(&self) -> BTreeSet<Partition> {
        self.topics
            .iter()
            .flat_map(|(topic, count)| (0..*count).map(move |p| (topic.clone(), p)))
            .filter(|(topic, p)| self.open.contains(&lane_of(topic, *p, self.count)))
            .collect()
    }
}

fn partition_list(partitions: &[Partition]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in partitions {
        tpl.add_partition(topic, *partition);
    }
    tpl
}

/// Assigns `partitions` to the consumer as a group's assignment would be:
/// routed, positioned (committed offset, `start_from`), then handed to the
/// supervisor, whose copiers resume them where the offset map says.
/// Blocking: runs on tokio's blocking pool.
fn assign(consumer: &SourceConsumer, partitions: &[Partition]) {
    let tpl = partition_list(partitions);
    let context = consumer.context();
    context.assign(consumer, &tpl);
    if let Err(error) = consumer.incremental_assign(&tpl) {
        tracing::error!(cluster = %context.cluster, partitions = partitions.len(), error = %error, "cannot assign the partitions of this instance's lanes");
    }
    context.hand_over(consumer);
}

/// Takes `partitions` from the consumer as a group's revocation would: their
/// copiers drain, the group is committed, their routes go. Blocking.
fn unassign(consumer: &SourceConsumer, partitions: &[Partition]) {
    let tpl = partition_list(partitions);
    let context = consumer.context();
    context.revoke(consumer, &tpl);
    if let Err(error) = consumer.incremental_unassign(&tpl) {
        tracing::warn!(cluster = %context.cluster, partitions = partitions.len(), error = %error, "cannot unassign the partitions of lanes this instance no longer owns");
    }
}

impl Source {
    /// A subscription in lanes: the ready topics and their partition counts;
    /// the first one joins the lane group.
    pub(super) fn subscribe_lanes(
        &mut self,
        topics: BTreeMap<String, i32>,
        ctx: &mut Context<Self>,
    ) -> Result<(), ReplicationError> {
        let Some(state) = self.lanes.as_mut() else {
            return Ok(());
        };
        state.topics = topics;
        if state.ownership.is_none() {
            let me = ctx.address();
            state.ownership = Some(LaneOwnership::start(
                &self.spec.destination,
                &self.spec.group_id,
                me.clone().recipient(),
                me.recipient(),
            )?);
            tracing::info!(flow = %self.spec.name, lanes = state.count, "joined the lane group on the destination");
        }
        self.reassign(ctx);
        Ok(())
    }

    /// Assigns the partitions newly in open lanes and unassigns those no
    /// longer wanted (a topic gone).
    fn reassign(&mut self, ctx: &mut Context<Self>) {
        let Some(state) = self.lanes.as_mut() else {
            return;
        };
        let wanted = state.wanted();
        let added: Vec<Partition> = wanted.difference(&state.assigned).cloned().collect();
        let removed: Vec<Partition> = state.assigned.difference(&wanted).cloned().collect();
        state.assigned = wanted;
        let mut changes = Vec::new();
        if !removed.is_empty() {
            let consumer = Arc::clone(&self.consumer);
            changes.push(state.queue_change(move || unassign(&consumer, &removed)));
        }
        if !added.is_empty() {
            tracing::info!(flow = %self.spec.name, partitions = added.len(), "assigning the partitions of this instance's lanes");
            let consumer = Arc::clone(&self.consumer);
            changes.push(state.queue_change(move || assign(&consumer, &added)));
        }
        for change in changes {
            ctx.spawn(change.into_actor(self));
        }
    }
}

impl Handler<LanesAssigned> for Source {
    type Result = ();

    fn handle(&mut self, LanesAssigned(lanes): LanesAssigned, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        let spec = Arc::clone(&self.spec);
        let Some(state) = self.lanes.as_mut() else {
            return;
        };
        let mut opening = Vec::new();
        for lane in lanes {
            tracing::info!(flow = %spec.name, lane, "lane assigned; opening it");
            let addr = Lane::new(LaneParts {
                destination: spec.destination.clone(),
                group_id: spec.group_id.clone(),
                flow: spec.name.clone(),
                source_cluster: spec.source.alias.clone(),
                lane,
                lanes: state.count,
                tuning: spec.tuning.clone(),
                on_error: spec.on_error.clone(),
                injected_panic: state.injected_panic.clone(),
            })
            .start();
            state.lanes.insert(lane, addr.clone());
            opening.push((lane, addr));
        }
        // Each lane's partitions go as soon as it is open: one lane waiting
        // for its transaction coordinator holds back only its own.
        for (lane, addr) in opening {
            let opened = addr.send(LaneOpened);
            ctx.spawn(opened.into_actor(self).map(
                move |result, act, ctx| {
                    let flow = act.spec.name.clone();
                    let Some(state) = act.lanes.as_mut() else {
                        return;
                    };
                    match result {
                        // Unless it was taken away meanwhile (and maybe
                        // given back: then the newer actor says).
                        Ok(Ok(())) if state.lanes.get(&lane) == Some(&addr) => {
                            tracing::info!(flow, lane, "lane open");
                            state.open.insert(lane);
                            act.reassign(ctx);
                        }
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => {
                            tracing::error!(flow, lane, error = %error, "lane did not open; its partitions are not copied here")
                        }
                        Err(_) => tracing::error!(flow, lane, "lane stopped while opening"),
                    }
                },
            ));
        }
    }
}

impl Handler<LanesRevoked> for Source {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, LanesRevoked(lanes): LanesRevoked, _: &mut Context<Self>) -> Self::Result {
        let flow = self.spec.name.clone();
        let Some(state) = self.lanes.as_mut() else {
            return Box::pin(fut::ready(()));
        };
        let mut closing = Vec::new();
        for lane in &lanes {
            tracing::info!(
                flow,
                lane,
                "lane revoked; draining its partitions and closing it"
            );
            state.open.remove(lane);
            closing.extend(state.lanes.remove(lane));
        }
        let wanted = state.wanted();
        let removed: Vec<Partition> = state.assigned.difference(&wanted).cloned().collect();
        state.assigned.retain(|p| wanted.contains(p));
        let consumer = Arc::clone(&self.consumer);
        let unassigned = state.queue_change(move || unassign(&consumer, &removed));
        let work = async move {
            // The copiers drain into their lanes first, then the lanes
            // commit and close: before the group hands them on.
            unassigned.await;
            for lane in closing {
                let _ = lane.send(StopLane).await;
            }
        };
        Box::pin(work.into_actor(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    #[tokio::test]
    async fn assignment_changes_reach_the_consumer_in_the_order_they_were_decided() {
        let mut state = LaneState::new(4, None);
        let done = Arc::new(Mutex::new(Vec::new()));
        let first = {
            let done = Arc::clone(&done);
            state.queue_change(move || {
                // An assignment that takes a while (committed offsets).
                std::thread::sleep(Duration::from_millis(300));
                done.lock().expect("lock").push("assign");
            })
        };
        let second = {
            let done = Arc::clone(&done);
            state.queue_change(move || done.lock().expect("lock").push("unassign"))
        };
        // Driven in the other order, as two spawned tasks may be.
        let second = tokio::spawn(second);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let first = tokio::spawn(first);
        second.await.expect("the unassignment ran");
        first.await.expect("the assignment ran");
        assert_eq!(*done.lock().expect("lock"), ["assign", "unassign"]);
    }
}

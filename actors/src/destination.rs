//! The destination cluster's supervisor: owns the producer and writes batches.
//!
//! Copiers send [`WriteBatch`]es here, each awaiting its answer before sending
//! the next (actix's mailbox capacity alone does not bound concurrent senders).
//! A batch is answered once every record is in the producer's queue; the
//! producer's own delivery reports then acknowledge the records to the
//! partition's progress. When that queue is full the handler waits, holding
//! the actor (`AtomicResponse`), so the mailbox fills, copiers wait on their
//! send, stop reading, and the source consumer stops fetching: a slow
//! destination slows the source instead of filling memory.
//!
//! Topic creation is not done here but by [`crate::topic_admin`], so that it
//! never waits behind a backed-up mailbox.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use actix::prelude::*;
use rdkafka::client::{Client, ClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use crate::batch::{Batch, RecordView};
use crate::client::{client_config, log_client_error, log_client_event};
use crate::error::ReplicationError;
use crate::metrics::{self as names, labels};
use crate::progress::BatchAck;
use crate::spec::{ClusterSpec, OnError};
use crate::topic_handle::TopicHandle;

/// How long to wait before retrying a send refused because the producer's
/// queue is full. Short: the queue drains at network speed.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(2);

/// Longest wait for the destination's metadata when a partition is unknown.
const METADATA_REFRESH_TIMEOUT: Duration = Duration::from_secs(5);

/// Producer defaults, each overridable through `[clusters.NAME.kafka]`.
fn producer_defaults() -> Vec<(&'static str, String)> {
    vec![
        // Bounds the records buffered for the destination: with the bounded
        // mailbox, this is what keeps memory flat while the destination is away.
        ("queue.buffering.max.kbytes", "16384".into()),
        ("queue.buffering.max.messages", "200000".into()),
        ("linger.ms", "5".into()),
        ("batch.size", "1000000".into()),
        ("batch.num.messages", "10000".into()),
    ]
}

/// Producer settings order and at-least-once depend on.
fn producer_forced() -> Vec<(&'static str, String)> {
    vec![
        // Retries never reorder or duplicate within a partition.
        ("enable.idempotence", "true".into()),
        // A destination topic deleted while Strait runs must not come back
        // with broker defaults: topics are created by the flow, as planned.
        ("allow.auto.create.topics", "false".into()),
        ("acks", "all".into()),
    ]
}

/// Delivery report routing: each record carries its batch's ack. Records
/// the destination refuses for good are handled by the flow's `on_error`.
pub struct DestinationContext {
    cluster: String,
    refusals: RefusalPolicy,
    /// For dead-letter writes from the delivery callback.
    producer: OnceLock<Weak<DestinationProducer>>,
}

/// What a produced record carries to its delivery report.
pub struct InFlight {
    ack: Arc<BatchAck>,
    offset: i64,
    origin: Arc<Origin>,
    /// True for a write to the dead-letter topic.
    dead_letter: bool,
    /// True when the record was sent alone (nothing else of its partition in
    /// flight), so a "too large" refusal is about this record and not its batch.
    alone: bool,
}

/// Where the records of a batch come from.
#[derive(Debug)]
pub struct Origin {
    /// Source topic.
    pub topic: Arc<str>,
    /// Source partition.
    pub partition: i32,
}

/// A flow's `on_error`, with what it needs to log, count and dead-letter.
#[derive(Clone, Debug)]
pub struct RefusalPolicy {
    /// The policy.
    pub on_error: OnError,
    /// Flow name, for logs and metrics.
    pub flow: String,
    /// Source cluster alias, for dead-letter headers.
    pub source_cluster: String,
}

impl ClientContext for DestinationContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_client_event(&self.cluster, level, fac, log_message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&self.cluster, &error, reason);
    }
}

impl ProducerContext for DestinationContext {
    type DeliveryOpaque = Box<InFlight>;

    fn delivery(&self, result: &DeliveryResult<'_>, delivery: Box<InFlight>) {
        match result {
            Ok(message) => {
                if !delivery.dead_letter {
                    delivery
                        .ack
                        .progress()
                        .destination_delivered(message.offset());
                }
                delivery.ack.delivered()
            }
            Err((error, message)) => {
                let record = RefusedRecord {
                    key: message.key(),
                    value: message.payload(),
                    headers: message.headers().map(|h| h.detach()),
                    timestamp: message.timestamp().to_millis(),
                };
                let producer = self.producer.get().and_then(Weak::upgrade);
                self.refusals
                    .handle(error, record, *delivery, producer.as_deref());
            }
        }
    }
}

/// A record the destination refused, as it was sent.
pub struct RefusedRecord<'a> {
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    headers: Option<OwnedHeaders>,
    timestamp: Option<i64>,
}

/// True when the broker refused a record, or the batch holding it, as too large.
pub fn is_too_large(error: &KafkaError) -> bool {
    error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge)
}

/// True for produce errors no retry can fix.
pub fn is_permanent(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::PolicyViolation
                | RDKafkaErrorCode::InvalidTopic
        )
    )
}

impl RefusalPolicy {
    /// Applies the policy to a refused record: the record's ack is failed
    /// (transient errors, or `fail`), or acknowledged (`skip`, or once written
    /// to the dead-letter topic).
    fn handle(
        &self,
        error: &KafkaError,
        record: RefusedRecord<'_>,
        delivery: InFlight,
        producer: Option<&DestinationProducer>,
    ) {
        let reason = error.to_string();
        let (topic, partition, offset) = (
            Arc::clone(&delivery.origin.topic),
            delivery.origin.partition,
            delivery.offset,
        );
        metrics::counter!(names::PRODUCE_ERRORS, labels::FLOW => self.flow.clone(), labels::TOPIC => topic.to_string(), labels::KIND => names::error_kind(error)).increment(1);
        if is_too_large(error) && !delivery.alone && !delivery.dead_letter {
            // librdkafka does not split a refused batch: the copier re-sends
            // the records one by one to find out.
            delivery.ack.failed_batch_too_large(offset, reason);
            return;
        }
        if !is_permanent(error) {
            delivery.ack.failed(offset, reason, false);
            return;
        }
        if delivery.dead_letter {
            tracing::error!(flow = %self.flow, topic = %topic, partition, offset, error = %reason, "the dead-letter topic refused the record too");
            delivery
                .ack
                .failed(offset, format!("dead-letter write failed: {reason}"), true);
            return;
        }
        match &self.on_error {
            OnError::Fail => delivery.ack.failed(offset, reason, true),
            OnError::Skip => {
                tracing::warn!(flow = %self.flow, topic = %topic, partition, offset, error = %reason, "skipping a record the destination refuses (on_error = \"skip\")");
                metrics::counter!(names::RECORDS_SKIPPED, labels::FLOW => self.flow.clone(), labels::TOPIC => topic.to_string(), labels::REASON => names::error_kind(error)).increment(1);
                delivery.ack.delivered();
            }
            OnError::DeadLetter(dead_letter_topic) => {
                let Some(producer) = producer else {
                    delivery.ack.failed(offset, reason, true);
                    return;
                };
                let headers = record
                    .headers
                    .unwrap_or_default()
                    .insert(Header {
                        key: "strait.source.cluster",
                        value: Some(self.source_cluster.as_bytes()),
                    })
                    .insert(Header {
                        key: "strait.source.topic",
                        value: Some(topic.as_bytes()),
                    })
                    .insert(Header {
                        key: "strait.source.partition",
                        value: Some(partition.to_string().as_bytes()),
                    })
                    .insert(Header {
                        key: "strait.source.offset",
                        value: Some(offset.to_string().as_bytes()),
                    })
                    .insert(Header {
                        key: "strait.error",
                        value: Some(reason.as_bytes()),
                    });
                let ack = Arc::clone(&delivery.ack);
                let mut out: BaseRecord<'_, [u8], [u8], Box<InFlight>> =
                    BaseRecord::with_opaque_to(
                        dead_letter_topic,
                        Box::new(InFlight {
                            dead_letter: true,
                            ..delivery
                        }),
                    )
                    .headers(headers);
                out.key = record.key;
                out.payload = record.value;
                out.timestamp = record.timestamp;
                match producer.send(out) {
                    Ok(()) => {
                        tracing::warn!(flow = %self.flow, topic = %topic, partition, offset, error = %reason, dead_letter_topic, "record written to the dead-letter topic");
                        metrics::counter!(names::RECORDS_DEAD_LETTERED, labels::FLOW => self.flow.clone(), labels::TOPIC => topic.to_string()).increment(1);
                    }
                    // Never wait here: this may be the producer's own polling thread.
                    Err((e, _)) => ack.failed(
                        offset,
                        format!("dead-letter write failed: {e}"),
                        !matches!(
                            e,
                            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                        ),
                    ),
                }
            }
        }
    }
}

/// The producer type every flow writes with.
pub type DestinationProducer = ThreadedProducer<DestinationContext>;

/// Owns the destination producer. One per flow.
pub struct Destination {
    /// A handle per destination topic written so far (see
    /// [`crate::topic_handle`]).
    topics: HashMap<Arc<str>, Arc<TopicHandle>>,
    producer: Arc<DestinationProducer>,
    mailbox_capacity: usize,
    /// Batches waiting in the mailbox: copiers add, this actor takes away.
    mailbox_depth: metrics::Gauge,
}

impl Destination {
    /// Creates the producer for `cluster`. Fails only on bad client properties.
    pub fn new(
        cluster: &ClusterSpec,
        mailbox_capacity: usize,
        refusals: RefusalPolicy,
    ) -> Result<Self, ReplicationError> {
        let producer: DestinationProducer =
            client_config(cluster, &producer_defaults(), &producer_forced())
                .create_with_context(DestinationContext {
                    cluster: cluster.alias.clone(),
                    refusals,
                    producer: OnceLock::new(),
                })
                .map_err(|source| ReplicationError::ClientCreation {
                    cluster: cluster.alias.clone(),
                    source: Box::new(source),
                })?;
        let producer = Arc::new(producer);
        let _ = producer.context().producer.set(Arc::downgrade(&producer));
        Ok(Self {
            mailbox_depth: names::mailbox_depth(&producer.context().refusals.flow),
            topics: HashMap::new(),
            producer,
            mailbox_capacity,
        })
    }
}

impl Actor for Destination {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.mailbox_capacity);
    }
}

/// Writes a batch of one source partition to its destination partition.
/// Answered once every record is queued in the producer.
#[derive(Message)]
#[rtype(result = "Result<(), ReplicationError>")]
pub struct WriteBatch {
    /// The records, in source order.
    pub batch: Batch,
    /// Source topic, for error messages.
    pub source_topic: Arc<str>,
    /// Destination topic.
    pub topic: Arc<str>,
    /// Partition, the same at source and destination.
    pub partition: i32,
    /// Acknowledges the batch's records as they are delivered.
    pub ack: Arc<BatchAck>,
    /// A single record sent with nothing else of its partition in flight.
    pub alone: bool,
    /// The batch ends at the partition's head as of the source's latest
    /// fetch, and nothing more of the partition was waiting to be sent: its
    /// copier has nothing else for now. A lane commits a transaction early
    /// once every partition in it is there (see [`crate::lane`]).
    pub at_head: bool,
    /// The batch's share of the flow's budget for records on their way here
    /// (see [`crate::dispatcher::BatchBudget`]); given back when the batch is
    /// dropped, once its records are in the producer's queue.
    pub budget: Option<crate::dispatcher::Held>,
}

impl Handler<WriteBatch> for Destination {
    type Result = AtomicResponse<Self, Result<(), ReplicationError>>;

    fn handle(&mut self, msg: WriteBatch, _: &mut Context<Self>) -> Self::Result {
        self.mailbox_depth.decrement(1.0);
        let producer = Arc::clone(&self.producer);
        let topic = self.topic(&msg.topic);
        AtomicResponse::new(Box::pin(
            async move {
                let topic = topic.ok_or_else(|| ReplicationError::Produce {
                    topic: msg.source_topic.to_string(),
                    partition: msg.partition,
                    offset: msg.batch.first_offset().unwrap_or(-1),
                    destination_topic: msg.topic.to_string(),
                    reason: "the producer refused a handle on the topic".into(),
                })?;
                write_batch(producer, topic, msg).await
            }
            .into_actor(self),
        ))
    }
}

impl Destination {
    /// The producer's handle on `topic`, made on first use.
    fn topic(&mut self, topic: &Arc<str>) -> Option<Arc<TopicHandle>> {
        if let Some(handle) = self.topics.get(topic) {
            return Some(Arc::clone(handle));
        }
        let native = self.producer.client().native_ptr();
        // SAFETY: `native` is this producer's own client.
        let handle = unsafe {
            TopicHandle::new(
                Arc::clone(&self.producer) as Arc<dyn Send + Sync>,
                native,
                Arc::clone(topic),
            )
        }?;
        let handle = Arc::new(handle);
        self.topics.insert(Arc::clone(topic), Arc::clone(&handle));
        Some(handle)
    }
}

/// Queues every record of the batch, waiting while the producer's queue is full.
async fn write_batch(
    producer: Arc<DestinationProducer>,
    topic: Arc<TopicHandle>,
    msg: WriteBatch,
) -> Result<(), ReplicationError> {
    let origin = Arc::new(Origin {
        topic: Arc::clone(&msg.source_topic),
        partition: msg.partition,
    });
    for record in msg.batch.iter() {
        let in_flight = Box::new(InFlight {
            ack: Arc::clone(&msg.ack),
            offset: record.offset,
            origin: Arc::clone(&origin),
            dead_letter: false,
            alone: msg.alone,
        });
        if let Err((error, refused)) =
            produce_waiting(producer.client(), &topic, msg.partition, &record, in_flight).await
        {
            // Refused before it left: the same policy as a refused delivery.
            let content = RefusedRecord {
                key: record.key,
                value: record.value,
                headers: owned_headers(&record),
                timestamp: record.timestamp,
            };
            // Refused by the producer itself: a verdict on this record alone.
            let in_flight = InFlight {
                alone: true,
                ..*refused
            };
            producer
                .context()
                .refusals
                .handle(&error, content, in_flight, Some(&producer));
            if let Some(failure) = msg.ack.progress().failure() {
                let fields = (
                    msg.source_topic.to_string(),
                    msg.partition,
                    failure.offset,
                    msg.topic.to_string(),
                    failure.reason,
                );
                return Err(if failure.permanent {
                    ReplicationError::RecordRefused {
                        topic: fields.0,
                        partition: fields.1,
                        offset: fields.2,
                        destination_topic: fields.3,
                        reason: fields.4,
                    }
                } else {
                    ReplicationError::Produce {
                        topic: fields.0,
                        partition: fields.1,
                        offset: fields.2,
                        destination_topic: fields.3,
                        reason: fields.4,
                    }
                });
            }
        }
    }
    Ok(())
}

/// The headers a transactional writer adds to a record it dead-letters,
/// after the record's own: where it came from and why it was refused.
pub(crate) fn dead_letter_origin(
    source_cluster: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    error: &str,
) -> [(&'static str, String); 5] {
    [
        ("strait.source.cluster", source_cluster.to_string()),
        ("strait.source.topic", topic.to_string()),
        ("strait.source.partition", partition.to_string()),
        ("strait.source.offset", offset.to_string()),
        ("strait.error", error.to_string()),
    ]
}

pub(crate) fn owned_headers(record: &RecordView<'_>) -> Option<OwnedHeaders> {
    (record.header_count() > 0).then(|| {
        record.headers().fold(
            OwnedHeaders::new_with_capacity(record.header_count()),
            |hs, (k, v)| hs.insert(Header { key: &k, value: v }),
        )
    })
}

/// Queues a copy of `record` through `topic`, waiting while the producer's
/// queue is full: the wait is what propagates a slow destination back to
/// the copiers. On error the delivery opaque comes back, to be handled.
async fn produce_waiting<C: ClientContext, O: rdkafka::util::IntoOpaque>(
    client: &Client<C>,
    topic: &TopicHandle,
    partition: i32,
    record: &RecordView<'_>,
    opaque: O,
) -> Result<(), (KafkaError, O)> {
    queue_waiting(client, topic.name(), Some(partition), opaque, |o| {
        topic
            .produce(partition, record, o)
            .map_err(|(code, o)| (KafkaError::MessageProduction(code), o))
    })
    .await
}

/// Queues a record with `send`, for any producer of `client`, waiting while
/// the producer's queue is full. Its delivery reports must be served
/// elsewhere (only that frees a full queue).
pub async fn send_waiting_with<'a, C, K, P, O>(
    client: &Client<C>,
    record: BaseRecord<'a, K, P, O>,
    send: impl Fn(BaseRecord<'a, K, P, O>) -> Result<(), (KafkaError, BaseRecord<'a, K, P, O>)>,
) -> Result<(), (KafkaError, BaseRecord<'a, K, P, O>)>
where
    C: ClientContext,
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
    O: rdkafka::util::IntoOpaque,
{
    let (topic, partition) = (record.topic, record.partition);
    queue_waiting(client, topic, partition, record, send).await
}

/// Calls `queue` until it takes `item` for `topic`: again after a moment
/// while the producer's queue is full, and once more after a metadata
/// refresh when the partition is unknown. Any other refusal, and `item`,
/// come back.
async fn queue_waiting<C: ClientContext, T>(
    client: &Client<C>,
    topic: &str,
    partition: Option<i32>,
    mut item: T,
    queue: impl Fn(T) -> Result<(), (KafkaError, T)>,
) -> Result<(), (KafkaError, T)> {
    let mut metadata_refreshed = false;
    loop {
        match queue(item) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                item = back;
                tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
            }
            // The destination topic may have just gained partitions (the flow
            // grows it when the source topic grows), which the producer learns
            // of only at its next metadata refresh, minutes away: refresh the
            // topic's metadata once and try again. Blocks this thread for one
            // metadata round trip, only when a partition is unknown.
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::UnknownPartition), back))
                if !metadata_refreshed =>
            {
                metadata_refreshed = true;
                item = back;
                tracing::info!(destination_topic = topic, partition = partition.unwrap_or(-1), "partition unknown to the producer; refreshing the destination topic's metadata");
                let _ = client.fetch_metadata(Some(topic), METADATA_REFRESH_TIMEOUT);
            }
            Err(refused) => return Err(refused),
        }
    }
}

/// Waits until every queued record is delivered or `timeout` passes.
#[derive(Message)]
#[rtype(result = "Result<(), ReplicationError>")]
pub struct Flush(pub Duration);

impl Handler<Flush> for Destination {
    type Result = ResponseFuture<Result<(), ReplicationError>>;

    fn handle(&mut self, Flush(timeout): Flush, _: &mut Context<Self>) -> Self::Result {
        let producer = Arc::clone(&self.producer);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || producer.flush(timeout))
                .await
                .map_err(|_| ReplicationError::ActorGone { actor: "flush" })?
                .map_err(|e| ReplicationError::Produce {
                    topic: String::new(),
                    partition: -1,
                    offset: -1,
                    destination_topic: String::new(),
                    reason: format!("flush: {e}"),
                })
        })
    }
}

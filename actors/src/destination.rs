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

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use crate::batch::Batch;
use crate::client::{client_config, log_client_error, log_client_event};
use crate::error::ReplicationError;
use crate::progress::BatchAck;
use crate::spec::ClusterSpec;

/// How long to wait before retrying a send refused because the producer's
/// queue is full. Short: the queue drains at network speed.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(2);

/// Producer defaults, each overridable through `[clusters.NAME.kafka]`.
fn producer_defaults() -> Vec<(&'static str, String)> {
    vec![
        // Bounds the records buffered for the destination: with the bounded
        // mailbox, this is what keeps memory flat while the destination is away.
        ("queue.buffering.max.kbytes", "65536".into()),
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
        ("acks", "all".into()),
    ]
}

/// Delivery report routing: each record carries its batch's ack.
pub struct DestinationContext {
    cluster: String,
}

/// What a produced record carries to its delivery report.
pub struct InFlight {
    ack: Arc<BatchAck>,
    offset: i64,
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
            Ok(_) => delivery.ack.delivered(),
            Err((error, _)) => delivery.ack.failed(delivery.offset, error.to_string()),
        }
    }
}

/// The producer type every flow writes with.
pub type DestinationProducer = ThreadedProducer<DestinationContext>;

/// Owns the destination producer. One per flow.
pub struct Destination {
    producer: Arc<DestinationProducer>,
    mailbox_capacity: usize,
}

impl Destination {
    /// Creates the producer for `cluster`. Fails only on bad client properties.
    pub fn new(cluster: &ClusterSpec, mailbox_capacity: usize) -> Result<Self, ReplicationError> {
        let producer: DestinationProducer =
            client_config(cluster, &producer_defaults(), &producer_forced())
                .create_with_context(DestinationContext {
                    cluster: cluster.alias.clone(),
                })
                .map_err(|source| ReplicationError::ClientCreation {
                    cluster: cluster.alias.clone(),
                    source,
                })?;
        Ok(Self {
            producer: Arc::new(producer),
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
}

impl Handler<WriteBatch> for Destination {
    type Result = AtomicResponse<Self, Result<(), ReplicationError>>;

    fn handle(&mut self, msg: WriteBatch, _: &mut Context<Self>) -> Self::Result {
        let producer = Arc::clone(&self.producer);
        AtomicResponse::new(Box::pin(write_batch(producer, msg).into_actor(self)))
    }
}

/// Queues every record of the batch, waiting while the producer's queue is full.
async fn write_batch(
    producer: Arc<DestinationProducer>,
    msg: WriteBatch,
) -> Result<(), ReplicationError> {
    for record in msg.batch.iter() {
        let headers = (record.header_count() > 0).then(|| {
            record
                .headers()
                .fold(OwnedHeaders::new_with_capacity(record.header_count()), |hs, (k, v)| {
                    hs.insert(Header { key: &k, value: v })
                })
        });
        let mut out: BaseRecord<'_, [u8], [u8], Box<InFlight>> = BaseRecord::with_opaque_to(
            &msg.topic,
            Box::new(InFlight {
                ack: Arc::clone(&msg.ack),
                offset: record.offset,
            }),
        )
        .partition(msg.partition);
        out.key = record.key;
        out.payload = record.value;
        out.timestamp = record.timestamp;
        out.headers = headers;
        loop {
            match producer.send(out) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    out = back;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((error, _)) => {
                    let reason = error.to_string();
                    msg.ack.failed(record.offset, reason.clone());
                    return Err(ReplicationError::Produce {
                        topic: msg.source_topic.to_string(),
                        partition: msg.partition,
                        offset: record.offset,
                        destination_topic: msg.topic.to_string(),
                        reason,
                    });
                }
            }
        }
    }
    Ok(())
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

//! Micro-benchmarks of the per-record path, so that regressions show:
//!
//! - `batch_push`: a copier copying consumed records into a [`Batch`] (one
//!   arena buffer per batch), for 100 B, 1 KB and 10 KB values.
//! - `headers`: the destination turning a batched record's headers back into
//!   librdkafka headers (`OwnedHeaders`), as `destination.rs` does per record,
//!   for 0, 1 and 4 headers.
//! - `destination_record`: everything the destination does per record before
//!   `producer.send`: headers, the boxed delivery opaque and its `Arc` clone.
//! - `producer_send`: librdkafka's own `send` (copying the record into its
//!   queue), for scale: what Strait's code costs next to what it calls.
//! - `topic_handle`: queueing the same records with the producer knowing 100
//!   topics, the way rdkafka's `send` does it (by topic name: a C string and
//!   a scan of the client's topics under its write lock, per record) and the
//!   way the destination does it (through a [`TopicHandle`]).
//! - `progress`: offset tracking, `register` of a batch and one `delivered`
//!   per record, as the producer's delivery callback does.
//!
//! Run with `cargo bench --bench record_path` (add `-- batch_push` to filter).
//! Inputs are `OwnedMessage`s: their key, payload and header accessors go
//! through the same `Message` trait (and, for headers, the same librdkafka
//! calls) as the `BorrowedMessage`s a copier reads.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage, Timestamp};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, PurgeConfig};
use strait_actors::batch::{Batch, RecordView};
use strait_actors::progress::{BatchAck, PartitionProgress};
use strait_actors::topic_handle::TopicHandle;

/// Records per batch: the default `batch_max_records` of `Tuning`.
const BATCH: usize = 2_000;
/// Bytes per batch: the default `batch_max_bytes` of `Tuning`.
const BATCH_BYTES: usize = 1024 * 1024;

fn messages(n: usize, value_size: usize, headers: usize) -> Vec<OwnedMessage> {
    let value: Vec<u8> = (0..value_size).map(|i| (i * 31 % 251) as u8).collect();
    (0..n)
        .map(|i| {
            let key = (i as u64).to_be_bytes();
            let hs = (0..headers).fold(OwnedHeaders::new_with_capacity(headers), |hs, h| {
                hs.insert(Header {
                    key: if h == 0 { "bench" } else { "trace-id" },
                    value: Some(&key[..]),
                })
            });
            OwnedMessage::new(
                Some(value.clone()),
                Some(key.to_vec()),
                "bench.topic".into(),
                Timestamp::CreateTime(1_700_000_000_000 + i as i64),
                0,
                i as i64,
                (headers > 0).then_some(hs),
            )
        })
        .collect()
}

/// A batch as a copier fills it in steady state (copier.rs): sized like the
/// previous, full, batch, closed at `BATCH` records or `BATCH_BYTES` bytes,
/// whichever comes first.
fn batch_of(msgs: &[OwnedMessage]) -> Batch {
    let mut batch = Batch::with_capacity(BATCH, BATCH_BYTES);
    for m in msgs {
        batch.push(m);
        if batch.len() >= BATCH || batch.bytes() >= BATCH_BYTES {
            break;
        }
    }
    batch
}

fn batch_push(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch_push");
    for size in [100usize, 1024, 10 * 1024] {
        let msgs = messages(BATCH, size, 1);
        g.throughput(Throughput::Elements(batch_of(&msgs).len() as u64));
        g.bench_with_input(BenchmarkId::new("1_header", size), &msgs, |b, msgs| {
            b.iter(|| black_box(batch_of(msgs)))
        });
    }
    for headers in [0usize, 4] {
        let msgs = messages(BATCH, 1024, headers);
        g.throughput(Throughput::Elements(batch_of(&msgs).len() as u64));
        g.bench_with_input(
            BenchmarkId::new(format!("{headers}_headers"), 1024),
            &msgs,
            |b, msgs| b.iter(|| black_box(batch_of(msgs))),
        );
    }
    g.finish();
}

/// The destination's header copy, as in `destination.rs::write_batch`.
fn owned_headers(batch: &Batch) -> usize {
    let mut n = 0;
    for record in batch.iter() {
        let headers = (record.header_count() > 0).then(|| {
            record.headers().fold(
                OwnedHeaders::new_with_capacity(record.header_count()),
                |hs, (k, v)| hs.insert(Header { key: &k, value: v }),
            )
        });
        n += black_box(headers).is_some() as usize;
    }
    n
}

fn headers(c: &mut Criterion) {
    let mut g = c.benchmark_group("headers");
    for count in [0usize, 1, 4] {
        let batch = batch_of(&messages(BATCH, 1024, count));
        g.throughput(Throughput::Elements(batch.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("to_owned_headers", count),
            &batch,
            |b, batch| b.iter(|| owned_headers(batch)),
        );
    }
    // The alternative: keep each record's librdkafka headers as they are
    // (one `rd_kafka_headers_copy`, like `BorrowedHeaders::detach`) and hand
    // them to the producer, instead of copying them into the batch's arena
    // and rebuilding them in the destination.
    for count in [1usize, 4] {
        let msgs = messages(BATCH, 1024, count);
        let n = batch_of(&msgs).len();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(
            BenchmarkId::new("copy_librdkafka_headers", count),
            &msgs[..n],
            |b, msgs| {
                b.iter(|| {
                    for m in msgs {
                        black_box(m.headers().cloned());
                    }
                })
            },
        );
    }
    g.finish();
}

/// The shape of `destination::InFlight` (its fields are private).
#[allow(dead_code)]
struct InFlight {
    ack: Arc<BatchAck>,
    offset: i64,
}

fn destination_record(c: &mut Criterion) {
    let mut g = c.benchmark_group("destination_record");
    let batch = batch_of(&messages(BATCH, 1024, 1));
    let progress = PartitionProgress::new();
    let ack = progress.register(
        batch.len(),
        batch.bytes(),
        0,
        batch.len() as i64,
        None,
        None,
    );
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("headers_opaque_record", |b| {
        b.iter(|| {
            for record in batch.iter() {
                let headers = (record.header_count() > 0).then(|| {
                    record.headers().fold(
                        OwnedHeaders::new_with_capacity(record.header_count()),
                        |hs, (k, v)| hs.insert(Header { key: &k, value: v }),
                    )
                });
                let opaque = Box::new(InFlight {
                    ack: Arc::clone(&ack),
                    offset: record.offset,
                });
                let mut out: BaseRecord<'_, [u8], [u8], Box<InFlight>> =
                    BaseRecord::with_opaque_to("bench.topic", opaque).partition(0);
                out.key = record.key;
                out.payload = record.value;
                out.timestamp = record.timestamp;
                out.headers = headers;
                black_box(out);
            }
        })
    });
    g.finish();
}

/// `record` for partition 0 of `topic` as rdkafka's `send` takes it, headers
/// rebuilt as `OwnedHeaders`.
fn base_record<'a>(topic: &'a str, record: &RecordView<'a>) -> BaseRecord<'a, [u8], [u8]> {
    let mut out = BaseRecord::to(topic).partition(0);
    out.key = record.key;
    out.payload = record.value;
    out.timestamp = record.timestamp;
    out.headers = (record.header_count() > 0).then(|| {
        record.headers().fold(
            OwnedHeaders::new_with_capacity(record.header_count()),
            |hs, (k, v)| hs.insert(Header { key: &k, value: v }),
        )
    });
    out
}

/// A producer with no broker: records stay queued, and are purged between
/// samples.
fn unqueued_producer() -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:1")
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "2097151")
        .set("log_level", "0")
        .create()
        .expect("a producer")
}

fn producer_send(c: &mut Criterion) {
    let producer = unqueued_producer();
    let mut g = c.benchmark_group("producer_send");
    for (name, headers) in [("no_headers", 0usize), ("1_header", 1)] {
        let batch = batch_of(&messages(BATCH, 1024, headers));
        g.throughput(Throughput::Elements(batch.len() as u64));
        g.bench_with_input(BenchmarkId::new(name, 1024), &batch, |b, batch| {
            b.iter_custom(|iters| {
                time_rounds(&producer, batch, iters, |record| {
                    producer.send(base_record("bench.topic", record)).is_ok()
                })
            })
        });
    }
    g.finish();
}

/// Times `produce` over every record of `batch`, `iters` times, purging the
/// queue between rounds (there is no broker).
fn time_rounds(
    producer: &BaseProducer,
    batch: &Batch,
    iters: u64,
    mut produce: impl FnMut(&RecordView<'_>) -> bool,
) -> Duration {
    let mut spent = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        for record in batch.iter() {
            if !produce(&record) {
                break;
            }
        }
        spent += start.elapsed();
        producer.purge(PurgeConfig::default().queue());
        producer.poll(Duration::ZERO);
    }
    spent
}

fn topic_handle(c: &mut Criterion) {
    let producer = Arc::new(unqueued_producer());
    let names: Vec<Arc<str>> = (0..100)
        .map(|i| format!("bench.w3.d{i:03}").into())
        .collect();
    // The producer knows every topic, as one copying 100 topics does.
    let handles: Vec<TopicHandle> = names
        .iter()
        .map(|name| {
            // SAFETY: the native pointer is this producer's own.
            unsafe {
                TopicHandle::new(
                    Arc::clone(&producer) as Arc<dyn Send + Sync>,
                    producer.client().native_ptr(),
                    Arc::clone(name),
                )
            }
            .expect("a topic handle")
        })
        .collect();
    let target = &handles[57];
    let batch = batch_of(&messages(BATCH, 1024, 1));
    let mut g = c.benchmark_group("topic_handle");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("by_name_of_100", |b| {
        b.iter_custom(|iters| {
            time_rounds(&producer, &batch, iters, |record| {
                producer.send(base_record(target.name(), record)).is_ok()
            })
        })
    });
    g.bench_function("by_handle_of_100", |b| {
        b.iter_custom(|iters| {
            time_rounds(&producer, &batch, iters, |record| {
                target.produce(0, record, ()).is_ok()
            })
        })
    });
    g.finish();
    drop(handles);
}

fn progress(c: &mut Criterion) {
    let mut g = c.benchmark_group("progress");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("register_and_deliver_batch", |b| {
        let p = PartitionProgress::new();
        let mut next = 0i64;
        b.iter(|| {
            let ack = p.register(
                BATCH,
                BATCH * 1024,
                next,
                next + BATCH as i64,
                Some(next),
                None,
            );
            for _ in 0..BATCH {
                ack.delivered();
            }
            next += BATCH as i64;
        });
        assert_eq!(p.committable(), Some(next));
    });
    // Sixteen batches in flight, acknowledged out of order (the last first).
    g.throughput(Throughput::Elements(16 * 64));
    g.bench_function("out_of_order_16_batches", |b| {
        let p = PartitionProgress::new();
        let mut next = 0i64;
        b.iter(|| {
            let acks: Vec<_> = (0..16)
                .map(|i| {
                    p.register(
                        64,
                        64 * 1024,
                        next + i * 64,
                        next + (i + 1) * 64,
                        None,
                        None,
                    )
                })
                .collect();
            for ack in acks.iter().rev() {
                for _ in 0..64 {
                    ack.delivered();
                }
            }
            next += 16 * 64;
        });
        assert_eq!(p.committable(), Some(next));
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = batch_push, headers, destination_record, producer_send, topic_handle, progress
}
criterion_main!(benches);

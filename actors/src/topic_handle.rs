//! A destination topic's librdkafka handle, and producing a batched record
//! through it.
//!
//! rdkafka's `send` names the topic of every record: it allocates a C string
//! for the name, and librdkafka then takes its client's write lock and scans
//! every topic the client knows for that name, per record. A flow that
//! writes 100 topics did that scan for each of its records, holding the lock
//! its broker threads read under. A handle is looked up once; producing
//! through it only counts a reference. The record's headers go straight from
//! the batch's buffer into librdkafka's, without a C string per name.

use std::ffi::{c_void, CString};
use std::ptr::{self, NonNull};
use std::sync::Arc;

use rdkafka::bindings as rdsys;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::util::IntoOpaque;

use crate::batch::RecordView;

/// A handle on one topic of one producer. Keeps the producer alive: librdkafka
/// wants every topic handle destroyed before its client.
pub struct TopicHandle {
    rk: NonNull<rdsys::rd_kafka_t>,
    rkt: NonNull<rdsys::rd_kafka_topic_t>,
    name: Arc<str>,
    // Dropped after `rkt` is destroyed (see `Drop`).
    _client: Arc<dyn Send + Sync>,
}

// librdkafka's topic handles are thread-safe, reference-counted objects.
unsafe impl Send for TopicHandle {}
unsafe impl Sync for TopicHandle {}

impl TopicHandle {
    /// A handle on `name` for the producer `client`, whose native pointer is
    /// `native`. `None` when librdkafka refuses the name.
    ///
    /// # Safety
    /// `native` must be `client`'s `rd_kafka_t`.
    pub unsafe fn new(
        client: Arc<dyn Send + Sync>,
        native: *mut rdsys::rd_kafka_t,
        name: Arc<str>,
    ) -> Option<Self> {
        let rk = NonNull::new(native)?;
        let c_name = CString::new(name.as_bytes()).ok()?;
        let rkt = NonNull::new(rdsys::rd_kafka_topic_new(
            rk.as_ptr(),
            c_name.as_ptr(),
            ptr::null_mut(),
        ))?;
        Some(Self {
            rk,
            rkt,
            name,
            _client: client,
        })
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues a copy of `record` for `partition`, its headers in order, with
    /// `opaque` for its delivery report. On refusal the opaque comes back with
    /// the reason; the record was not queued.
    pub fn produce<O: IntoOpaque>(
        &self,
        partition: i32,
        record: &RecordView<'_>,
        opaque: O,
    ) -> Result<(), (RDKafkaErrorCode, O)> {
        let headers = native_headers(record);
        let opaque_ptr = opaque.into_ptr();
        let bytes = |b: Option<&[u8]>| rdsys::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 {
            ptr: b.map_or(ptr::null_mut(), |b| b.as_ptr() as *mut c_void),
            size: b.map_or(0, <[u8]>::len),
        };
        let vu = |vtype, u| rdsys::rd_kafka_vu_t { vtype, u };
        use rdsys::rd_kafka_vtype_t as T;
        use rdsys::rd_kafka_vu_s__bindgen_ty_1 as U;
        let fields = [
            vu(
                T::RD_KAFKA_VTYPE_RKT,
                U {
                    rkt: self.rkt.as_ptr(),
                },
            ),
            vu(T::RD_KAFKA_VTYPE_PARTITION, U { i32_: partition }),
            vu(
                T::RD_KAFKA_VTYPE_MSGFLAGS,
                U {
                    i: rdsys::RD_KAFKA_MSG_F_COPY,
                },
            ),
            vu(
                T::RD_KAFKA_VTYPE_VALUE,
                U {
                    mem: bytes(record.value),
                },
            ),
            vu(
                T::RD_KAFKA_VTYPE_KEY,
                U {
                    mem: bytes(record.key),
                },
            ),
            vu(T::RD_KAFKA_VTYPE_OPAQUE, U { ptr: opaque_ptr }),
            vu(
                T::RD_KAFKA_VTYPE_TIMESTAMP,
                U {
                    i64_: record.timestamp.unwrap_or(0),
                },
            ),
            vu(
                T::RD_KAFKA_VTYPE_HEADERS,
                U {
                    headers: headers.map_or(ptr::null_mut(), NonNull::as_ptr),
                },
            ),
        ];
        // Without headers, leave the last field out rather than pass a null list.
        let count = fields.len() - usize::from(headers.is_none());
        // SAFETY: every pointer in `fields` is valid for the call: the key and
        // value borrow `record`, the handle and headers are live, and
        // librdkafka copies the key and value (RD_KAFKA_MSG_F_COPY).
        let error = unsafe { rdsys::rd_kafka_produceva(self.rk.as_ptr(), fields.as_ptr(), count) };
        let Some(error) = NonNull::new(error) else {
            // The headers now belong to the queued record.
            return Ok(());
        };
        // SAFETY: `error` came from librdkafka and is destroyed once; on
        // failure the headers and the opaque are still ours.
        unsafe {
            let code = rdsys::rd_kafka_error_code(error.as_ptr());
            rdsys::rd_kafka_error_destroy(error.as_ptr());
            if let Some(h) = headers {
                rdsys::rd_kafka_headers_destroy(h.as_ptr());
            }
            Err((code.into(), O::from_ptr(opaque_ptr)))
        }
    }
}

impl Drop for TopicHandle {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_topic_new and destroyed once, before
        // `_client` lets the producer go.
        unsafe { rdsys::rd_kafka_topic_destroy(self.rkt.as_ptr()) }
    }
}

/// The record's headers as a librdkafka list, names and values copied from
/// the batch's buffer; `None` without headers.
fn native_headers(record: &RecordView<'_>) -> Option<NonNull<rdsys::rd_kafka_headers_t>> {
    if record.header_count() == 0 {
        return None;
    }
    // SAFETY: a fresh list; names and values are passed with their lengths,
    // so neither needs a terminating NUL.
    unsafe {
        let list = NonNull::new(rdsys::rd_kafka_headers_new(record.header_count()))?;
        for (name, value) in record.raw_headers() {
            rdsys::rd_kafka_header_add(
                list.as_ptr(),
                name.as_ptr().cast(),
                name.len() as isize,
                value.map_or(ptr::null(), |v| v.as_ptr().cast()),
                value.map_or(0, |v| v.len() as isize),
            );
        }
        Some(list)
    }
}

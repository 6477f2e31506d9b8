//! Strait's actors: the moving parts of a replication flow.
//!
//! # Layout
//! Records move through these files in this order:
//!
//! - [`source`]: the source cluster's supervisor. Owns the consumer-group member,
//!   starts and stops one copier per partition on rebalances, commits progress.
//!   Its reading thread ([`dispatcher`]) polls the consumer and hands each
//!   partition's records, in batches, to that partition's copier;
//!   [`fetch_waker`] gets resumed partitions fetched at once.
//! - [`discovery`]: polls the source's metadata and emits [`discovery::TopicEvent`]s
//!   (added, partitions increased, config changed, removed).
//! - [`copier`]: one per assigned partition. Takes its partition's batches and
//!   sends them to the destination, one at a time.
//! - [`destination`]: the destination cluster's supervisor. Owns the producer and
//!   writes batches through a bounded mailbox, each topic through its
//!   [`topic_handle`]; [`topic_admin`] creates and grows destination topics
//!   beside it.
//! - [`flow`]: wires one flow together and turns topic events into actions.
//!
//! Exactly-once flows write through [`transactional`] (one transactional
//! producer per partition, its delivery reports served by
//! [`delivery_poller`]) and keep their positions in [`offset_store`].
//! With `transaction_lanes`, they write through [`lane`]s instead: one
//! transactional producer for a share of the partitions, the lanes divided
//! among instances by [`lane_ownership`] and the source assigned their
//! partitions by hand (`source/lanes.rs`; docs/exactly-once.md, "Lanes").
//! [`mode_guard`] keeps a flow from running both ways at once, and
//! [`panic_guard`] keeps a lane running through a panic of its own.
//!
//! Shared pieces: [`spec`] (a validated flow), [`batch`] (records in flight),
//! [`progress`] (acknowledged offsets per partition), [`status`] (what the HTTP
//! endpoints report), [`metrics`] (metric names), [`error`].

pub mod batch;
pub mod client;
pub mod copier;
pub mod delivery_poller;
pub mod destination;
pub mod discovery;
pub mod dispatcher;
pub mod error;
pub mod fetch_waker;
pub mod flow;
pub mod lane;
pub mod lane_ownership;
pub mod metrics;
pub mod mode_guard;
pub mod offset_store;
pub mod panic_guard;
pub mod progress;
pub mod source;
pub mod spec;
pub mod status;
pub mod topic_admin;
pub mod topic_handle;
pub mod transactional;

pub use error::{ReplicationError, SpecError};
pub use flow::{FlowSupervisor, StopFlow};
pub use spec::{
    ClusterSpec, Delivery, Faults, FlowSpec, OnError, RenameFormat, StartFrom, TopicSelector,
    Tuning,
};
pub use status::StatusBoard;

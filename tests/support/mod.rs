//! Shared support for the integration tests, which run against real Kafka
//! clusters and the real `strait` binary.
//!
//! - [`cluster`]: starts and stops single-node KRaft clusters (one source and
//!   destination pair per test binary).
//! - [`records`]: creates topics, produces and reads records, compares a
//!   topic with its copy, waits for conditions with a bound.
//! - [`strait`]: writes config files, runs `strait run` as a child process,
//!   signals it, reads `/status`, runs one-shot commands.

#![allow(dead_code)]

pub mod cluster;
pub mod records;
pub mod strait;

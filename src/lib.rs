//! Strait: replicates Apache Kafka topics from one cluster to another.
//!
//! # Layout
//! - [`cli`]: the command line (`strait run | check | verify`).
//! - [`config`]: the config file: its shape, defaults, loading and validation.
//! - [`run`]: `strait run`, the long-running service: starts every flow, serves
//!   HTTP, stops cleanly on SIGINT/SIGTERM.
//! - [`check`]: `strait check`, connects and prints what would be replicated.
//! - [`http`]: `/metrics`, `/health`, `/ready`, `/status` and the status page.
//! - [`telemetry`]: logs and the metrics recorder.
//! - [`progress`]: the start-up summary and the periodic progress line.
//! - [`verify`]: `strait verify`, compares source and destination topics.
//!
//! The actors themselves (source, discovery, copiers, destination) live in the
//! `strait-actors` crate, in `actors/`.

pub mod check;
pub mod cli;
pub mod config;
pub mod http;
pub mod progress;
pub mod run;
pub mod telemetry;
pub mod verify;

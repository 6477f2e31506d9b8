//! The config file: its shape, defaults, loading and validation.
//!
//! [`load()`] reads the file named on the command line, applies `STRAIT__*`
//! environment variables over it, reads secrets and checks everything that
//! can be checked without a connection, returning [`Settings`] whose flows
//! are the actors' [`strait_actors::FlowSpec`]s. Every key is documented in
//! `docs/configuration.md`.
//!
//! # Layout
//! - [`mod@file`]: the top level (`clusters`, `flows`, `[http]`, `[log]`,
//!   `[metrics]`, `shutdown_timeout`) as written, with defaults.
//! - [`cluster`]: `[clusters.NAME]`, librdkafka properties, secrets, [`redact`].
//! - [`flow`]: `[[flows]]` as written, with defaults.
//! - [`mod@env`]: the `STRAIT__*` environment overrides.
//! - [`mod@load`]: reading the file and turning the `config` crate's errors into ours.
//! - `validate`: checks, and the resolution into [`Settings`].
//! - [`settings`]: what the rest of Strait uses.
//! - [`error`]: what can be wrong, as a [`ConfigError`].

pub mod cluster;
pub mod env;
pub mod error;
pub mod file;
pub mod flow;
pub mod load;
pub mod settings;
mod validate;

#[cfg(test)]
mod tests;

pub use cluster::{redact, ClusterConfig, PropertyValue, REDACTED};
pub use error::ConfigError;
pub use file::{ConfigFile, HttpConfig, LogConfig, MetricsConfig};
pub use flow::{FlowConfig, DEFAULT_TOPIC_CONFIG_EXCLUDE};
pub use load::{load, load_with_env, parse, Format};
pub use settings::{HttpSettings, LogFormat, LogSettings, MetricsSettings, Settings};

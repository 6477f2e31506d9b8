//! The command line: `strait run | check | verify`, each with `--config FILE`
//! (`-c FILE`, or `STRAIT_CONFIG`), plus `--version` and `help`.
//!
//! Exit codes are the binary's business; clap itself exits with 2 on a usage
//! error, which matches "bad config" for every command.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

/// Replicates Apache Kafka topics between clusters.
#[derive(Debug, Parser)]
#[command(name = "strait", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Strait's commands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run every flow in the config until SIGINT or SIGTERM
    Run {
        /// The config file (TOML, or YAML/JSON by extension).
        #[arg(short, long, env = "STRAIT_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate the config, connect to every cluster, print what would be replicated
    ///
    /// Copies nothing. Exit code 0: all good; 1: a cluster or topic problem;
    /// 2: a bad config.
    Check {
        /// The config file (TOML, or YAML/JSON by extension).
        #[arg(short, long, env = "STRAIT_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
    /// Compare source and destination topics partition by partition
    ///
    /// Reads each partition of the source topic and of its copy and compares
    /// record counts and contents (key, value, headers, timestamp), lined up
    /// by position. Prints a table per topic: in sync, missing N, extra or
    /// duplicated N. Exit code 0: in sync; 1: a mismatch (or a cluster that
    /// cannot be read); 2: a bad config or bad arguments.
    Verify {
        /// The config file (TOML, or YAML/JSON by extension).
        #[arg(short, long, env = "STRAIT_CONFIG", value_name = "FILE")]
        config: PathBuf,
        /// Only this flow (by name); default: every flow.
        #[arg(long, value_name = "F")]
        flow: Option<String>,
        /// Only this source topic; repeat for several. Default: every topic the
        /// flows replicate.
        #[arg(long = "topic", value_name = "T")]
        topics: Vec<String>,
        /// Partitions, time range and alignment window.
        #[command(flatten)]
        limits: crate::verify::Limits,
    },
}

impl Command {
    /// The config file the command reads.
    pub fn config(&self) -> &Path {
        match self {
            Self::Run { config } | Self::Check { config } | Self::Verify { config, .. } => config,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use clap::CommandFactory;

    use super::*;

    /// Tests that read or set `STRAIT_CONFIG` take turns.
    static ENV: Mutex<()> = Mutex::new(());

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("strait").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_and_check_take_config_long_or_short() {
        let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let cli = parse(&["run", "--config", "a.toml"]).expect("parses");
        assert_eq!(
            cli.command,
            Command::Run {
                config: "a.toml".into()
            }
        );
        let cli = parse(&["check", "-c", "b.yaml"]).expect("parses");
        assert_eq!(
            cli.command,
            Command::Check {
                config: "b.yaml".into()
            }
        );
        assert_eq!(cli.command.config(), Path::new("b.yaml"));
    }

    #[test]
    fn verify_takes_a_flow_and_several_topics() {
        let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let cli = parse(&[
            "verify",
            "-c",
            "s.toml",
            "--flow",
            "east-to-west",
            "--topic",
            "orders",
            "--topic",
            "payments",
        ])
        .expect("parses");
        assert_eq!(
            cli.command,
            Command::Verify {
                config: "s.toml".into(),
                flow: Some("east-to-west".into()),
                topics: vec!["orders".into(), "payments".into()],
                limits: crate::verify::Limits::default(),
            }
        );
        let cli = parse(&["verify", "-c", "s.toml"]).expect("parses");
        assert_eq!(
            cli.command,
            Command::Verify {
                config: "s.toml".into(),
                flow: None,
                topics: vec![],
                limits: crate::verify::Limits::default(),
            }
        );
    }

    #[test]
    fn verify_takes_partitions_a_time_range_and_a_window() {
        use crate::verify::{PartitionSpec, TimeBound};
        let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let cli = parse(&[
            "verify",
            "-c",
            "s.toml",
            "--partition",
            "0-2,5",
            "--partition",
            "9",
            "--from",
            "2024-01-01T00:00:00Z",
            "--to",
            "1h",
            "--window",
            "1000",
        ])
        .expect("parses");
        let Command::Verify { limits, .. } = cli.command else {
            panic!("not verify: {cli:?}");
        };
        assert_eq!(
            limits.partitions,
            vec![
                PartitionSpec { first: 0, last: 2 },
                PartitionSpec { first: 5, last: 5 },
                PartitionSpec { first: 9, last: 9 },
            ]
        );
        assert_eq!(limits.from, Some(TimeBound::At(1_704_067_200_000)));
        assert_eq!(
            limits.to,
            Some(TimeBound::Ago(std::time::Duration::from_secs(3600)))
        );
        assert_eq!(limits.window, 1000);
        let err = parse(&["verify", "-c", "s.toml", "--partition", "x"]).expect_err("bad");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn config_comes_from_strait_config_when_not_given() {
        let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
        std::env::set_var("STRAIT_CONFIG", "/etc/strait/strait.toml");
        let from_env = parse(&["check"]);
        let flag_wins = parse(&["check", "-c", "local.toml"]);
        std::env::remove_var("STRAIT_CONFIG");
        let missing = parse(&["check"]);

        assert_eq!(
            from_env.expect("parses").command.config(),
            Path::new("/etc/strait/strait.toml")
        );
        assert_eq!(
            flag_wins.expect("parses").command.config(),
            Path::new("local.toml")
        );
        let err = missing.expect_err("no config anywhere");
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn version_and_help() {
        let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let err = parse(&["--version"]).expect_err("prints the version");
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayVersion);
        assert!(err.to_string().contains(env!("CARGO_PKG_VERSION")));
        let err = parse(&["help"]).expect_err("prints help");
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
        let help = err.to_string();
        for cmd in ["run", "check", "verify"] {
            assert!(help.contains(cmd), "{help}");
        }
        assert_eq!(err.exit_code(), 0);
    }
}

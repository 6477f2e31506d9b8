//! Real Apache Kafka clusters for integration tests, started by `scripts/kafka`.
//!
//! Every cluster runs in its own temporary folder on free loopback ports and is
//! owned by the test process (`--owner-pid`): if the process dies without
//! dropping it (a crash, a kill, or a `static` that is never dropped), a
//! watchdog stops the brokers and deletes the folder. A cluster that cannot
//! start makes the test fail with the script's error output; tests never skip.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// A running Kafka cluster (KRaft; node 1 is broker and controller, the
/// others are brokers only). Dropping it stops the brokers and deletes its data.
pub struct KafkaCluster {
    name: String,
    bootstrap: String,
    dir: PathBuf,
}

impl KafkaCluster {
    /// Starts a single-broker cluster, fetching the Kafka jars first if needed.
    /// Panics with the command and its error output if Kafka cannot start.
    pub fn start(name: &str) -> KafkaCluster {
        Self::start_with_brokers(name, 1)
    }

    /// Starts a cluster of `brokers` brokers (for replication-factor tests).
    pub fn start_with_brokers(name: &str, brokers: usize) -> KafkaCluster {
        Self::try_start(name, brokers).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start(name: &str, brokers: usize) -> Result<KafkaCluster, String> {
        let pid = std::process::id().to_string();
        let brokers = brokers.to_string();
        let stdout = run_script(&["start", name, "--brokers", &brokers, "--owner-pid", &pid])?;
        let field = |key: &str| {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .map(str::to_owned)
                .ok_or_else(|| {
                    format!("scripts/kafka start {name}: no {key} line in its output:\n{stdout}")
                })
        };
        Ok(KafkaCluster {
            name: name.to_owned(),
            bootstrap: field("BOOTSTRAP=")?,
            dir: PathBuf::from(field("DIR=")?),
        })
    }

    /// `host:port[,host:port...]`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The cluster's folder: configs, data, and the brokers' logs (`broker-N.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops every broker (TERM, then KILL after 30 s) but keeps the data and
    /// the ports, so that [`restart`](Self::restart) brings the same cluster back.
    pub fn stop_brokers(&self) {
        if let Err(e) = run_script(&["stop-brokers", self.dir_str()]) {
            panic!("stopping the brokers of Kafka cluster '{}': {e}", self.name);
        }
    }

    /// Starts the brokers again on the same ports with the same data, and
    /// waits until they serve requests. Also fine if they are still running.
    pub fn restart(&self) {
        match run_script(&["restart", self.dir_str()]) {
            Ok(stdout) => assert!(
                stdout
                    .lines()
                    .any(|l| l == format!("BOOTSTRAP={}", self.bootstrap)),
                "Kafka cluster '{}' restarted with another address than {}:\n{stdout}",
                self.name,
                self.bootstrap
            ),
            Err(e) => panic!("restarting Kafka cluster '{}': {e}", self.name),
        }
    }

    fn dir_str(&self) -> &str {
        self.dir.to_str().expect("cluster folders have UTF-8 paths")
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        if let Err(e) = run_script(&["stop", self.dir_str()]) {
            // Never panic in drop (it may run during a panic); the watchdog
            // will still clean up when the test process exits.
            eprintln!("warning: could not stop Kafka cluster '{}': {e}", self.name);
        }
    }
}

/// One source and one destination cluster shared by every test of a test
/// binary, started once (both at the same time) on first use. They are never
/// dropped: the watchdog removes them when the test process exits. Tests that
/// share them must use their own topic names.
pub fn shared_pair() -> &'static (KafkaCluster, KafkaCluster) {
    static PAIR: OnceLock<Result<(KafkaCluster, KafkaCluster), String>> = OnceLock::new();
    let pair = PAIR.get_or_init(|| {
        std::thread::scope(|s| {
            let source = s.spawn(|| KafkaCluster::try_start("source", 1));
            let destination = s.spawn(|| KafkaCluster::try_start("destination", 1));
            let source = source.join().expect("starting the source cluster panicked");
            let destination = destination
                .join()
                .expect("starting the destination cluster panicked");
            // If only one started, dropping it here stops it.
            match (source, destination) {
                (Ok(source), Ok(destination)) => Ok((source, destination)),
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        })
    });
    match pair {
        Ok(pair) => pair,
        // Every test using the pair fails with the same reason, without retrying.
        Err(e) => panic!("the shared Kafka clusters could not start: {e}"),
    }
}

/// `scripts/kafka` of this repository (found from the crate being tested
/// upwards, so this module also works from the workspace's other crates).
pub fn kafka_script() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .map(|dir| dir.join("scripts").join("kafka"))
        .find(|script| script.is_file())
        .unwrap_or_else(|| panic!("scripts/kafka not found above {}", manifest.display()))
}

/// Runs `bash scripts/kafka ARGS...`; its stdout on success, otherwise an
/// error naming the command and holding everything it printed.
fn run_script(args: &[&str]) -> Result<String, String> {
    let script = kafka_script();
    let command = format!("{} {}", script.display(), args.join(" "));
    let output = Command::new("bash")
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run `{command}`: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "`{command}` failed ({}).\n--- stderr ---\n{}--- stdout ---\n{stdout}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

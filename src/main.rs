//! The `strait` binary: parses the command line and maps outcomes to exit codes
//! (0 fine, 1 a cluster or topic problem or a fatal run-time error, 2 a bad config).

use std::process::ExitCode;

use clap::Parser;
use strait::cli::{Cli, Command};
use strait::{check, config, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            let settings = match config::load(&config) {
                Ok(s) => s,
                Err(e) => return bad_config(e),
            };
            match run::run(settings) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("strait: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Check { config } => {
            let settings = match config::load(&config) {
                Ok(s) => s,
                Err(e) => return bad_config(e),
            };
            match check::check(&settings) {
                Ok(report) => {
                    print!("{}", report.text);
                    if report.ok {
                        println!("all good");
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("strait: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Verify {
            config,
            flow,
            topics,
            limits,
        } => strait::verify::command(&config, flow, topics, limits),
    }
}

fn bad_config(error: config::ConfigError) -> ExitCode {
    eprintln!("strait: bad config: {error}");
    ExitCode::from(2)
}

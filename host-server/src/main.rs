//! host-server: the federation server: rounds, strategies, history and plots, over TCP and serial.
//!
//! Not built yet: this binary only says so. Meanwhile `./run.sh` runs an
//! in-process FedAvg simulation on fedcore.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "host-server {}: not built yet; ./run.sh runs an in-process simulation meanwhile",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}

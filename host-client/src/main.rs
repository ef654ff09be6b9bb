//! host-client: a host participant: loads and partitions a dataset, trains with fedcore, talks to the server over TCP.
//!
//! Not built yet: this binary only says so. Meanwhile `./run.sh` runs an
//! in-process FedAvg simulation on fedcore.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "host-client {}: not built yet; ./run.sh runs an in-process simulation meanwhile",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}

//! firmware-sim: a simulated microcontroller participant: fixed point, static memory, a serial link.
//!
//! Not built yet: this binary only says so. Meanwhile `./run.sh` runs an
//! in-process FedAvg simulation on fedcore.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "firmware-sim {}: not built yet; ./run.sh runs an in-process simulation meanwhile",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}

//! Writes each target's seeds into `DIR/<target>/seed-N`, where a fuzz campaign starts.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: fuzz-seeds DIR");
        return ExitCode::FAILURE;
    };
    for &(name, _) in fedfuzz::TARGETS {
        let target = dir.join(name);
        let written = std::fs::create_dir_all(&target).and_then(|()| {
            for (i, seed) in fedfuzz::seeds(name).iter().enumerate() {
                std::fs::write(target.join(format!("seed-{i}")), seed)?;
            }
            Ok(())
        });
        if let Err(e) = written {
            eprintln!("fuzz-seeds: cannot write {}: {e}", target.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

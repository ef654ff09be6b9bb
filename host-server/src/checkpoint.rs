//! The run's checkpoint: what a killed server needs to go on from its last completed round.
//!
//! Written after every round, after the history (each file atomically and
//! flushed to the disk), as `checkpoint.bin` in the output directory: the
//! round, what the run is (model, strategy, rounds and seed, which a resumed
//! run must repeat), the global model and the server optimizer's state. The
//! rounds themselves are in `history_<rounds>.json`; on resume it is cut back
//! to the checkpoint's round (a crash between the two writes leaves the
//! history one round ahead). Client sampling is seeded by round, so no RNG
//! state needs saving.

use std::path::{Path, PathBuf};

use fedcore::model::ModelSpec;
use serde::{Deserialize, Serialize};

use crate::config::{ServerConfig, Strategy};

/// Version of the checkpoint format.
const FORMAT: u32 = 1;

/// Why a run could not resume.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// No checkpoint where one was expected.
    #[error("no checkpoint at {}: nothing to resume (a run writes one after each round)", .0.display())]
    Missing(PathBuf),
    /// It could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// It is not a checkpoint of this server.
    #[error("{} is not a checkpoint this server can read: {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// It is a checkpoint of another run.
    #[error(
        "the checkpoint is of a run with {what} {checkpoint}, not {now}: resume with the flags of the run it continues"
    )]
    Mismatch {
        /// Which setting.
        what: &'static str,
        /// The checkpoint's.
        checkpoint: String,
        /// This run's.
        now: String,
    },
}

/// Everything a run needs to go on after round `round`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    format: u32,
    /// The last completed round.
    pub round: u32,
    /// The rounds the run has in all.
    pub rounds: u32,
    /// Its model.
    pub model: ModelSpec,
    /// Its strategy.
    pub strategy: Strategy,
    /// Its seed.
    pub seed: u64,
    /// The global model after `round`.
    pub global: Vec<f32>,
    /// The server optimizer's state after `round`.
    pub optimizer_state: Vec<f32>,
}

impl Checkpoint {
    /// A checkpoint of `config`'s run after `round`.
    pub fn new(config: &ServerConfig, round: u32, global: &[f32], optimizer_state: &[f32]) -> Self {
        Checkpoint {
            format: FORMAT,
            round,
            rounds: config.rounds,
            model: config.model.clone(),
            strategy: config.strategy,
            seed: config.seed,
            global: global.to_vec(),
            optimizer_state: optimizer_state.to_vec(),
        }
    }

    /// Where a run in `dir` keeps its checkpoint.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("checkpoint.bin")
    }

    /// Writes it into `dir`, atomically.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let bytes = postcard::to_stdvec(self).map_err(std::io::Error::other)?;
        fedhost::output::write_atomic(&Self::path(dir), &bytes)
    }

    /// Reads the checkpoint in `dir` and checks it belongs to `config`'s run.
    pub fn load(dir: &Path, config: &ServerConfig) -> Result<Self, CheckpointError> {
        let path = Self::path(dir);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CheckpointError::Missing(path));
            }
            Err(source) => return Err(CheckpointError::Io { path, source }),
        };
        let format = |reason: String| CheckpointError::Format {
            path: path.clone(),
            reason,
        };
        let checkpoint: Checkpoint =
            postcard::from_bytes(&bytes).map_err(|e| format(e.to_string()))?;
        if checkpoint.format != FORMAT {
            return Err(format(format!(
                "format {} is not {FORMAT}",
                checkpoint.format
            )));
        }
        // The settings that make it the same run, compared as they are shown.
        let settings = [
            (
                "model",
                checkpoint.model.to_string(),
                config.model.to_string(),
            ),
            (
                "strategy",
                format!("{:?}", checkpoint.strategy),
                format!("{:?}", config.strategy),
            ),
            (
                "--rounds",
                checkpoint.rounds.to_string(),
                config.rounds.to_string(),
            ),
            (
                "--seed",
                checkpoint.seed.to_string(),
                config.seed.to_string(),
            ),
        ];
        if let Some((what, checkpoint, now)) = settings.into_iter().find(|(_, a, b)| a != b) {
            return Err(CheckpointError::Mismatch {
                what,
                checkpoint,
                now,
            });
        }
        if checkpoint.global.len() != config.model.param_count()
            || checkpoint.round > checkpoint.rounds
        {
            return Err(format("its model or round does not fit the run".into()));
        }
        Ok(checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::example as config;

    #[test]
    fn a_checkpoint_comes_back_as_saved_and_only_for_its_own_run() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        assert!(matches!(
            Checkpoint::load(dir.path(), &config),
            Err(CheckpointError::Missing(_))
        ));
        let global: Vec<f32> = (0..23).map(|i| i as f32 * 0.5).collect();
        let state: Vec<f32> = (0..23).map(|i| -(i as f32)).collect();
        let saved = Checkpoint::new(&config, 2, &global, &state);
        saved.save(dir.path()).unwrap();
        assert_eq!(Checkpoint::load(dir.path(), &config).unwrap(), saved);
        let mut other = config.clone();
        other.seed = 4;
        let e = Checkpoint::load(dir.path(), &other).unwrap_err();
        assert!(e.to_string().contains("--seed 3, not 4"), "{e}");
        std::fs::write(Checkpoint::path(dir.path()), b"not a checkpoint").unwrap();
        assert!(matches!(
            Checkpoint::load(dir.path(), &config),
            Err(CheckpointError::Format { .. })
        ));
    }
}

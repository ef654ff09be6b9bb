//! Saved models: a model spec and its f32 parameters in one file.
//!
//! ```text
//! b"FEDMODEL" | u32 LE format version (1) | u32 LE spec length | postcard(ModelSpec) | f32 LE parameters
//! ```

use std::path::{Path, PathBuf};

use fedcore::model::ModelSpec;

const MAGIC: &[u8; 8] = b"FEDMODEL";
const VERSION: u32 = 1;

/// Why a model file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a model file of this version, or is damaged.
    #[error("{} is not a model file written by host-server (or it is damaged): {what}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: &'static str,
    },
}

/// Writes `spec` and `params` to `path` (through a temporary file, so a crash never leaves half a model).
pub fn save(path: &Path, spec: &ModelSpec, params: &[f32]) -> Result<(), ModelFileError> {
    let io = |source| ModelFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let spec_bytes = postcard::to_allocvec(spec).map_err(|_| ModelFileError::Format {
        path: path.into(),
        what: "spec",
    })?;
    let mut out = Vec::with_capacity(16 + spec_bytes.len() + 4 * params.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(spec_bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&spec_bytes);
    for p in params {
        out.extend_from_slice(&p.to_le_bytes());
    }
    crate::output::write_atomic(path, &out).map_err(io)
}

/// Reads a model file.
pub fn load(path: &Path) -> Result<(ModelSpec, Vec<f32>), ModelFileError> {
    let bytes = std::fs::read(path).map_err(|source| ModelFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |what| ModelFileError::Format {
        path: path.to_path_buf(),
        what,
    };
    let rest = bytes.strip_prefix(MAGIC).ok_or(bad("no FEDMODEL header"))?;
    let word = |b: &[u8]| {
        b.get(..4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
    };
    if word(rest) != Some(VERSION) {
        return Err(bad("unknown format version"));
    }
    let spec_len = word(&rest[4..]).ok_or(bad("truncated header"))? as usize;
    let spec_bytes = rest.get(8..8 + spec_len).ok_or(bad("truncated spec"))?;
    let spec: ModelSpec =
        postcard::from_bytes(spec_bytes).map_err(|_| bad("invalid model spec"))?;
    let params_bytes = &rest[8 + spec_len..];
    if params_bytes.len() != 4 * spec.param_count() {
        return Err(bad("parameter count does not match the spec"));
    }
    let params = params_bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((spec, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = std::env::temp_dir().join(format!("fedhost-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.bin");
        let spec = ModelSpec::mlp(&[4, 3, 2]).unwrap();
        let params: Vec<f32> = (0..spec.param_count()).map(|i| i as f32).collect();
        save(&path, &spec, &params).unwrap();
        assert_eq!(load(&path).unwrap(), (spec, params));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.pop();
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(load(&path), Err(ModelFileError::Format { .. })));
        std::fs::write(&path, b"hello").unwrap();
        assert!(matches!(load(&path), Err(ModelFileError::Format { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Key files for admission by key (`fedcore::protocol::auth`): one key for the
//! whole federation, or one key per participant name.
//!
//! A key file is UTF-8 text; `#` starts a comment and blank lines are skipped.
//! It holds either
//! - one line with a key: the federation's key, for any name; or
//! - lines `name: key`: each participant's own key, so that no participant
//!   can claim another's name (a name not listed is refused).
//!
//! A key is written in hex, 32 to 128 digits (16 to 64 bytes); `openssl rand
//! -hex 32` makes one. Keys are never printed: errors name the line only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fedcore::protocol::auth::{MAX_KEY_BYTES, MIN_KEY_BYTES};

/// The keys of a key file.
#[derive(Clone, PartialEq, Eq)]
pub enum Keys {
    /// One key for every participant.
    Shared(Vec<u8>),
    /// Each participant name's own key.
    PerName(BTreeMap<String, Vec<u8>>),
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keys::Shared(_) => write!(f, "Keys::Shared(..)"),
            Keys::PerName(keys) => write!(f, "Keys::PerName({:?})", keys.keys()),
        }
    }
}

/// Why a key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// It could not be read.
    #[error("cannot read the key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not a key or a `name: key` pair.
    #[error("{path}:{line}: {problem}")]
    Line {
        /// The file.
        path: PathBuf,
        /// Its line number, from 1.
        line: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// It holds no key at all.
    #[error("{0}: the key file holds no key (one hex key, or `name: key` lines)")]
    Empty(PathBuf),
    /// It holds no key for this participant's name.
    #[error("{path}: no key for the name {name:?} (add a `{name}: key` line)")]
    NoKeyFor {
        /// The file.
        path: PathBuf,
        /// The name.
        name: String,
    },
}

fn hex_key(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("a key must be an even number of hex digits".into());
    }
    let bytes: Vec<u8> = (0..text.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect();
    if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&bytes.len()) {
        return Err(format!(
            "a key must have {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes ({} to {} hex digits), this one has {}",
            2 * MIN_KEY_BYTES,
            2 * MAX_KEY_BYTES,
            bytes.len()
        ));
    }
    Ok(bytes)
}

impl Keys {
    /// Reads and checks a key file.
    pub fn read(path: &Path) -> Result<Self, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses a key file's text (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, KeyFileError> {
        let bad = |line: usize, problem: String| KeyFileError::Line {
            path: path.to_path_buf(),
            line,
            problem,
        };
        let mut shared = None;
        let mut named = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            match line.split_once(':') {
                Some((name, key)) => {
                    let name = name.trim();
                    if name.is_empty() {
                        return Err(bad(i + 1, "a `name: key` line needs a name".into()));
                    }
                    let key = hex_key(key).map_err(|p| bad(i + 1, p))?;
                    if named.insert(name.to_string(), key).is_some() {
                        return Err(bad(i + 1, format!("a second key for {name:?}")));
                    }
                }
                None if shared.is_none() => {
                    shared = Some(hex_key(line).map_err(|p| bad(i + 1, p))?)
                }
                None => return Err(bad(i + 1, "a second shared key".into())),
            }
            if shared.is_some() && !named.is_empty() {
                return Err(bad(
                    i + 1,
                    "a file holds one shared key or `name: key` lines, not both".into(),
                ));
            }
        }
        match shared {
            Some(key) => Ok(Keys::Shared(key)),
            None if named.is_empty() => Err(KeyFileError::Empty(path.to_path_buf())),
            None => Ok(Keys::PerName(named)),
        }
    }

    /// The key `name` must prove it holds; `None` if the file has none for it.
    pub fn for_name(&self, name: &str) -> Option<&[u8]> {
        match self {
            Keys::Shared(key) => Some(key),
            Keys::PerName(keys) => keys.get(name).map(Vec::as_slice),
        }
    }

    /// The key `name` proves with, or why the file at `path` (these keys) has none.
    pub fn require(&self, path: &Path, name: &str) -> Result<&[u8], KeyFileError> {
        self.for_name(name).ok_or_else(|| KeyFileError::NoKeyFor {
            path: path.to_path_buf(),
            name: name.to_string(),
        })
    }

    /// The key a participant named `name` proves with, from the file at `path`.
    pub fn own(path: &Path, name: &str) -> Result<Vec<u8>, KeyFileError> {
        Ok(Self::read(path)?.require(path, name)?.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff";

    fn parse(text: &str) -> Result<Keys, KeyFileError> {
        Keys::parse(text, Path::new("keys"))
    }

    #[test]
    fn a_shared_key_serves_every_name() {
        let keys = parse(&format!("# the federation's key\n{KEY}\n")).unwrap();
        assert_eq!(keys.for_name("anyone").map(<[u8]>::len), Some(16));
    }

    #[test]
    fn per_name_keys_serve_only_their_names() {
        let keys = parse(&format!("alice: {KEY}\nbob: {KEY}ff\n\n")).unwrap();
        assert_eq!(keys.for_name("alice").map(<[u8]>::len), Some(16));
        assert_eq!(keys.for_name("bob").map(<[u8]>::len), Some(17));
        assert_eq!(keys.for_name("mallory"), None);
    }

    #[test]
    fn bad_files_are_refused_by_line_without_printing_keys() {
        for (text, problem) in [
            ("abc", "even number"),
            ("0011", "16 to 64 bytes"),
            (&format!("{KEY}\n{KEY}") as &str, "second shared key"),
            (&format!("a: {KEY}\na: {KEY}"), "second key"),
            (&format!("{KEY}\na: {KEY}"), "not both"),
            (&format!(": {KEY}"), "needs a name"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(problem), "{text:?}: {e}");
            assert!(!e.contains(KEY), "{e}");
        }
        assert!(matches!(parse("# nothing\n"), Err(KeyFileError::Empty(_))));
    }

    #[test]
    fn debug_output_hides_the_keys() {
        let keys = parse(&format!("alice: {KEY}")).unwrap();
        assert!(!format!("{keys:?}").contains("0011"));
    }
}

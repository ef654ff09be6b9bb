//! The workspace's layering, checked from the code: in every crate, each
//! module names (outside comments) only modules declared below it here, so
//! imports run one way and there is no circle. A new module must be placed in
//! its crate's list; an import that runs back up fails this test.
//!
//! Checked from fedcore because every crate of the workspace sits on it:
//! `cargo test -p fedcore --test layers`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

/// Each crate's modules, lowest first; each folder module's submodules likewise.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "fedcore/src",
        &[
            "error",
            "rng",
            "linalg",
            "data",
            "scalar",
            "kernels",
            "compress",
            "aggregate",
            "model",
            "train",
            "protocol",
            "device",
        ],
    ),
    ("fedcore/src/kernels", &["portable", "host"]),
    ("fedcore/src/kernels/host", &["simd"]),
    (
        "fedcore/src/model",
        &["spec", "plan", "layers", "network", "backends"],
    ),
    (
        "fedcore/src/protocol",
        &["auth", "message", "frame", "transfer"],
    ),
    (
        "fedcore/src/device",
        &["provision", "board", "footprint", "firmware", "tests"],
    ),
    (
        "fedhost/src",
        &[
            "keys",
            "keras",
            "subnormal",
            "malloc",
            "certificates",
            "output",
            "table",
            "dataset",
            "partition",
            "share",
            "link",
            "tls",
            "model_file",
        ],
    ),
    (
        "host-server/src",
        &[
            "history",
            "config",
            "weights",
            "aggregation",
            "plot",
            "validate",
            "job",
            "exchange",
            "strikes",
            "participant",
            "flower",
            "supernode",
            "round",
            "checkpoint",
            "federation",
            "summary",
        ],
    ),
    (
        "host-client/src",
        &[
            "attack",
            "slots",
            "local",
            "participant",
            "flower",
            "supernode",
        ],
    ),
    (
        "flower-bridge/src",
        &[
            "proto",
            "tls",
            "npy",
            "tensors",
            "legacy",
            "objects",
            "superlink",
            "supernode",
            "join",
        ],
    ),
    (
        "firmware-sim/src",
        &["shard", "qemu", "line", "uart", "board", "bin"],
    ),
    (
        "firmware/src",
        &["mmio", "console", "stack", "time", "uart"],
    ),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The source of module `name` in `dir`: `name.rs`, or every file of the folder `name/`.
fn sources(dir: &Path, name: &str) -> Vec<PathBuf> {
    let file = dir.join(format!("{name}.rs"));
    if file.exists() {
        return vec![file];
    }
    let folder = dir.join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap_or_else(|e| {
            panic!(
                "module {name}: neither {} nor {}: {e}",
                file.display(),
                folder.display()
            )
        })
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    files.sort();
    files
}

/// The code of `path` without its comment lines.
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `code` names module `module` through `prefix` (`crate::` or `super::`).
fn names(code: &str, prefix: &str, module: &str) -> bool {
    let needle = format!("{prefix}{module}");
    code.match_indices(&needle).any(|(at, _)| {
        let after = code[at + needle.len()..].chars().next();
        !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

#[test]
fn every_module_imports_only_modules_below_it() {
    let mut wrong = Vec::new();
    for (dir, order) in LAYERS {
        let dir = root().join(dir);
        // Folder modules are named from their siblings as `super::x` or
        // `crate::<folder>::x`; crate roots as `crate::x`.
        let folder = dir.file_name().unwrap().to_string_lossy().into_owned();
        let prefixes: Vec<String> = if folder == "src" {
            vec!["crate::".into()]
        } else {
            vec!["super::".into(), format!("crate::{folder}::")]
        };
        for (level, module) in order.iter().enumerate() {
            for file in sources(&dir, module) {
                let code = code(&file);
                for higher in &order[level + 1..] {
                    if prefixes.iter().any(|p| names(&code, p, higher)) {
                        wrong.push(format!(
                            "{} imports {higher}, which sits above {module}",
                            file.display()
                        ));
                    }
                }
            }
        }
        // Every module of the folder is placed.
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            let is_module = path.is_dir() || path.extension().is_some_and(|x| x == "rs");
            if is_module
                && !["lib", "main", "mod"].contains(&stem.as_str())
                && !order.contains(&stem.as_str())
            {
                wrong.push(format!(
                    "{} is in no layer: add it to {}'s list",
                    path.display(),
                    dir.display()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_checker_sees_an_import_that_runs_back_up() {
    assert!(names("use crate::device::Footprint;", "crate::", "device"));
    assert!(!names(
        "use crate::devices::Footprint;",
        "crate::",
        "device"
    ));
    assert!(names("let x = super::firmware::X;", "super::", "firmware"));
}

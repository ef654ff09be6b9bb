//! Sizes the image for the model and the RAM budget it is built for, and
//! writes the linker's memory map, so that the linker refuses an image whose
//! memory does not fit (`region 'RAM' overflowed`, or the stack reserve's
//! assertion) instead of a board finding out at run time.
//!
//! Settings (environment variables; `firmware/build.sh` passes them):
//! - `FIRMWARE_MODEL`: the model the memory is sized for (default `mlp:784-32-10`);
//! - `FIRMWARE_RAM_KB`: the RAM budget in KiB (default 128);
//! - `FIRMWARE_STACK_KB`: RAM that must stay free for the stack (default 8);
//! - the target picks the board: `thumbv7em-none-eabihf` is QEMU's
//!   `mps2-an386` (Cortex-M4F), `thumbv7m-none-eabi` its `mps2-an385`
//!   (Cortex-M3, no FPU: Q16.16 only); the `f32` feature trains in f32.

use std::fmt::Write as _;
use std::path::PathBuf;

use fedcore::device::Footprint;
use fedcore::model::ModelSpec;
use fedcore::scalar::{Fixed, Scalar};

/// Largest frame the device receives (the device loop's `F`).
const MAX_FRAME: usize = 256;

fn main() {
    for var in ["FIRMWARE_MODEL", "FIRMWARE_RAM_KB", "FIRMWARE_STACK_KB"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    if let Err(e) = configure() {
        eprintln!("firmware build: {e}");
        std::process::exit(1);
    }
}

fn setting(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

fn kib(var: &str, default: &str) -> Result<usize, String> {
    let text = setting(var, default);
    match text.trim().parse::<usize>() {
        Ok(k) if (1..=4096).contains(&k) => Ok(k),
        _ => Err(format!(
            "{var} must be a number of KiB from 1 to 4096, got {text:?}"
        )),
    }
}

fn configure() -> Result<(), String> {
    let target = setting("TARGET", "");
    let f32 = std::env::var_os("CARGO_FEATURE_F32").is_some();
    let board = match target.as_str() {
        "thumbv7em-none-eabihf" => "Mps2An386",
        "thumbv7m-none-eabi" if f32 => {
            return Err(
                "the mps2-an385's Cortex-M3 has no FPU: build it without the f32 feature".into(),
            );
        }
        "thumbv7m-none-eabi" => "Mps2An385",
        other => {
            return Err(format!(
                "build for thumbv7em-none-eabihf (mps2-an386) or thumbv7m-none-eabi (mps2-an385), not {other:?}"
            ));
        }
    };
    let model_text = setting("FIRMWARE_MODEL", "mlp:784-32-10");
    let model: ModelSpec = model_text
        .parse()
        .map_err(|e| format!("FIRMWARE_MODEL {model_text:?}: {e}"))?;
    let ram_kb = kib("FIRMWARE_RAM_KB", "128")?;
    let stack_kb = kib("FIRMWARE_STACK_KB", "8")?;
    let (arena_len, footprint) = if f32 {
        sized::<f32>(&model)
    } else {
        sized::<Fixed>(&model)
    };

    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let mut config = String::new();
    let _ = writeln!(config, "/// The model the memory is sized for.");
    let _ = writeln!(config, "pub const MODEL: &str = {model_text:?};");
    let _ = writeln!(config, "/// Scalars of the parameter-and-trainer arena.");
    let _ = writeln!(config, "pub const ARENA_LEN: usize = {arena_len};");
    let _ = writeln!(config, "/// Largest frame received.");
    let _ = writeln!(config, "pub const MAX_FRAME: usize = {MAX_FRAME};");
    let _ = writeln!(config, "/// The RAM budget in bytes.");
    let _ = writeln!(config, "pub const RAM_BYTES: usize = {};", ram_kb * 1024);
    let _ = writeln!(config, "/// The board the image is built for.");
    let _ = writeln!(
        config,
        "pub const BOARD: fedcore::protocol::Board = fedcore::protocol::Board::{board};"
    );
    let _ = writeln!(
        config,
        "/// What fedcore counts the device's memory as, in bytes."
    );
    let _ = writeln!(
        config,
        "pub const FOOTPRINT: usize = {};",
        footprint.total()
    );
    std::fs::write(out.join("config.rs"), config).map_err(|e| e.to_string())?;

    // SSRAM1 stands for the board's flash (QEMU gives 4 MiB there), SSRAM2/3
    // for its RAM (QEMU gives 4 MiB; the budget is what the image may use).
    let memory = format!(
        "/* Written by firmware/build.rs for {model_text} in {ram_kb} KiB. */\n\
         MEMORY\n{{\n  FLASH : ORIGIN = 0x00000000, LENGTH = 4M\n  RAM : ORIGIN = 0x20000000, LENGTH = {ram_kb}K\n}}\n\
         /* The stack sits above the static memory and its 1 KiB MPU guard (src/stack.rs). */\n\
         _stack_reserve = {stack_kb}K;\n\
         ASSERT(ORIGIN(RAM) + LENGTH(RAM) - (ALIGN(__sheap, 1024) + 1024) >= _stack_reserve,\n  \
         \"RAM budget: the static memory and the stack guard leave less than FIRMWARE_STACK_KB for the stack\");\n"
    );
    std::fs::write(out.join("memory.x"), memory).map_err(|e| e.to_string())?;
    println!("cargo:rustc-link-search={}", out.display());
    println!(
        "cargo:rustc-link-arg=-Map={}",
        out.join("firmware.map").display()
    );
    Ok(())
}

fn sized<S: Scalar>(model: &ModelSpec) -> (usize, Footprint) {
    (
        Footprint::arena_len::<S>(model),
        Footprint::of::<S, MAX_FRAME>(model),
    )
}

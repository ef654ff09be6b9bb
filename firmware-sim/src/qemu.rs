//! The firmware image (the `firmware/` crate) on QEMU's MPS2 boards: building
//! the image for a model and a RAM budget, finding QEMU, provisioning a board
//! (its name and its shard blob, placed by QEMU's loader) and starting
//! `qemu-system-arm` with the link UART on a pty and the console on a pipe.
//!
//! The image is built by cargo in its own workspace and target folder
//! (`firmware/target`), one build at a time, and each build (board, number
//! type, model, budget) is copied out under its own name with its linker map.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use fedcore::device::Provision;
use fedcore::device::provision::mps2;
use fedcore::protocol::Board;

/// The firmware crate, beside this one in the checkout.
pub const FIRMWARE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../firmware");
/// Where `firmware/qemu.sh` unpacks Debian's QEMU (without installing it).
const LOCAL_QEMU: &str = "target/qemu";
/// Board clock ticks per instruction under `-icount shift=0` (1 ns an
/// instruction, a 25 MHz clock).
pub const INSTRUCTIONS_PER_TICK: u64 = 40;
/// How long QEMU may take to say where its pty is.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Which of QEMU's MPS2 boards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Core {
    /// mps2-an386: Cortex-M4 with FPU (thumbv7em-none-eabihf), Q16.16 or f32.
    M4,
    /// mps2-an385: Cortex-M3, no FPU (thumbv7m-none-eabi), Q16.16 only.
    M3,
}

impl Core {
    /// QEMU's machine name.
    pub fn machine(self) -> &'static str {
        match self {
            Core::M4 => "mps2-an386",
            Core::M3 => "mps2-an385",
        }
    }

    /// The Rust target its image is built for.
    pub fn target(self) -> &'static str {
        match self {
            Core::M4 => "thumbv7em-none-eabihf",
            Core::M3 => "thumbv7m-none-eabi",
        }
    }

    /// The board as the protocol names it.
    pub fn board(self) -> Board {
        match self {
            Core::M4 => Board::Mps2An386,
            Core::M3 => Board::Mps2An385,
        }
    }
}

/// Why a board could not be built or started.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// An f32 image for a core without an FPU.
    #[error("the mps2-an385's Cortex-M3 has no FPU: it trains in Q16.16 only (drop --numeric f32)")]
    NoFpu,
    /// cargo could not build the image.
    #[error(
        "building the firmware failed (is the target installed? rustup target add {target}):\n{stderr}"
    )]
    Build {
        /// The target it was built for.
        target: &'static str,
        /// What cargo said.
        stderr: String,
    },
    /// No qemu-system-arm anywhere.
    #[error(
        "qemu-system-arm not found: run firmware/qemu.sh (it unpacks Debian's package into \
         firmware/target/qemu without installing it), put one on PATH, or pass --qemu"
    )]
    NotFound,
    /// QEMU's option syntax cannot carry this path.
    #[error("{0}: QEMU's options cannot name a path with a comma in it")]
    Comma(PathBuf),
    /// A process could not be started or a file written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// cargo built, but did not say where the image or its map is.
    #[error("cargo did not report the firmware image and its build output")]
    NoImage,
    /// QEMU exited or stayed silent instead of naming its pty.
    #[error("QEMU did not start: {0}")]
    NoPty(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> QemuError {
    let what = what.into();
    move |source| QemuError::Io { what, source }
}

/// One build of the image.
#[derive(Debug, Clone)]
pub struct Image {
    /// The board.
    pub core: Core,
    /// Train in f32 (the M4F only) rather than Q16.16.
    pub f32: bool,
    /// The model its memory is sized for.
    pub model: String,
    /// Its RAM budget in KiB.
    pub ram_kb: usize,
    /// Build the stack-overflow probe instead: an image that overflows its
    /// stack on purpose at boot, to show that the guard stops it.
    pub overflow_probe: bool,
}

impl Image {
    /// The name of this build's files in `firmware/target/images/`.
    pub fn variant(&self) -> String {
        let numeric = if self.f32 { "f32" } else { "q16" };
        let model: String = self
            .model
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let probe = if self.overflow_probe {
            "-overflow-probe"
        } else {
            ""
        };
        format!(
            "{}-{numeric}-{model}-{}k{probe}",
            self.core.machine(),
            self.ram_kb
        )
    }

    /// Builds the image and returns its path and its sizes from the linker map.
    ///
    /// All builds share one target folder (a build for another model or
    /// budget recompiles only the image's own crate), under a lock so that
    /// boards started together build in turn; each build's image and map are
    /// copied out under the build's name.
    pub fn build(&self) -> Result<(PathBuf, Sizes), QemuError> {
        if self.f32 && self.core == Core::M3 {
            return Err(QemuError::NoFpu);
        }
        let target = Path::new(FIRMWARE_DIR).join("target");
        let images = target.join("images");
        std::fs::create_dir_all(&images)
            .map_err(io(format!("cannot make {}", images.display())))?;
        let lock = std::fs::File::create(target.join(".build.lock"))
            .map_err(io("cannot make the build lock"))?;
        lock.lock().map_err(io("cannot take the build lock"))?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .current_dir(FIRMWARE_DIR)
            .args([
                "build",
                "--release",
                "--quiet",
                "--message-format=json",
                "--target",
                self.core.target(),
            ])
            .env("FIRMWARE_MODEL", &self.model)
            .env("FIRMWARE_RAM_KB", self.ram_kb.to_string())
            .env("CARGO_TARGET_DIR", &target)
            // Host flags (a target-cpu, say) must not reach a bare-metal build.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS");
        let features: Vec<&str> = [
            (self.f32, "f32"),
            (self.overflow_probe, "stack-overflow-probe"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if !features.is_empty() {
            build.args(["--features", &features.join(",")]);
        }
        let out = build.output().map_err(io("cannot run cargo"))?;
        if !out.status.success() {
            // With JSON messages, rustc's (and the linker's) errors are on stdout.
            let rendered = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|m| m["message"]["rendered"].as_str().map(str::to_string))
                .collect::<String>();
            return Err(QemuError::Build {
                target: self.core.target(),
                stderr: format!("{rendered}{}", String::from_utf8_lossy(&out.stderr))
                    .trim()
                    .to_string(),
            });
        }
        let built = Built::from_messages(&String::from_utf8_lossy(&out.stdout))
            .ok_or(QemuError::NoImage)?;
        let image = images.join(format!("{}.elf", self.variant()));
        std::fs::copy(&built.executable, &image)
            .map_err(io(format!("cannot copy the image to {}", image.display())))?;
        let map = built.out_dir.join("firmware.map");
        let text =
            std::fs::read_to_string(&map).map_err(io(format!("cannot read {}", map.display())))?;
        let _ = std::fs::write(images.join(format!("{}.map", self.variant())), &text);
        Ok((image, Sizes::from_map(&text, self.ram_kb * 1024)))
    }
}

/// Where cargo says this build's image and build-script output are (its
/// JSON messages): the map is in the output folder of the build script that
/// ran for these features, even when nothing was relinked.
struct Built {
    executable: PathBuf,
    out_dir: PathBuf,
}

impl Built {
    fn from_messages(stdout: &str) -> Option<Self> {
        let (mut executable, mut out_dir) = (None, None);
        for message in stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        {
            let ours = message["package_id"]
                .as_str()
                .is_some_and(|id| id.contains("/firmware#"));
            let path = |field: &str| message[field].as_str().map(PathBuf::from);
            match message["reason"].as_str() {
                Some("build-script-executed") if ours => out_dir = path("out_dir"),
                Some("compiler-artifact") if ours => executable = path("executable").or(executable),
                _ => {}
            }
        }
        Some(Built {
            executable: executable?,
            out_dir: out_dir?,
        })
    }
}

/// An image's sizes, in bytes, from its linker map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sizes {
    /// Flash: the vector table, code, constants and the initial values of .data.
    pub flash: usize,
    /// Initialised RAM.
    pub data: usize,
    /// Zeroed RAM (the arena, the handler stack, the ring buffer).
    pub bss: usize,
    /// The RAM budget.
    pub ram: usize,
}

impl Sizes {
    /// Reads the output sections' sizes from an lld map (`VMA LMA Size Align Out`).
    pub fn from_map(map: &str, ram: usize) -> Self {
        let mut sizes = Sizes {
            ram,
            ..Sizes::default()
        };
        for line in map.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, _, size, _, name] = fields[..] else {
                continue;
            };
            let Ok(size) = usize::from_str_radix(size, 16) else {
                continue;
            };
            match name {
                ".vector_table" | ".text" | ".rodata" => sizes.flash += size,
                ".data" => {
                    sizes.data += size;
                    sizes.flash += size;
                }
                ".bss" | ".uninit" => sizes.bss += size,
                _ => {}
            }
        }
        sizes
    }

    /// RAM left above the static memory for the stack and its guard.
    pub fn stack(&self) -> usize {
        self.ram.saturating_sub(self.data + self.bss)
    }
}

impl std::fmt::Display for Sizes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "flash {} bytes; RAM: data {}, bss {}, stack and guard {} (budget {})",
            self.flash,
            self.data,
            self.bss,
            self.stack(),
            self.ram
        )
    }
}

/// A qemu-system-arm and the library folders it needs.
#[derive(Debug, Clone)]
pub struct Qemu {
    program: PathBuf,
    libraries: Vec<PathBuf>,
}

impl Qemu {
    /// `explicit`, else the copy `firmware/qemu.sh` unpacked, else one on PATH.
    pub fn find(explicit: Option<&Path>) -> Result<Self, QemuError> {
        if let Some(program) = explicit {
            return Ok(Qemu {
                program: program.to_path_buf(),
                libraries: Vec::new(),
            });
        }
        let local = Path::new(FIRMWARE_DIR).join(LOCAL_QEMU);
        let program = local.join("usr/bin/qemu-system-arm");
        if program.is_file() {
            let arch = format!("{}-linux-gnu", std::env::consts::ARCH);
            return Ok(Qemu {
                program,
                libraries: vec![
                    local.join("usr/lib").join(&arch),
                    local.join("lib").join(&arch),
                ],
            });
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join("qemu-system-arm"))
            .find(|p| p.is_file())
            .map(|program| Qemu {
                program,
                libraries: Vec::new(),
            })
            .ok_or(QemuError::NotFound)
    }
}

/// A board ready to start: its image and what the loader places.
#[derive(Debug)]
pub struct Launch<'a> {
    /// Which QEMU.
    pub qemu: &'a Qemu,
    /// The board.
    pub core: Core,
    /// The image.
    pub image: &'a Path,
    /// The shard blob.
    pub shard: &'a Path,
    /// The provisioning record.
    pub provision: &'a Path,
    /// Count instructions (`-icount shift=0`): the board's clock then advances
    /// 1 ns an instruction, so its tick counts are instruction counts.
    pub icount: bool,
}

/// Writes the provisioning record of a board named `name` (holding `key`, if
/// the server admits by key) to `path`.
pub fn write_provision(name: &str, key: Option<&[u8]>, path: &Path) -> Result<(), QemuError> {
    let mut record = [0u8; Provision::MAX_LEN];
    let len = Provision { name, key }
        .write(&mut record)
        .map_err(|e| QemuError::Io {
            what: format!("board name {name:?}"),
            source: std::io::Error::other(e.to_string()),
        })?;
    std::fs::write(path, &record[..len]).map_err(io(format!("cannot write {}", path.display())))
}

/// A running board. Dropping it stops QEMU.
#[derive(Debug)]
pub struct Running {
    child: Child,
    /// The pty of the board's link UART (UART0), for `host-server --serial`.
    pub pty: PathBuf,
    /// The board's console (UART1), a line at a time.
    pub console: mpsc::Receiver<String>,
}

fn loader_arg(path: &Path, address: usize) -> Result<String, QemuError> {
    let text = path.display().to_string();
    if text.contains(',') {
        return Err(QemuError::Comma(path.to_path_buf()));
    }
    Ok(format!("loader,file={text},addr={address:#x}"))
}

impl Launch<'_> {
    /// Starts QEMU and waits until it names the pty.
    pub fn start(&self) -> Result<Running, QemuError> {
        let mut qemu = Command::new(&self.qemu.program);
        if !self.qemu.libraries.is_empty() {
            let joined = std::env::join_paths(&self.qemu.libraries).map_err(|e| QemuError::Io {
                what: "QEMU's library folders".into(),
                source: std::io::Error::other(e),
            })?;
            qemu.env("LD_LIBRARY_PATH", joined);
        }
        qemu.args([
            "-M",
            self.core.machine(),
            "-display",
            "none",
            "-monitor",
            "none",
        ])
        .arg("-kernel")
        .arg(self.image)
        // serial0 is UART0, the link; serial1 is UART1, the console.
        .args(["-serial", "pty", "-serial", "stdio"])
        .args(["-device", &loader_arg(self.shard, mps2::SHARD_AT)?])
        .args(["-device", &loader_arg(self.provision, mps2::PROVISION_AT)?])
        // The image ends QEMU with its exit status when it stops.
        .args(["-semihosting-config", "enable=on,target=native"]);
        if self.icount {
            qemu.args(["-icount", "shift=0"]);
        }
        let mut child = qemu
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io(format!("cannot start {}", self.qemu.program.display())))?;
        // QEMU names the pty on stdout, before the console's first line.
        let (pty_tx, pty_rx) = mpsc::channel();
        let (console_tx, console) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let sent = match pty_of(&line) {
                        Some(pty) => pty_tx.send(pty).is_ok(),
                        None => console_tx.send(line).is_ok(),
                    };
                    if !sent {
                        break;
                    }
                }
            });
        }
        if let Some(stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("qemu: {line}");
                }
            });
        }
        let mut running = Running {
            child,
            pty: PathBuf::new(),
            console,
        };
        match pty_rx.recv_timeout(START_TIMEOUT) {
            Ok(pty) => {
                running.pty = pty;
                Ok(running)
            }
            Err(_) => {
                let status = running.child.try_wait().ok().flatten();
                Err(QemuError::NoPty(match status {
                    Some(status) => format!("it exited ({status}) before naming its pty"),
                    None => format!("no pty named within {} s", START_TIMEOUT.as_secs()),
                }))
            }
        }
    }
}

impl Running {
    /// QEMU's exit status, once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Stops QEMU.
    pub fn stop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The pty in QEMU's "char device redirected to /dev/pts/N (label serial0)".
fn pty_of(line: &str) -> Option<PathBuf> {
    let rest = line.strip_prefix("char device redirected to ")?;
    let (path, label) = rest.split_once(" (label ")?;
    (label.trim_end_matches(')') == "serial0").then(|| PathBuf::from(path))
}

/// A console line with its tick counts also stated as instructions (with
/// `-icount shift=0`, 40 instructions a tick of the 25 MHz clock).
pub fn with_instructions(line: &str) -> String {
    let Some((before, after)) = line.split_once(" ticks") else {
        return line.to_string();
    };
    let digits = before.len() - before.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    match before[before.len() - digits..].parse::<u64>() {
        Ok(ticks) if digits > 0 => format!(
            "{before} ticks = {} instructions{after}",
            ticks.saturating_mul(INSTRUCTIONS_PER_TICK)
        ),
        _ => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_pty_is_serial0s() {
        let line = "char device redirected to /dev/pts/7 (label serial0)";
        assert_eq!(pty_of(line), Some(PathBuf::from("/dev/pts/7")));
        assert_eq!(
            pty_of("char device redirected to /dev/pts/8 (label serial1)"),
            None
        );
        assert_eq!(pty_of("qemu-system-arm: warning"), None);
    }

    #[test]
    fn ticks_are_stated_as_instructions() {
        let line = "firmware: round 3: train 1000 ticks; stack high-water 7388 bytes";
        assert_eq!(
            with_instructions(line),
            "firmware: round 3: train 1000 ticks = 40000 instructions; stack high-water 7388 bytes"
        );
        assert_eq!(with_instructions("firmware: booted"), "firmware: booted");
        assert_eq!(with_instructions("no ticks here"), "no ticks here");
    }

    #[test]
    fn a_path_with_a_comma_is_refused() {
        assert!(loader_arg(Path::new("/tmp/a,b"), 0).is_err());
        assert_eq!(
            loader_arg(Path::new("/tmp/blob"), mps2::SHARD_AT).unwrap(),
            "loader,file=/tmp/blob,addr=0x21000000"
        );
    }

    #[test]
    fn an_f32_image_for_the_m3_is_refused_before_building() {
        let image = Image {
            core: Core::M3,
            f32: true,
            model: "mlp:784-32-10".into(),
            ram_kb: 128,
            overflow_probe: false,
        };
        assert!(matches!(image.build(), Err(QemuError::NoFpu)));
    }

    #[test]
    fn the_image_and_its_map_are_where_cargo_says() {
        let messages = concat!(
            r#"{"reason":"build-script-executed","package_id":"path+file:///x/fedcore#0.1.0","out_dir":"/t/fedcore/out"}"#,
            "\n",
            r#"{"reason":"build-script-executed","package_id":"path+file:///x/firmware#0.1.0","out_dir":"/t/fw/out"}"#,
            "\n",
            r#"{"reason":"compiler-artifact","package_id":"path+file:///x/firmware#0.1.0","executable":"/t/firmware"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        let built = Built::from_messages(messages).unwrap();
        assert_eq!(built.out_dir, PathBuf::from("/t/fw/out"));
        assert_eq!(built.executable, PathBuf::from("/t/firmware"));
        assert!(Built::from_messages(r#"{"reason":"build-finished"}"#).is_none());
    }

    #[test]
    fn sizes_come_from_the_maps_output_sections() {
        let map = "     VMA      LMA     Size Align Out     In      Symbol
       0        0      400     4 .vector_table
     400      400    16780     4 .text
   16b80    16b80     2948     8 .rodata
20000000    194c8        4     8 .data
20000008 20000008    16f40     8 .bss
20000118 20000118    16a20     4         foo.o:(.bss.ARENA)
20016f48 20016f48        0     4 .uninit
       0        0    660fd     1 .debug_loc
";
        let sizes = Sizes::from_map(map, 128 * 1024);
        assert_eq!(sizes.flash, 0x400 + 0x16780 + 0x2948 + 4);
        assert_eq!((sizes.data, sizes.bss), (4, 0x16f40));
        assert_eq!(sizes.stack(), 128 * 1024 - 4 - 0x16f40);
    }
}

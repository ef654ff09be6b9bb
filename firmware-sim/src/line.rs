//! The serial line a simulated device talks on: a pseudo-terminal pair (whose
//! other end a server opens like any serial port) or a real serial port.
//!
//! Both are set to raw mode (no echo, no line editing, 8 data bits) and
//! non-blocking, so [`crate::uart::SimUart`] can wait on them with `poll`.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::{OptionalActions, Termios};

/// Why a line could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// The pseudo-terminal could not be created.
    #[error("cannot create a pseudo-terminal: {0}")]
    Pty(io::Error),
    /// The serial port could not be opened or configured.
    #[error("cannot open serial port {path}: {source}")]
    Port {
        /// The port.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The stable link to the pseudo-terminal could not be made.
    #[error("cannot link {link} to the pseudo-terminal: {source}")]
    Link {
        /// The link's path.
        link: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Which line to serve on.
#[derive(Debug, Clone)]
pub enum LineChoice {
    /// A new pseudo-terminal, optionally with a stable symlink to it.
    Pty {
        /// The symlink's path.
        link: Option<PathBuf>,
    },
    /// A real serial port.
    Port {
        /// Its path.
        path: PathBuf,
        /// Its baud rate.
        baud: u32,
    },
}

/// An open serial line: the device's end, and what keeps the line up.
#[derive(Debug)]
pub struct Line {
    /// The device's end (the pty master, or the port).
    pub device: File,
    /// The path a server opens (the pty's slave side, or the port itself).
    pub path: PathBuf,
    /// A pty's slave side, held open so the line stays up while no server is
    /// attached (a master whose slave is closed fails every read).
    _keep: Option<OwnedFd>,
    /// A stable symlink to the pty, removed when the line is dropped.
    link: Option<PathBuf>,
}

impl Line {
    /// Opens the line `choice` names.
    pub fn open(choice: &LineChoice) -> Result<Self, LineError> {
        match choice {
            LineChoice::Pty { link } => Line::pty(link.as_deref()),
            LineChoice::Port { path, baud } => Line::port(path, *baud),
        }
    }

    /// A new pseudo-terminal pair; with `link`, a symlink at that path points at
    /// its slave side (a stable name across restarts, like /dev/serial/by-id).
    pub fn pty(link: Option<&Path>) -> Result<Self, LineError> {
        let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)
            .map_err(|e| LineError::Pty(e.into()))?;
        rustix::pty::grantpt(&master).map_err(|e| LineError::Pty(e.into()))?;
        rustix::pty::unlockpt(&master).map_err(|e| LineError::Pty(e.into()))?;
        let name =
            rustix::pty::ptsname(&master, Vec::new()).map_err(|e| LineError::Pty(e.into()))?;
        let path = PathBuf::from(name.to_string_lossy().into_owned());
        let slave = rustix::fs::open(&path, OFlags::RDWR | OFlags::NOCTTY, Mode::empty())
            .map_err(|e| LineError::Pty(e.into()))?;
        make_raw(&slave, None).map_err(LineError::Pty)?;
        rustix::fs::fcntl_setfl(&master, OFlags::NONBLOCK).map_err(|e| LineError::Pty(e.into()))?;
        let link = match link {
            Some(link) => {
                replace_symlink(&path, link).map_err(|source| LineError::Link {
                    link: link.to_path_buf(),
                    source,
                })?;
                Some(link.to_path_buf())
            }
            None => None,
        };
        Ok(Line {
            device: File::from(master),
            path,
            _keep: Some(slave),
            link,
        })
    }

    /// A real serial port at `baud`, raw, 8N1.
    pub fn port(path: &Path, baud: u32) -> Result<Self, LineError> {
        let failed = |source: io::Error| LineError::Port {
            path: path.to_path_buf(),
            source,
        };
        let fd = rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| failed(e.into()))?;
        make_raw(&fd, Some(baud)).map_err(failed)?;
        Ok(Line {
            device: File::from(fd),
            path: path.to_path_buf(),
            _keep: None,
            link: None,
        })
    }

    /// The name to give a server: the stable link if there is one, else the path.
    pub fn name(&self) -> &Path {
        self.link.as_deref().unwrap_or(&self.path)
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        // Remove the stable link only while it still points at this line (a
        // newer simulator may have taken the name over).
        if let Some(link) = &self.link
            && std::fs::read_link(link).is_ok_and(|target| target == self.path)
        {
            let _ = std::fs::remove_file(link);
        }
    }
}

fn make_raw(fd: &OwnedFd, baud: Option<u32>) -> io::Result<()> {
    let mut termios: Termios = rustix::termios::tcgetattr(fd)?;
    termios.make_raw();
    if let Some(baud) = baud {
        termios.set_speed(baud)?;
    }
    rustix::termios::tcsetattr(fd, OptionalActions::Now, &termios)?;
    Ok(())
}

/// Points `link` at `target`, replacing what was there in one step.
fn replace_symlink(target: &Path, link: &Path) -> io::Result<()> {
    let mut tmp = link.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn bytes_cross_a_pty_pair_unchanged() {
        let mut line = Line::pty(None).unwrap();
        let mut server = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&line.path)
            .unwrap();
        // Raw mode: control bytes and zeros pass as they are, nothing is echoed.
        let bytes: Vec<u8> = (0..=255).collect();
        server.write_all(&bytes).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        for _ in 0..1000 {
            match line.device.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
            if got.len() == bytes.len() {
                break;
            }
        }
        assert_eq!(got, bytes);
    }

    #[test]
    fn a_stable_link_follows_the_newest_pty_and_goes_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("device0");
        let first = Line::pty(Some(&link)).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), first.path);
        let second = Line::pty(Some(&link)).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), second.path);
        drop(first);
        assert!(
            link.exists(),
            "the older line must not remove the newer one's link"
        );
        drop(second);
        assert!(std::fs::symlink_metadata(&link).is_err());
    }
}

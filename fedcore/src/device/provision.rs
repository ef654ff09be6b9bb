//! A board's provisioning record: what differs between two boards that run
//! the same image (its name, and the key it proves it holds when the server
//! admits by key), written by a host tool into a memory region the firmware
//! reads at boot, the way a factory writes a device's configuration page.
//!
//! Layout, little-endian: the magic `FEDBOARD`; version (u16, 1); name length
//! (u16, 1 to [`Provision::MAX_NAME`]); key length (u16, 0 for none, else
//! [`MIN_KEY_BYTES`] to [`MAX_KEY_BYTES`]); the name (UTF-8); the key; the
//! CRC-32 (ISO-HDLC, as the frames and shard blobs use) of everything from
//! the version to the end of the key (u32). Bytes after it are ignored.

use crate::Error;
use crate::protocol::auth::{MAX_KEY_BYTES, MIN_KEY_BYTES};

const MAX_NAME: usize = 64;
const HEADER: usize = 8 + 2 + 2 + 2;
const MAX_LEN: usize = HEADER + MAX_NAME + MAX_KEY_BYTES + 4;

/// Where the MPS2 boards (QEMU's mps2-an385 and mps2-an386) keep what a
/// loader places before reset: the firmware reads there, and the host
/// runner loads there (`-device loader`).
pub mod mps2 {
    /// The provisioning record, in block RAM (standing for a configuration page of flash).
    pub const PROVISION_AT: usize = 0x0100_0000;
    /// The shard blob, in PSRAM (standing for external flash; outside the RAM budget).
    pub const SHARD_AT: usize = 0x2100_0000;
    /// The largest shard blob that fits there.
    pub const SHARD_MAX: usize = 16 << 20;
}

/// What one board is provisioned with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Provision<'a> {
    /// The name the board says hello with.
    pub name: &'a str,
    /// The key it proves it holds, if it was given one.
    pub key: Option<&'a [u8]>,
}

impl<'a> Provision<'a> {
    /// The longest name a record holds, in bytes.
    pub const MAX_NAME: usize = MAX_NAME;
    /// The largest record, in bytes.
    pub const MAX_LEN: usize = MAX_LEN;
    const MAGIC: &'static [u8; 8] = b"FEDBOARD";
    const VERSION: u16 = 1;
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

    /// Writes the record into `out`, returning its length; refuses a name
    /// that is empty or longer than [`Self::MAX_NAME`], or a key of a length
    /// admission does not take.
    pub fn write(&self, out: &mut [u8; MAX_LEN]) -> Result<usize, Error> {
        let name = self.name.as_bytes();
        let key = self.key.unwrap_or(&[]);
        if self.key.is_some_and(<[u8]>::is_empty) {
            return Err(Error::BadProvision("the key must have 16 to 64 bytes"));
        }
        check_lengths(name.len(), key.len())?;
        let end = HEADER + name.len() + key.len();
        out[..8].copy_from_slice(Self::MAGIC);
        out[8..10].copy_from_slice(&Self::VERSION.to_le_bytes());
        out[10..12].copy_from_slice(&(name.len() as u16).to_le_bytes());
        out[12..14].copy_from_slice(&(key.len() as u16).to_le_bytes());
        out[HEADER..HEADER + name.len()].copy_from_slice(name);
        out[HEADER + name.len()..end].copy_from_slice(key);
        let crc = Self::CRC.checksum(&out[8..end]);
        out[end..end + 4].copy_from_slice(&crc.to_le_bytes());
        Ok(end + 4)
    }

    /// Reads a record, checking its magic, version, lengths and checksum.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        if bytes.get(..8) != Some(Self::MAGIC.as_slice()) {
            return Err(Error::BadProvision(
                "no FEDBOARD magic: the board is not provisioned",
            ));
        }
        let u16_at = |i: usize| -> Result<usize, Error> {
            bytes
                .get(i..i + 2)
                .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
                .ok_or(Error::BadProvision("cut short"))
        };
        if u16_at(8)? != usize::from(Self::VERSION) {
            return Err(Error::BadProvision("a version this firmware does not read"));
        }
        let (name_len, key_len) = (u16_at(10)?, u16_at(12)?);
        check_lengths(name_len, key_len)?;
        let end = HEADER + name_len + key_len;
        let stored = bytes
            .get(end..end + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(Error::BadProvision("cut short"))?;
        if Self::CRC.checksum(&bytes[8..end]) != stored {
            return Err(Error::BadProvision(
                "its checksum does not match: write it again",
            ));
        }
        let name = core::str::from_utf8(&bytes[HEADER..HEADER + name_len])
            .map_err(|_| Error::BadProvision("the name is not UTF-8"))?;
        let key = (key_len > 0).then(|| &bytes[HEADER + name_len..end]);
        Ok(Provision { name, key })
    }
}

/// The lengths a record may hold: a name of 1 to [`MAX_NAME`] bytes, and no
/// key (0) or one that admission takes.
fn check_lengths(name: usize, key: usize) -> Result<(), Error> {
    if name == 0 || name > MAX_NAME {
        return Err(Error::BadProvision("the name must have 1 to 64 bytes"));
    }
    if key != 0 && !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key) {
        return Err(Error::BadProvision("the key must have 16 to 64 bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_record_reads_back() {
        let mut out = [0u8; Provision::MAX_LEN];
        let len = Provision {
            name: "qemu-m3-0",
            key: None,
        }
        .write(&mut out)
        .unwrap();
        assert_eq!(len, 14 + 9 + 4);
        assert_eq!(
            Provision::parse(&out).unwrap(),
            Provision {
                name: "qemu-m3-0",
                key: None
            }
        );
        let key = [7u8; 32];
        let keyed = Provision {
            name: "qemu-m3-0",
            key: Some(&key),
        };
        keyed.write(&mut out).unwrap();
        assert_eq!(Provision::parse(&out).unwrap(), keyed);
    }

    #[test]
    fn damaged_or_missing_records_are_refused() {
        let mut out = [0u8; Provision::MAX_LEN];
        let len = Provision {
            name: "board",
            key: None,
        }
        .write(&mut out)
        .unwrap();
        let mut flipped = out;
        flipped[15] ^= 1;
        assert!(matches!(
            Provision::parse(&flipped),
            Err(Error::BadProvision(_))
        ));
        assert!(Provision::parse(&out[..len - 1]).is_err());
        assert!(Provision::parse(&[0u8; 32]).is_err());
        let mut long = out;
        long[10..12].copy_from_slice(&1000u16.to_le_bytes());
        assert!(Provision::parse(&long).is_err());
    }

    #[test]
    fn names_must_fit() {
        let mut out = [0u8; Provision::MAX_LEN];
        let named = |name: &'static str| Provision { name, key: None };
        assert!(named("").write(&mut out).is_err());
        let long: &'static str = "x".repeat(Provision::MAX_NAME + 1).leak();
        assert!(named(long).write(&mut out).is_err());
        let short_key = Provision {
            name: "board",
            key: Some(&[1; 8]),
        };
        assert!(short_key.write(&mut out).is_err());
        let most: &'static str = "x".repeat(Provision::MAX_NAME).leak();
        let key = [2u8; 64];
        let largest = Provision {
            name: most,
            key: Some(&key),
        };
        assert_eq!(largest.write(&mut out).unwrap(), Provision::MAX_LEN);
    }
}

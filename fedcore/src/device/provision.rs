//! A board's provisioning record: what differs between two boards that run
//! the same image (today its name), written by a host tool into a memory
//! region the firmware reads at boot, the way a factory writes a device's
//! configuration page.
//!
//! Layout, little-endian: the magic `FEDBOARD`; version (u16, 1); name length
//! (u16, at most [`Provision::MAX_NAME`]); the name (UTF-8); the CRC-32
//! (ISO-HDLC, as the frames and shard blobs use) of everything from the
//! version to the end of the name (u32). Bytes after it are ignored.

use crate::Error;

const MAX_NAME: usize = 64;
const MAX_LEN: usize = 8 + 2 + 2 + MAX_NAME + 4;

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
    /// that is empty or longer than [`Self::MAX_NAME`].
    pub fn write(&self, out: &mut [u8; MAX_LEN]) -> Result<usize, Error> {
        let name = self.name.as_bytes();
        if name.is_empty() || name.len() > Self::MAX_NAME {
            return Err(Error::BadProvision("the name must have 1 to 64 bytes"));
        }
        let end = 12 + name.len();
        out[..8].copy_from_slice(Self::MAGIC);
        out[8..10].copy_from_slice(&Self::VERSION.to_le_bytes());
        out[10..12].copy_from_slice(&(name.len() as u16).to_le_bytes());
        out[12..end].copy_from_slice(name);
        let crc = Self::CRC.checksum(&out[8..end]);
        out[end..end + 4].copy_from_slice(&crc.to_le_bytes());
        Ok(end + 4)
    }

    /// Reads a record, checking its magic, version, length and checksum.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        if bytes.get(..8) != Some(Self::MAGIC.as_slice()) {
            return Err(Error::BadProvision(
                "no FEDBOARD magic: the board is not provisioned",
            ));
        }
        let u16_at = |i: usize| -> Result<u16, Error> {
            bytes
                .get(i..i + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .ok_or(Error::BadProvision("cut short"))
        };
        if u16_at(8)? != Self::VERSION {
            return Err(Error::BadProvision("a version this firmware does not read"));
        }
        let len = usize::from(u16_at(10)?);
        if len == 0 || len > Self::MAX_NAME {
            return Err(Error::BadProvision("the name must have 1 to 64 bytes"));
        }
        let end = 12 + len;
        let stored = bytes
            .get(end..end + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(Error::BadProvision("cut short"))?;
        if Self::CRC.checksum(&bytes[8..end]) != stored {
            return Err(Error::BadProvision(
                "its checksum does not match: write it again",
            ));
        }
        let name = core::str::from_utf8(&bytes[12..end])
            .map_err(|_| Error::BadProvision("the name is not UTF-8"))?;
        Ok(Provision { name })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_record_reads_back() {
        let mut out = [0u8; Provision::MAX_LEN];
        let len = Provision { name: "qemu-m3-0" }.write(&mut out).unwrap();
        assert_eq!(len, 12 + 9 + 4);
        assert_eq!(Provision::parse(&out).unwrap().name, "qemu-m3-0");
    }

    #[test]
    fn damaged_or_missing_records_are_refused() {
        let mut out = [0u8; Provision::MAX_LEN];
        let len = Provision { name: "board" }.write(&mut out).unwrap();
        let mut flipped = out;
        flipped[13] ^= 1;
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
        assert!(Provision { name: "" }.write(&mut out).is_err());
        let long = "x".repeat(Provision::MAX_NAME + 1);
        assert!(Provision { name: &long }.write(&mut out).is_err());
        let most = "x".repeat(Provision::MAX_NAME);
        assert_eq!(
            Provision { name: &most }.write(&mut out).unwrap(),
            Provision::MAX_LEN
        );
    }
}

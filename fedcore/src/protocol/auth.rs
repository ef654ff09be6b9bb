//! Admission by key: the challenge a server sends after a hello and the proof
//! a participant answers with, so that only holders of the federation's key
//! (or of their own name's key) join, and the key never crosses the wire.
//!
//! The proof is HMAC-SHA256 (RustCrypto's `hmac` and `sha2`, both `no_std`)
//! keyed with the shared secret, over the server's fresh 32-byte nonce, the
//! protocol version and the participant's name. A captured proof is worth
//! nothing on another connection (another nonce), nor under another name.
//! Checking is constant-time (`Mac::verify_slice`).
//!
//! What it costs a device: the nonce and the proof are 32 bytes each inside
//! frames it already has; computing the proof takes an HMAC state on the
//! stack (about 0.4 KB) once per join; the key is read from where the board
//! keeps it.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bytes of a challenge's nonce and of a proof.
pub const NONCE_BYTES: usize = 32;
/// The shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 16;
/// The longest key accepted, in bytes (one SHA-256 block).
pub const MAX_KEY_BYTES: usize = 64;

/// Server → participant, after its hello: prove you hold the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// Fresh random bytes for this connection.
    pub nonce: [u8; NONCE_BYTES],
}

/// Participant → server: HMAC-SHA256 over the challenge, version and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// The MAC.
    pub mac: [u8; NONCE_BYTES],
}

fn mac(key: &[u8], nonce: &[u8; NONCE_BYTES], version: u16, name: &str) -> Hmac<Sha256> {
    // HMAC zero-pads a key to the hash's 64-byte block (hashing a longer one
    // first); done here so that keying is infallible (`KeyInit::new`).
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut mac = <Hmac<Sha256> as KeyInit>::new(&block.into());
    mac.update(b"fedcore admission v1");
    mac.update(nonce);
    mac.update(&version.to_le_bytes());
    mac.update(&(name.len() as u32).to_le_bytes());
    mac.update(name.as_bytes());
    mac
}

/// The proof that `name`, speaking protocol `version`, holds `key`.
pub fn prove(key: &[u8], challenge: &Challenge, version: u16, name: &str) -> Proof {
    let bytes = mac(key, &challenge.nonce, version, name)
        .finalize()
        .into_bytes();
    let mut proof = Proof {
        mac: [0; NONCE_BYTES],
    };
    proof.mac.copy_from_slice(&bytes);
    proof
}

/// Whether `proof` shows that `name`, speaking `version`, holds `key`
/// (compared in constant time).
pub fn verify(key: &[u8], challenge: &Challenge, version: u16, name: &str, proof: &Proof) -> bool {
    mac(key, &challenge.nonce, version, name)
        .verify_slice(&proof.mac)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn challenge(fill: u8) -> Challenge {
        Challenge {
            nonce: [fill; NONCE_BYTES],
        }
    }

    #[test]
    fn a_proof_verifies_only_for_its_key_nonce_version_and_name() {
        let c = challenge(7);
        let proof = prove(KEY, &c, 5, "client");
        assert!(verify(KEY, &c, 5, "client", &proof));
        assert!(!verify(
            b"another key of 32 bytes, or so..",
            &c,
            5,
            "client",
            &proof
        ));
        // A replay on another connection meets another nonce.
        assert!(!verify(KEY, &challenge(8), 5, "client", &proof));
        assert!(!verify(KEY, &c, 4, "client", &proof));
        assert!(!verify(KEY, &c, 5, "client2", &proof));
        let mut flipped = proof;
        flipped.mac[0] ^= 1;
        assert!(!verify(KEY, &c, 5, "client", &flipped));
    }

    #[test]
    fn it_is_rfc_2104_hmac_whatever_the_keys_length() {
        // The padding done by hand gives what the hmac crate gives from the raw key.
        for key in [&KEY[..16], KEY, &[9u8; 64][..], &[3u8; 100][..]] {
            let c = challenge(2);
            let mut reference = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
            reference.update(b"fedcore admission v1");
            reference.update(&c.nonce);
            reference.update(&5u16.to_le_bytes());
            reference.update(&1u32.to_le_bytes());
            reference.update(b"x");
            let reference = reference.finalize().into_bytes();
            assert_eq!(prove(key, &c, 5, "x").mac[..], reference[..]);
        }
    }

    #[test]
    fn names_are_length_prefixed_so_they_cannot_borrow_the_versions_bytes() {
        let c = challenge(1);
        assert_ne!(prove(KEY, &c, 5, "ab"), prove(KEY, &c, 5, "a"));
    }
}

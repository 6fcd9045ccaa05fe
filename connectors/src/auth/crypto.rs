//! The hashing and signing every credential check shares: HMAC-SHA256,
//! constant-time comparison, hex.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub(super) fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        // Invariant: HMAC takes keys of any length; an empty signature never verifies.
        Err(_) => Vec::new(),
    }
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hex SHA-256 of an API key, as configured in `auth.api_keys`.
pub fn hash_api_key(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

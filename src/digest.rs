//! Lower-case hex and SHA-256 (ring): the one spelling of dataset identities, random ids,
//! manifest and model hashes, job fingerprints, privacy units' keyed identities, token ids and Ed25519 keys and signatures.
//! Hex goes through the `hex` crate both ways, so text that is not hex (odd length, a
//! non-hex or non-ASCII character) is an error, never a panic.

/// A privacy unit's identity inside its tenant: HMAC-SHA256 of the unit's canonical form under
/// the tenant's secret (computed by `train::units`, kept by the store's unit classes).
pub type UnitId = [u8; 32];

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// The bytes of `text` read as hex (either case). Odd length, non-hex and non-ASCII characters
/// are errors.
pub fn from_hex(text: &str) -> Result<Vec<u8>, hex::FromHexError> {
    hex::decode(text)
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }

    #[test]
    fn from_hex_reads_either_case_and_refuses_what_is_not_hex() {
        assert_eq!(from_hex("000fA5fF").unwrap(), [0x00, 0x0f, 0xa5, 0xff]);
        assert_eq!(from_hex("").unwrap(), Vec::<u8>::new());
        for bad in ["abc", "zz", "é0", "0é", "ü", "éé", "\u{1F600}0", " 0a"] {
            assert!(from_hex(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sha256_of_abc_is_the_fips_vector() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}

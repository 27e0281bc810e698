//! The one hash trainwatch stores: FNV-1a (64 bit), by the `fnv` crate. Plain text files are
//! known by the hash of their first 4 KiB ([`crate::source::text`]), alerts by the hash of
//! their labels ([`crate::derive::alerts::fingerprint`]); both are stored, so the function
//! may never change. Not a security boundary.

use std::hash::Hasher;

/// FNV-1a of `data`.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(data);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_values_stay_the_same() {
        // The published FNV-1a 64 test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}

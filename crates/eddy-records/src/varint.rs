//! Kafka's variable-length integers (zigzag-encoded, 7 bits a byte, low group first), as the
//! records inside a batch use them for lengths, deltas and counts.

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VarintError {
    /// The bytes end inside it.
    #[error("truncated varint")]
    Truncated,
    /// More than the 10 bytes a 64-bit value takes.
    #[error("varint longer than 10 bytes")]
    TooLong,
}

/// Append `v` as a zigzag varint.
#[inline]
pub fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        if z < 0x80 {
            out.push(z as u8);
            return;
        }
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
}

/// Read a zigzag varint (up to 64 bits) off the front of `b`, which is moved past it.
#[inline]
pub fn get_varint(b: &mut &[u8]) -> Result<i64, VarintError> {
    let mut z: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first().ok_or(VarintError::Truncated)?;
        *b = rest;
        z |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
        }
    }
    Err(VarintError::TooLong)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        let mut min = vec![0xff; 9];
        min.push(0x01);
        for (v, want) in [
            (0i64, vec![0u8]),
            (-1, vec![1]),
            (1, vec![2]),
            (63, vec![0x7e]),
            (-64, vec![0x7f]),
            (64, vec![0x80, 0x01]),
            (i64::MIN, min),
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out, want, "{v}");
        }
    }

    #[test]
    fn damage_is_an_error() {
        assert_eq!(get_varint(&mut &[][..]), Err(VarintError::Truncated));
        assert_eq!(get_varint(&mut &[0x80][..]), Err(VarintError::Truncated));
        assert_eq!(get_varint(&mut &[0x80; 11][..]), Err(VarintError::TooLong));
    }

    proptest! {
        #[test]
        fn round_trip(v: i64, tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            out.extend_from_slice(&tail);
            let mut b = &out[..];
            prop_assert_eq!(get_varint(&mut b), Ok(v));
            prop_assert_eq!(b, &tail[..]);
        }
    }
}

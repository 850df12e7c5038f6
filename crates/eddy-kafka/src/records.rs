//! Kafka record batches (magic 2) as clients send them: split, validated, and the two fields
//! the broker owns (base offset, partition leader epoch) patched on the way out.
//!
//! Layout of a batch header (big endian), from Kafka's `DefaultRecordBatch`:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | baseOffset |
//! | 8..12 | batchLength (bytes after this field) |
//! | 12..16 | partitionLeaderEpoch |
//! | 16 | magic (2) |
//! | 17..21 | crc32c of bytes 21.. |
//! | 21..23 | attributes (compression in bits 0-2, transactional bit 4, control bit 5) |
//! | 23..27 | lastOffsetDelta |
//! | 27..35 | baseTimestamp |
//! | 35..43 | maxTimestamp |
//! | 43..51 | producerId |
//! | 51..53 | producerEpoch |
//! | 53..57 | baseSequence |
//! | 57..61 | records count |
//!
//! The CRC does not cover the base offset or the leader epoch, so the broker may rewrite them
//! without touching the records, which stay compressed as the producer sent them.

/// Bytes of a batch header.
pub const HEADER: usize = 61;

/// Why a batch was refused (Kafka's CORRUPT_MESSAGE / INVALID_RECORD family).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BatchError {
    /// Fewer bytes than a header, or a length that runs past the data.
    #[error("record batch truncated: {0}")]
    Truncated(String),
    /// Not message format v2.
    #[error("record batch magic {0} is not supported (only 2)")]
    Magic(i8),
    /// CRC mismatch.
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    /// Counts that contradict each other.
    #[error("record batch is inconsistent: {0}")]
    Invalid(String),
}

/// What the broker needs to know of a validated batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchInfo {
    /// Records in the batch (lastOffsetDelta + 1).
    pub record_count: u32,
    /// The batch's max timestamp.
    pub max_timestamp: i64,
    /// Producer id (-1 when not idempotent).
    pub producer_id: i64,
    /// Producer epoch.
    pub producer_epoch: i16,
    /// Sequence of the first record (-1 when not idempotent).
    pub base_sequence: i32,
    /// Part of a transaction.
    pub transactional: bool,
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(x)
}

/// Split a produce request's records into batches, validating each (sizes before anything is
/// trusted, then magic and CRC).
pub fn split_batches(records: &[u8]) -> Result<Vec<(&[u8], BatchInfo)>, BatchError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < records.len() {
        let rest = &records[at..];
        if rest.len() < HEADER {
            return Err(BatchError::Truncated(format!(
                "{} bytes left, a batch header is {HEADER}",
                rest.len()
            )));
        }
        let len = be_i32(rest, 8);
        let total = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_add(12))
            .filter(|t| *t >= HEADER)
            .ok_or_else(|| BatchError::Invalid(format!("batch length {len}")))?;
        if total > rest.len() {
            return Err(BatchError::Truncated(format!(
                "batch length {len} runs past the {} bytes sent",
                rest.len()
            )));
        }
        let batch = &rest[..total];
        out.push((batch, validate(batch)?));
        at += total;
    }
    if out.is_empty() {
        return Err(BatchError::Invalid("no record batch".into()));
    }
    Ok(out)
}

/// Validate one whole batch.
pub fn validate(batch: &[u8]) -> Result<BatchInfo, BatchError> {
    if batch.len() < HEADER {
        return Err(BatchError::Truncated(format!("{} bytes", batch.len())));
    }
    let magic = batch[16] as i8;
    if magic != 2 {
        return Err(BatchError::Magic(magic));
    }
    let stored = u32::from_be_bytes([batch[17], batch[18], batch[19], batch[20]]);
    let computed = crc32c::crc32c(&batch[21..]);
    if stored != computed {
        return Err(BatchError::Crc { stored, computed });
    }
    let last_delta = be_i32(batch, 23);
    let count = be_i32(batch, 57);
    if last_delta < 0 || count < 0 || count > last_delta.saturating_add(1) {
        return Err(BatchError::Invalid(format!(
            "lastOffsetDelta {last_delta} with {count} records"
        )));
    }
    let attributes = i16::from_be_bytes([batch[21], batch[22]]);
    if attributes & 0x07 > 4 {
        return Err(BatchError::Invalid(format!(
            "compression codec {} is unknown",
            attributes & 0x07
        )));
    }
    Ok(BatchInfo {
        record_count: last_delta as u32 + 1,
        max_timestamp: be_i64(batch, 35),
        producer_id: be_i64(batch, 43),
        producer_epoch: i16::from_be_bytes([batch[51], batch[52]]),
        base_sequence: be_i32(batch, 53),
        transactional: attributes & 0x10 != 0,
    })
}

/// Write the broker-assigned base offset (and leader epoch 0) into a stored batch.
pub fn patch_for_fetch(batch: &mut [u8], base_offset: u64) {
    if batch.len() >= HEADER {
        batch[0..8].copy_from_slice(&(base_offset as i64).to_be_bytes());
        batch[12..16].copy_from_slice(&0i32.to_be_bytes());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid uncompressed batch with `n` records of the given value.
    pub fn batch(n: i32, value: &[u8]) -> Vec<u8> {
        let mut records = Vec::new();
        for i in 0..n {
            let mut r = Vec::new();
            r.push(0u8); // attributes
            put_varint(&mut r, 0); // timestamp delta
            put_varint(&mut r, i as i64); // offset delta
            put_varint(&mut r, -1); // key: null
            put_varint(&mut r, value.len() as i64);
            r.extend_from_slice(value);
            put_varint(&mut r, 0); // headers
            put_varint(&mut records, r.len() as i64);
            records.extend_from_slice(&r);
        }
        let mut b = vec![0u8; HEADER];
        b[16] = 2;
        b[23..27].copy_from_slice(&(n - 1).to_be_bytes());
        b[27..35].copy_from_slice(&1_700_000_000_000i64.to_be_bytes());
        b[35..43].copy_from_slice(&1_700_000_000_000i64.to_be_bytes());
        b[43..51].copy_from_slice(&(-1i64).to_be_bytes());
        b[51..53].copy_from_slice(&(-1i16).to_be_bytes());
        b[53..57].copy_from_slice(&(-1i32).to_be_bytes());
        b[57..61].copy_from_slice(&n.to_be_bytes());
        b.extend_from_slice(&records);
        let len = (b.len() - 12) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn put_varint(out: &mut Vec<u8>, v: i64) {
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

    #[test]
    fn valid_batches_split_and_describe_themselves() {
        let mut two = batch(3, b"abc");
        two.extend_from_slice(&batch(1, b"z"));
        let got = split_batches(&two).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1.record_count, 3);
        assert_eq!(got[1].1.record_count, 1);
        assert_eq!(got[0].1.producer_id, -1);
    }

    #[test]
    fn corrupt_batches_are_refused_by_kind() {
        let good = batch(2, b"hello");
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(
            split_batches(&flipped),
            Err(BatchError::Crc { .. })
        ));
        let mut magic = good.clone();
        magic[16] = 1;
        assert_eq!(split_batches(&magic), Err(BatchError::Magic(1)));
        assert!(matches!(
            split_batches(&good[..good.len() - 1]),
            Err(BatchError::Truncated(_))
        ));
        let mut huge = good.clone();
        huge[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(
            split_batches(&huge),
            Err(BatchError::Truncated(_))
        ));
        let mut negative = good.clone();
        negative[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(
            split_batches(&negative),
            Err(BatchError::Invalid(_))
        ));
        assert!(split_batches(&[]).is_err());
        assert!(matches!(
            split_batches(&good[..20]),
            Err(BatchError::Truncated(_))
        ));
    }

    #[test]
    fn patching_keeps_the_crc_valid() {
        let mut b = batch(2, b"x");
        patch_for_fetch(&mut b, 12345);
        assert_eq!(be_i64(&b, 0), 12345);
        assert!(validate(&b).is_ok());
    }
}

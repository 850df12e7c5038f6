//! The record batch as a whole: its header, read and written through a typed view
//! ([`BatchHeader`]), and the checks a batch passes before it is stored ([`split_batches`],
//! [`validate`]) and the patch it gets when it is served ([`patch_for_fetch`]).
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
//!
//! These offsets are written down once, in `at` below; everything else, in this crate and
//! outside it, goes through [`BatchHeader`].

/// Bytes of a batch header.
pub const HEADER: usize = at::RECORD_COUNT + 4;
/// Bytes of a batch before the part its length counts: base offset and batch length (Kafka's
/// `LOG_OVERHEAD`).
pub const LOG_OVERHEAD: usize = at::LEADER_EPOCH;

/// Where each header field starts.
mod at {
    pub const BASE_OFFSET: usize = 0;
    pub const LENGTH: usize = 8;
    pub const LEADER_EPOCH: usize = 12;
    pub const MAGIC: usize = 16;
    pub const CRC: usize = 17;
    /// Also where the part the CRC covers begins.
    pub const ATTRIBUTES: usize = 21;
    pub const LAST_OFFSET_DELTA: usize = 23;
    pub const BASE_TIMESTAMP: usize = 27;
    pub const MAX_TIMESTAMP: usize = 35;
    pub const PRODUCER_ID: usize = 43;
    pub const PRODUCER_EPOCH: usize = 51;
    pub const BASE_SEQUENCE: usize = 53;
    pub const RECORD_COUNT: usize = 57;
}

/// Attributes bits 0–2: the compression codec (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
const COMPRESSION_MASK: i16 = 0x07;
/// Attributes bit 4: part of a transaction.
const TRANSACTIONAL: i16 = 0x10;
/// Attributes bit 5: a control batch (transaction markers).
const CONTROL: i16 = 0x20;

/// A typed view over the header of a record batch, without a copy: `B` is the batch's bytes
/// (`&[u8]` to read, `&mut [u8]` or `&mut Vec<u8>` to write too), at least [`HEADER`] of them.
/// The view spans the whole batch, since the CRC covers the records as well.
#[derive(Debug, Clone, Copy)]
pub struct BatchHeader<B>(B);

impl<B: AsRef<[u8]>> BatchHeader<B> {
    /// The view over `batch`; None if it is shorter than a header.
    #[inline]
    pub fn new(batch: B) -> Option<Self> {
        (batch.as_ref().len() >= HEADER).then_some(BatchHeader(batch))
    }

    #[inline]
    fn array<const N: usize>(&self, at: usize) -> [u8; N] {
        self.0.as_ref()[at..at + N]
            .try_into()
            .expect("a field inside the header")
    }

    /// The CRC32C of the part of the batch its CRC field covers (attributes to the end).
    #[inline]
    pub fn computed_crc(&self) -> u32 {
        crc32c::crc32c(&self.0.as_ref()[at::ATTRIBUTES..])
    }

    /// The compression codec (attributes bits 0–2).
    #[inline]
    pub fn compression(&self) -> i16 {
        self.attributes() & COMPRESSION_MASK
    }

    /// Part of a transaction (attributes bit 4).
    #[inline]
    pub fn is_transactional(&self) -> bool {
        self.attributes() & TRANSACTIONAL != 0
    }

    /// A control batch (attributes bit 5: transaction markers, never shown to consumers).
    #[inline]
    pub fn is_control(&self) -> bool {
        self.attributes() & CONTROL != 0
    }
}

impl BatchHeader<&[u8]> {
    /// The base offset and batch length, from the first [`LOG_OVERHEAD`] bytes of a batch
    /// (which may be cut short, as at the end of a fetch response); None if fewer.
    #[inline]
    pub fn peek(prefix: &[u8]) -> Option<(i64, i32)> {
        let base = prefix.get(at::BASE_OFFSET..at::BASE_OFFSET + 8)?;
        let len = prefix.get(at::LENGTH..at::LENGTH + 4)?;
        Some((
            i64::from_be_bytes(base.try_into().ok()?),
            i32::from_be_bytes(len.try_into().ok()?),
        ))
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> BatchHeader<B> {
    #[inline]
    fn put<const N: usize>(&mut self, at: usize, v: [u8; N]) {
        self.0.as_mut()[at..at + N].copy_from_slice(&v);
    }

    /// Write the CRC of the batch as it now is.
    #[inline]
    pub fn update_crc(&mut self) {
        let crc = self.computed_crc();
        self.set_crc(crc);
    }
}

/// A getter and a setter per header field, each at its offset in `at`.
macro_rules! fields {
    ($($(#[$doc:meta])* $get:ident, $set:ident: $ty:ty = $at:expr;)*) => {
        impl<B: AsRef<[u8]>> BatchHeader<B> {
            $(
                $(#[$doc])*
                #[inline]
                pub fn $get(&self) -> $ty {
                    <$ty>::from_be_bytes(self.array($at))
                }
            )*
        }
        impl<B: AsRef<[u8]> + AsMut<[u8]>> BatchHeader<B> {
            $(
                #[doc = concat!("Write `", stringify!($get), "`.")]
                #[inline]
                pub fn $set(&mut self, v: $ty) {
                    self.put(($at), v.to_be_bytes());
                }
            )*
        }
    };
}

fields! {
    /// baseOffset: as the producer sent it in a stored batch (the log knows the real one).
    base_offset, set_base_offset: i64 = at::BASE_OFFSET;
    /// batchLength: bytes of the batch after this field.
    batch_length, set_batch_length: i32 = at::LENGTH;
    /// partitionLeaderEpoch.
    partition_leader_epoch, set_partition_leader_epoch: i32 = at::LEADER_EPOCH;
    /// magic: the message format (2).
    magic, set_magic: i8 = at::MAGIC;
    /// The stored CRC32C of the bytes from the attributes to the end.
    crc, set_crc: u32 = at::CRC;
    /// attributes: compression, timestamp type, transactional, control.
    attributes, set_attributes: i16 = at::ATTRIBUTES;
    /// lastOffsetDelta: the offset of the last record relative to the base.
    last_offset_delta, set_last_offset_delta: i32 = at::LAST_OFFSET_DELTA;
    /// baseTimestamp: the first record's timestamp (ms), the base of the records' deltas.
    base_timestamp, set_base_timestamp: i64 = at::BASE_TIMESTAMP;
    /// maxTimestamp: the largest record timestamp (ms).
    max_timestamp, set_max_timestamp: i64 = at::MAX_TIMESTAMP;
    /// producerId (-1 when not idempotent).
    producer_id, set_producer_id: i64 = at::PRODUCER_ID;
    /// producerEpoch.
    producer_epoch, set_producer_epoch: i16 = at::PRODUCER_EPOCH;
    /// baseSequence: the sequence of the first record (-1 when not idempotent).
    base_sequence, set_base_sequence: i32 = at::BASE_SEQUENCE;
    /// The records count as the batch states it (not checked against the records).
    record_count, set_record_count: i32 = at::RECORD_COUNT;
}

/// Attributes bit 5: a control batch (transaction markers), never shown to consumers. False
/// for fewer bytes than a header.
pub fn is_control(batch: &[u8]) -> bool {
    BatchHeader::new(batch).is_some_and(|h| h.is_control())
}

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
    Crc {
        /// The CRC the batch carries.
        stored: u32,
        /// The CRC of its bytes.
        computed: u32,
    },
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

/// Split a produce request's records into batches, validating each (sizes before anything is
/// trusted, then magic and CRC).
pub fn split_batches(records: &[u8]) -> Result<Vec<(&[u8], BatchInfo)>, BatchError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < records.len() {
        let rest = &records[at..];
        let Some(h) = BatchHeader::new(rest) else {
            return Err(BatchError::Truncated(format!(
                "{} bytes left, a batch header is {HEADER}",
                rest.len()
            )));
        };
        let len = h.batch_length();
        let total = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_add(LOG_OVERHEAD))
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
    let Some(h) = BatchHeader::new(batch) else {
        return Err(BatchError::Truncated(format!("{} bytes", batch.len())));
    };
    let magic = h.magic();
    if magic != 2 {
        return Err(BatchError::Magic(magic));
    }
    let stored = h.crc();
    let computed = h.computed_crc();
    if stored != computed {
        return Err(BatchError::Crc { stored, computed });
    }
    let last_delta = h.last_offset_delta();
    let count = h.record_count();
    if last_delta < 0 || count < 0 || count > last_delta.saturating_add(1) {
        return Err(BatchError::Invalid(format!(
            "lastOffsetDelta {last_delta} with {count} records"
        )));
    }
    if h.compression() > 4 {
        return Err(BatchError::Invalid(format!(
            "compression codec {} is unknown",
            h.compression()
        )));
    }
    Ok(BatchInfo {
        record_count: last_delta as u32 + 1,
        max_timestamp: h.max_timestamp(),
        producer_id: h.producer_id(),
        producer_epoch: h.producer_epoch(),
        base_sequence: h.base_sequence(),
        transactional: h.is_transactional(),
    })
}

/// A batch of no records that takes the offset `base_offset`: what a reader is given where a
/// log holds something that is not a record (a Raft entry of a replicated partition), so it
/// moves past that offset as it does past a batch emptied by compaction.
pub fn empty_batch(base_offset: u64, timestamp_ms: i64) -> Vec<u8> {
    let mut b = vec![0u8; HEADER];
    let mut h = BatchHeader::new(&mut b[..]).expect("a header's worth of bytes");
    h.set_base_offset(base_offset as i64);
    h.set_batch_length((HEADER - LOG_OVERHEAD) as i32);
    h.set_magic(2);
    h.set_last_offset_delta(0);
    h.set_base_timestamp(timestamp_ms);
    h.set_max_timestamp(timestamp_ms);
    h.set_producer_id(-1);
    h.set_producer_epoch(-1);
    h.set_base_sequence(-1);
    h.set_record_count(0);
    h.update_crc();
    b
}

/// Write the broker-assigned base offset (and leader epoch 0) into a stored batch.
#[inline]
pub fn patch_for_fetch(batch: &mut [u8], base_offset: u64) {
    if let Some(mut h) = BatchHeader::new(batch) {
        h.set_base_offset(base_offset as i64);
        h.set_partition_leader_epoch(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BatchBuilder;

    #[test]
    fn an_empty_batch_is_valid_and_takes_one_offset() {
        let b = empty_batch(41, 7);
        let info = validate(&b).expect("valid");
        assert_eq!(info.record_count, 1, "lastOffsetDelta 0: one offset");
        assert_eq!(BatchHeader::new(&b[..]).unwrap().record_count(), 0);
        assert_eq!(BatchHeader::new(&b[..]).unwrap().base_offset(), 41);
        assert!(!is_control(&b));
    }

    /// A valid uncompressed batch with `n` records of the given value.
    fn batch(n: i32, value: &[u8]) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        for i in 0..n {
            b.push(1_700_000_000_000, i as i64, None, Some(value), &[]);
        }
        b.finish()
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
        BatchHeader::new(&mut magic).unwrap().set_magic(1);
        assert_eq!(split_batches(&magic), Err(BatchError::Magic(1)));
        assert!(matches!(
            split_batches(&good[..good.len() - 1]),
            Err(BatchError::Truncated(_))
        ));
        let mut huge = good.clone();
        BatchHeader::new(&mut huge)
            .unwrap()
            .set_batch_length(i32::MAX);
        assert!(matches!(
            split_batches(&huge),
            Err(BatchError::Truncated(_))
        ));
        let mut negative = good.clone();
        BatchHeader::new(&mut negative)
            .unwrap()
            .set_batch_length(-5);
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
        assert_eq!(BatchHeader::new(&b).unwrap().base_offset(), 12345);
        assert!(validate(&b).is_ok());
    }

    #[test]
    fn the_layout_is_kafkas() {
        // fields at Kafka's offsets, read back as written: a byte pattern per field
        let mut b = vec![0u8; HEADER];
        let mut h = BatchHeader::new(&mut b).unwrap();
        h.set_base_offset(0x0102_0304_0506_0708);
        h.set_batch_length(0x0909_0909);
        h.set_partition_leader_epoch(0x0c0c_0c0c);
        h.set_magic(0x10);
        h.set_crc(0x1111_1111);
        h.set_attributes(0x1515);
        h.set_last_offset_delta(0x1717_1717);
        h.set_base_timestamp(0x1b1b_1b1b_1b1b_1b1b);
        h.set_max_timestamp(0x2323_2323_2323_2323);
        h.set_producer_id(0x2b2b_2b2b_2b2b_2b2b);
        h.set_producer_epoch(0x3333);
        h.set_base_sequence(0x3535_3535);
        h.set_record_count(0x3939_3939);
        let want: Vec<u8> = [
            &[1, 2, 3, 4, 5, 6, 7, 8][..],
            &[0x09; 4],
            &[0x0c; 4],
            &[0x10],
            &[0x11; 4],
            &[0x15; 2],
            &[0x17; 4],
            &[0x1b; 8],
            &[0x23; 8],
            &[0x2b; 8],
            &[0x33; 2],
            &[0x35; 4],
            &[0x39; 4],
        ]
        .concat();
        assert_eq!(b, want);
        b.extend_from_slice(b"records");
        let h = BatchHeader::new(&b).unwrap();
        assert_eq!(
            h.computed_crc(),
            crc32c::crc32c(&b[21..]),
            "the CRC covers 21.."
        );
        assert_eq!(
            BatchHeader::peek(&b[..LOG_OVERHEAD]),
            Some((0x0102_0304_0506_0708, 0x0909_0909))
        );
        assert_eq!(BatchHeader::peek(&b[..LOG_OVERHEAD - 1]), None);
        assert!(BatchHeader::new(&b[..HEADER - 1]).is_none());
    }

    #[test]
    fn attribute_bits() {
        let mut b = batch(1, b"x");
        let mut h = BatchHeader::new(&mut b).unwrap();
        assert!(!h.is_control() && !h.is_transactional() && h.compression() == 0);
        h.set_attributes(0x20 | 0x10 | 3);
        assert!(h.is_control() && h.is_transactional() && h.compression() == 3);
        assert!(is_control(&b));
        assert!(!is_control(&b[..HEADER - 1]));
    }

    /// Every header field, as a value to write and to expect back.
    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Fields {
        base_offset: i64,
        partition_leader_epoch: i32,
        magic: i8,
        attributes: i16,
        last_offset_delta: i32,
        base_timestamp: i64,
        max_timestamp: i64,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
        record_count: i32,
    }

    fn fields() -> impl Strategy<Value = Fields> {
        (
            (any::<i64>(), any::<i32>(), any::<i8>(), any::<i16>()),
            (any::<i32>(), any::<i64>(), any::<i64>()),
            (any::<i64>(), any::<i16>(), any::<i32>(), any::<i32>()),
        )
            .prop_map(
                |((bo, ple, m, a), (lod, bt, mt), (pid, pe, bs, rc))| Fields {
                    base_offset: bo,
                    partition_leader_epoch: ple,
                    magic: m,
                    attributes: a,
                    last_offset_delta: lod,
                    base_timestamp: bt,
                    max_timestamp: mt,
                    producer_id: pid,
                    producer_epoch: pe,
                    base_sequence: bs,
                    record_count: rc,
                },
            )
    }

    fn read(h: &BatchHeader<&[u8]>) -> Fields {
        Fields {
            base_offset: h.base_offset(),
            partition_leader_epoch: h.partition_leader_epoch(),
            magic: h.magic(),
            attributes: h.attributes(),
            last_offset_delta: h.last_offset_delta(),
            base_timestamp: h.base_timestamp(),
            max_timestamp: h.max_timestamp(),
            producer_id: h.producer_id(),
            producer_epoch: h.producer_epoch(),
            base_sequence: h.base_sequence(),
            record_count: h.record_count(),
        }
    }

    use proptest::prelude::*;

    proptest! {
        /// Fields written through the view come back as written, whatever the records after
        /// the header; the length and CRC the view writes are the batch's own.
        #[test]
        fn header_fields_round_trip(f in fields(), body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut b = vec![0u8; HEADER];
            b.extend_from_slice(&body);
            let mut h = BatchHeader::new(&mut b).unwrap();
            h.set_base_offset(f.base_offset);
            h.set_partition_leader_epoch(f.partition_leader_epoch);
            h.set_magic(f.magic);
            h.set_attributes(f.attributes);
            h.set_last_offset_delta(f.last_offset_delta);
            h.set_base_timestamp(f.base_timestamp);
            h.set_max_timestamp(f.max_timestamp);
            h.set_producer_id(f.producer_id);
            h.set_producer_epoch(f.producer_epoch);
            h.set_base_sequence(f.base_sequence);
            h.set_record_count(f.record_count);
            h.set_batch_length((HEADER + body.len() - LOG_OVERHEAD) as i32);
            h.update_crc();
            let h = BatchHeader::new(&b[..]).unwrap();
            prop_assert_eq!(read(&h), f);
            prop_assert_eq!(h.batch_length() as usize + LOG_OVERHEAD, b.len());
            prop_assert_eq!(h.crc(), h.computed_crc());
            prop_assert_eq!(&b[HEADER..], &body[..]);
            prop_assert_eq!(BatchHeader::peek(&b), Some((f.base_offset, h.batch_length())));
            prop_assert_eq!(h.compression(), f.attributes & 0x07);
            prop_assert_eq!(h.is_transactional(), f.attributes & 0x10 != 0);
            prop_assert_eq!(h.is_control(), f.attributes & 0x20 != 0);
        }

        /// A batch built from records reads back, through the view, with the counts,
        /// timestamps, length and CRC of those records, and passes validation.
        #[test]
        fn built_batches_describe_themselves(
            stamps in proptest::collection::vec(0i64..1 << 45, 1..20),
            value in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let mut builder = BatchBuilder::new();
            for (i, t) in stamps.iter().enumerate() {
                builder.push(*t, i as i64, None, Some(&value), &[]);
            }
            let b = builder.finish();
            let h = BatchHeader::new(&b[..]).unwrap();
            prop_assert_eq!(h.magic(), 2);
            prop_assert_eq!(h.record_count() as usize, stamps.len());
            prop_assert_eq!(h.last_offset_delta() as usize, stamps.len() - 1);
            prop_assert_eq!(h.base_timestamp(), stamps[0]);
            prop_assert_eq!(h.max_timestamp(), *stamps.iter().max().unwrap());
            prop_assert_eq!((h.producer_id(), h.producer_epoch(), h.base_sequence()), (-1, -1, -1));
            prop_assert_eq!(h.batch_length() as usize + LOG_OVERHEAD, b.len());
            prop_assert_eq!(h.crc(), h.computed_crc());
            let info = validate(&b).unwrap();
            prop_assert_eq!(info.record_count as usize, stamps.len());
            prop_assert_eq!(info.max_timestamp, h.max_timestamp());
            let records = crate::decode_batch(7, &b).unwrap();
            prop_assert_eq!(records.iter().map(|r| r.timestamp).collect::<Vec<_>>(), stamps);
        }
    }
}

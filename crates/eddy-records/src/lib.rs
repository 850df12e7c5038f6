//! The storage format of topic partitions: Kafka's record batch (message format v2), the format
//! Kafka producers send and consumers read, kept byte for byte. The broker decodes batches only
//! where it must look inside — delivering a topic to AMQP stream consumers, compaction, the
//! `amqp.user-id` header of a produce ([`for_each_header`]) — and encodes (uncompressed)
//! batches for messages that arrive by other protocols.
//!
//! Shaping decision: this crate alone knows the layout of a batch. Module `batch` has the byte
//! table of the header, the typed view every reader and writer of header fields goes through
//! ([`BatchHeader`]), and the checks and the patch the Kafka front end applies to every
//! produced and fetched batch ([`split_batches`], [`validate`], [`patch_for_fetch`]); batches
//! are built with [`BatchBuilder`]. A record is: length (varint),
//! attributes (int8), timestamp delta (varlong), offset delta (varint), key length (varint, -1 =
//! null) and key, value length and value, header count (varint) and headers (key length, key,
//! value length, value). Compression (attributes bits 0–2: gzip, snappy, lz4, zstd) covers
//! everything after the 61-byte header.

use std::io::Read;

use bytes::Bytes;

mod batch;
mod varint;

pub use batch::{
    empty_batch, is_control, patch_for_fetch, split_batches, validate, BatchError, BatchHeader,
    BatchInfo, HEADER, LOG_OVERHEAD,
};
pub use varint::{get_varint, put_varint, VarintError};

/// Largest decompressed batch accepted (a decompression bomb stops here).
pub const MAX_DECOMPRESSED: usize = 256 << 20;

/// One record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Its offset in the partition.
    pub offset: u64,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    /// The key (None: null).
    pub key: Option<Bytes>,
    /// The value (None: null, a tombstone).
    pub value: Option<Bytes>,
    /// Headers in order.
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Why a stored batch could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Not a v2 batch, or its parts do not add up.
    #[error("malformed record batch: {0}")]
    Malformed(String),
    /// A compression codec the batch names is unknown or its data is corrupt.
    #[error("cannot decompress record batch ({codec}): {reason}")]
    Compression {
        /// The codec.
        codec: &'static str,
        /// What failed.
        reason: String,
    },
}

fn malformed(s: impl Into<String>) -> RecordError {
    RecordError::Malformed(s.into())
}

/// Decode every record of a stored batch whose first offset is `base_offset`.
pub fn decode_batch(base_offset: u64, batch: &[u8]) -> Result<Vec<Record>, RecordError> {
    let Some(h) = BatchHeader::new(batch) else {
        return Err(malformed(format!("{} bytes", batch.len())));
    };
    if h.magic() != 2 {
        return Err(malformed(format!("magic {}", h.magic() as u8)));
    }
    let base_ts = h.base_timestamp();
    let count = h.record_count();
    if count < 0 {
        return Err(malformed(format!("record count {count}")));
    }
    let body = match h.compression() {
        0 => Bytes::copy_from_slice(&batch[HEADER..]),
        c => Bytes::from(decompress(c, &batch[HEADER..])?),
    };
    let mut r = Cursor { buf: &body, at: 0 };
    // a record takes at least 7 bytes: a count beyond that is a lie, refused before
    // anything is sized by it
    if count as usize > body.len() / 7 + 1 {
        return Err(malformed(format!(
            "{count} records in {} bytes",
            body.len()
        )));
    }
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = r.varint()?;
        let end = r
            .at
            .checked_add(usize::try_from(len).map_err(|_| malformed("negative record length"))?)
            .filter(|e| *e <= body.len())
            .ok_or_else(|| malformed("record runs past the batch"))?;
        r.skip(1)?; // attributes
        let ts_delta = r.varint()?;
        let offset_delta = r.varint()?;
        let key = r.bytes(&body)?;
        let value = r.bytes(&body)?;
        let n_headers = r.varint()?;
        // a header takes at least 2 bytes
        if n_headers < 0 || n_headers as usize > end.saturating_sub(r.at) / 2 {
            return Err(malformed(format!("header count {n_headers}")));
        }
        let mut headers = Vec::with_capacity(n_headers as usize);
        for _ in 0..n_headers {
            let k = r
                .bytes(&body)?
                .ok_or_else(|| malformed("null header key"))?;
            let v = r.bytes(&body)?;
            headers.push((String::from_utf8_lossy(&k).into_owned(), v));
        }
        if r.at != end {
            return Err(malformed("record length does not match its fields"));
        }
        out.push(Record {
            offset: base_offset.saturating_add(offset_delta.max(0) as u64),
            timestamp: base_ts.saturating_add(ts_delta),
            key,
            value,
            headers,
        });
    }
    Ok(out)
}

/// Call `f` with the value of every header named `key` in the batch's records (a compressed
/// batch is decompressed first). A batch whose (decompressed) bytes do not hold `key` at all
/// is not walked: the common case costs one substring scan and no allocation (none at all
/// for an uncompressed batch). Err: the records cannot be read.
pub fn for_each_header(
    batch: &[u8],
    key: &[u8],
    mut f: impl FnMut(Option<&[u8]>),
) -> Result<(), RecordError> {
    let Some(h) = BatchHeader::new(batch) else {
        return Err(malformed(format!("{} bytes", batch.len())));
    };
    let decompressed;
    let body: &[u8] = match h.compression() {
        0 => &batch[HEADER..],
        c => {
            decompressed = decompress(c, &batch[HEADER..])?;
            &decompressed
        }
    };
    if key.is_empty() || memchr::memmem::find(body, key).is_none() {
        return Ok(());
    }
    fn varint(b: &mut &[u8]) -> Result<i64, RecordError> {
        get_varint(b).map_err(|e| malformed(e.to_string()))
    }
    // length-prefixed bytes (-1: None)
    fn field<'a>(b: &mut &'a [u8]) -> Result<Option<&'a [u8]>, RecordError> {
        let len = varint(b)?;
        if len < 0 {
            return Ok(None);
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= b.len())
            .ok_or_else(|| malformed("field runs past its record"))?;
        let (v, rest) = b.split_at(len);
        *b = rest;
        Ok(Some(v))
    }
    let mut rest = body;
    for _ in 0..h.record_count().max(0) {
        let len = usize::try_from(varint(&mut rest)?)
            .ok()
            .filter(|l| *l <= rest.len())
            .ok_or_else(|| malformed("record runs past the batch"))?;
        let (rec, after) = rest.split_at(len);
        rest = after;
        let mut rec = rec.get(1..).ok_or_else(|| malformed("empty record"))?; // attributes
        varint(&mut rec)?; // timestamp delta
        varint(&mut rec)?; // offset delta
        field(&mut rec)?; // key
        field(&mut rec)?; // value
        let headers = varint(&mut rec)?;
        for _ in 0..headers.max(0) {
            let name = field(&mut rec)?.ok_or_else(|| malformed("null header key"))?;
            let value = field(&mut rec)?;
            if name == key {
                f(value);
            }
        }
    }
    Ok(())
}

struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn skip(&mut self, n: usize) -> Result<(), RecordError> {
        if self.buf.len() - self.at < n {
            return Err(malformed("truncated record"));
        }
        self.at += n;
        Ok(())
    }
    /// A zigzag varint (up to 64 bits).
    fn varint(&mut self) -> Result<i64, RecordError> {
        let mut rest = &self.buf[self.at..];
        let v = get_varint(&mut rest).map_err(|e| malformed(e.to_string()))?;
        self.at = self.buf.len() - rest.len();
        Ok(v)
    }
    /// Length-prefixed bytes (-1: None), sliced from `whole` without copying.
    fn bytes(&mut self, whole: &Bytes) -> Result<Option<Bytes>, RecordError> {
        let len = self.varint()?;
        if len < 0 {
            return Ok(None);
        }
        let start = self.at;
        self.skip(len as usize)?;
        Ok(Some(whole.slice(start..self.at)))
    }
}

fn decompress(codec: i16, data: &[u8]) -> Result<Vec<u8>, RecordError> {
    let (name, result) = match codec {
        1 => ("gzip", read_bounded(flate2::read::GzDecoder::new(data))),
        2 => ("snappy", snappy(data)),
        3 => (
            "lz4",
            read_bounded(lz4_flex::frame::FrameDecoder::new(data)),
        ),
        4 => (
            "zstd",
            ruzstd::decoding::StreamingDecoder::new(data)
                .map_err(|e| e.to_string())
                .and_then(read_bounded),
        ),
        other => {
            return Err(RecordError::Compression {
                codec: "unknown",
                reason: format!("codec id {other}"),
            })
        }
    };
    result.map_err(|reason| RecordError::Compression {
        codec: name,
        reason,
    })
}

fn read_bounded(r: impl Read) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    r.take(MAX_DECOMPRESSED as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    if out.len() > MAX_DECOMPRESSED {
        return Err(format!("more than {MAX_DECOMPRESSED} bytes decompressed"));
    }
    Ok(out)
}

/// Snappy as Kafka clients write it: Java's xerial framing (magic, then length-prefixed raw
/// blocks) or one raw block (librdkafka).
fn snappy(data: &[u8]) -> Result<Vec<u8>, String> {
    const XERIAL: &[u8] = b"\x82SNAPPY\x00";
    let raw = |block: &[u8], out: &mut Vec<u8>| -> Result<(), String> {
        let n = snap::raw::decompress_len(block).map_err(|e| e.to_string())?;
        if out.len() + n > MAX_DECOMPRESSED {
            return Err(format!("more than {MAX_DECOMPRESSED} bytes decompressed"));
        }
        out.extend(
            snap::raw::Decoder::new()
                .decompress_vec(block)
                .map_err(|e| e.to_string())?,
        );
        Ok(())
    };
    let mut out = Vec::new();
    if data.starts_with(XERIAL) && data.len() >= 16 {
        let mut at = 16; // magic, version, compatible version
        while at < data.len() {
            let len = data
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
                .ok_or("truncated xerial block length")?;
            let block = data
                .get(at + 4..at + 4 + len)
                .ok_or("xerial block runs past the data")?;
            raw(block, &mut out)?;
            at += 4 + len;
        }
    } else {
        raw(data, &mut out)?;
    }
    Ok(out)
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

/// Builds one uncompressed batch record by record: base offset 0, leader epoch 0, no producer
/// id (-1, epoch -1, sequence -1); the base timestamp is the first record's, and
/// [`finish`](Self::finish) writes the counts, the length and the CRC.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    rec: Vec<u8>,
    count: i32,
    base_timestamp: Option<i64>,
    max_timestamp: Option<i64>,
    last_offset_delta: i64,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder::new()
    }
}

impl BatchBuilder {
    /// An empty batch.
    pub fn new() -> Self {
        BatchBuilder {
            buf: vec![0u8; HEADER],
            rec: Vec::new(),
            count: 0,
            base_timestamp: None,
            max_timestamp: None,
            last_offset_delta: 0,
        }
    }

    /// Append a record (`timestamp` in ms since the epoch, `offset_delta` from the batch's
    /// base offset); returns where its value's bytes start in the batch.
    pub fn push(
        &mut self,
        timestamp: i64,
        offset_delta: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(String, Option<Bytes>)],
    ) -> usize {
        let base_ts = *self.base_timestamp.get_or_insert(timestamp);
        self.max_timestamp = Some(self.max_timestamp.map_or(timestamp, |m| m.max(timestamp)));
        self.last_offset_delta = self.last_offset_delta.max(offset_delta);
        self.count += 1;
        let rec = &mut self.rec;
        rec.clear();
        rec.push(0); // attributes
        put_varint(rec, timestamp - base_ts);
        put_varint(rec, offset_delta);
        put_bytes(rec, key);
        put_varint(rec, value.map_or(-1, |v| v.len() as i64));
        let value_at = rec.len();
        rec.extend_from_slice(value.unwrap_or_default());
        put_varint(rec, headers.len() as i64);
        for (k, v) in headers {
            put_bytes(rec, Some(k.as_bytes()));
            put_bytes(rec, v.as_deref());
        }
        put_varint(&mut self.buf, rec.len() as i64);
        let at = self.buf.len() + value_at;
        self.buf.extend_from_slice(rec);
        at
    }

    /// The batch.
    pub fn finish(mut self) -> Vec<u8> {
        let base_ts = self.base_timestamp.unwrap_or(0);
        let len = (self.buf.len() - LOG_OVERHEAD) as i32;
        let mut h = BatchHeader::new(&mut self.buf).expect("the buffer starts with a header");
        h.set_partition_leader_epoch(0);
        h.set_magic(2);
        h.set_last_offset_delta(self.last_offset_delta as i32);
        h.set_base_timestamp(base_ts);
        h.set_max_timestamp(self.max_timestamp.unwrap_or(base_ts));
        h.set_producer_id(-1);
        h.set_producer_epoch(-1);
        h.set_base_sequence(-1);
        h.set_record_count(self.count);
        h.set_batch_length(len);
        h.update_crc();
        self.buf
    }
}

/// Encode records (offsets taken as 0, 1, …; the broker assigns the real base) into one
/// uncompressed batch with no producer id.
pub fn encode_batch(records: &[Record]) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for (i, r) in records.iter().enumerate() {
        b.push(
            r.timestamp,
            i as i64,
            r.key.as_deref(),
            r.value.as_deref(),
            &r.headers,
        );
    }
    b.finish()
}

/// Re-encode what remains of a stored batch whose first offset is `base_offset` (compaction):
/// the records keep their offsets, the batch keeps its span and producer fields (id, epoch,
/// base sequence), so offsets and idempotence state survive. (A stored batch's own base-offset
/// field is whatever the producer sent; the log knows the real one.)
pub fn encode_batch_like(records: &[Record], base_offset: u64, original: &[u8]) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for r in records {
        b.push(
            r.timestamp,
            r.offset.saturating_sub(base_offset) as i64,
            r.key.as_deref(),
            r.value.as_deref(),
            &r.headers,
        );
    }
    let mut out = b.finish();
    let mut h = BatchHeader::new(&mut out).expect("a finished batch holds a header");
    h.set_base_offset(base_offset as i64);
    if let Some(o) = BatchHeader::new(original) {
        h.set_last_offset_delta(o.last_offset_delta());
        h.set_producer_id(o.producer_id());
        h.set_producer_epoch(o.producer_epoch());
        h.set_base_sequence(o.base_sequence());
    }
    h.update_crc();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64, key: Option<&str>, value: Option<&str>) -> Record {
        Record {
            offset: i,
            timestamp: 1_700_000_000_000 + i as i64,
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            headers: vec![
                ("h".into(), Some(Bytes::from_static(b"v"))),
                ("n".into(), None),
            ],
        }
    }

    #[test]
    fn headers_are_found_by_name_in_plain_and_compressed_batches() {
        let mut r = rec(0, Some("k"), Some("v"));
        r.headers = vec![
            ("amqp.user-id".into(), Some(Bytes::from_static(b"mallory"))),
            ("other".into(), Some(Bytes::from_static(b"amqp.user-id"))),
            ("amqp.user-id".into(), None),
        ];
        let plain = encode_batch(&[rec(0, None, Some("x")), r.clone()]);
        let found = |b: &[u8]| {
            let mut v = Vec::new();
            for_each_header(b, b"amqp.user-id", |x| v.push(x.map(<[u8]>::to_vec))).unwrap();
            v
        };
        let want = vec![Some(b"mallory".to_vec()), None];
        assert_eq!(found(&plain), want);
        assert!(found(&encode_batch(&[rec(0, None, Some("x"))])).is_empty());
        // the same records gzip-compressed
        let mut gz = plain[..HEADER].to_vec();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &plain[HEADER..]).unwrap();
        gz.extend(enc.finish().unwrap());
        let mut h = BatchHeader::new(&mut gz).unwrap();
        h.set_attributes(1);
        assert_eq!(found(&gz), want);
        // records that cannot be read are an error, not a pass
        let mut cut = plain.clone();
        cut.truncate(cut.len() - 3);
        assert!(for_each_header(&cut, b"amqp.user-id", |_| {}).is_err());
    }

    #[test]
    fn encode_decode_round_trip() {
        let records = vec![
            rec(0, Some("k"), Some("one")),
            rec(1, None, Some("two")),
            rec(2, Some("k"), None),
        ];
        let b = encode_batch(&records);
        let h = BatchHeader::new(&b).unwrap();
        assert_eq!(h.computed_crc(), h.crc());
        let got = decode_batch(100, &b).unwrap();
        let want: Vec<Record> = records
            .iter()
            .map(|r| Record {
                offset: r.offset + 100,
                ..r.clone()
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn compaction_rewrite_keeps_offsets_span_and_producer() {
        // a stored batch at offset 1000 whose own base-offset field says 0 (as producers send)
        let mut original = encode_batch(&[
            rec(0, Some("a"), Some("1")),
            rec(1, Some("b"), Some("2")),
            rec(2, Some("a"), Some("3")),
        ]);
        let mut h = BatchHeader::new(&mut original).unwrap();
        h.set_producer_id(77);
        h.set_base_sequence(5);
        let all = decode_batch(1000, &original).unwrap();
        let keep: Vec<Record> = all.iter().filter(|r| r.offset != 1000).cloned().collect();
        let b = encode_batch_like(&keep, 1000, &original);
        let got = decode_batch(1000, &b).unwrap();
        assert_eq!(
            got.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![1001, 1002]
        );
        let h = BatchHeader::new(&b).unwrap();
        assert_eq!(h.last_offset_delta(), 2, "same span");
        assert_eq!(h.producer_id(), 77, "producer id kept");
        assert_eq!(h.base_sequence(), 5, "base sequence kept");
        assert_eq!(h.computed_crc(), h.crc());
    }

    #[test]
    fn compressed_batches_decode() {
        let plain = encode_batch(&[
            rec(0, Some("a"), Some("x".repeat(200).as_str())),
            rec(1, None, Some("y")),
        ]);
        let body = &plain[HEADER..];
        let codecs: Vec<(i16, Vec<u8>)> = vec![
            (1, {
                use std::io::Write;
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(body).unwrap();
                e.finish().unwrap()
            }),
            (2, snap::raw::Encoder::new().compress_vec(body).unwrap()),
            (2, {
                // xerial framing, as the Java client writes it
                let block = snap::raw::Encoder::new().compress_vec(body).unwrap();
                let mut x = b"\x82SNAPPY\x00".to_vec();
                x.extend_from_slice(&1i32.to_be_bytes());
                x.extend_from_slice(&1i32.to_be_bytes());
                x.extend_from_slice(&(block.len() as u32).to_be_bytes());
                x.extend_from_slice(&block);
                x
            }),
            (3, {
                use std::io::Write;
                let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
                e.write_all(body).unwrap();
                e.finish().unwrap()
            }),
            (
                4,
                ruzstd::encoding::compress_to_vec(
                    body,
                    ruzstd::encoding::CompressionLevel::Fastest,
                ),
            ),
        ];
        let want = decode_batch(0, &plain).unwrap();
        for (codec, data) in codecs {
            let mut b = plain[..HEADER].to_vec();
            BatchHeader::new(&mut b).unwrap().set_attributes(codec);
            b.extend_from_slice(&data);
            assert_eq!(decode_batch(0, &b).unwrap(), want, "codec {codec}");
        }
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let b = encode_batch(&[rec(0, Some("k"), Some("value")), rec(1, None, None)]);
        for cut in 0..b.len() {
            let _ = decode_batch(0, &b[..cut]);
        }
        for i in HEADER..b.len() {
            for bit in 0..8 {
                let mut d = b.clone();
                d[i] ^= 1 << bit;
                let _ = decode_batch(0, &d);
            }
        }
        let mut bad = b.clone();
        BatchHeader::new(&mut bad).unwrap().set_attributes(7); // unknown codec
        assert!(matches!(
            decode_batch(0, &bad),
            Err(RecordError::Compression { .. })
        ));
    }
}

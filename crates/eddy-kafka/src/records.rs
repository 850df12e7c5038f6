//! Kafka record batches (magic 2) as clients send them: split, validated, and the two fields
//! the broker owns (base offset, partition leader epoch) patched on the way out. The layout and
//! these checks are `eddy-records`' (its `BatchHeader` is the only reader of header bytes);
//! they are named here for the front end's handlers, with the one look inside the records a
//! produce takes (`for_each_header`: the `amqp.user-id` check).

pub use eddy_records::{
    for_each_header, patch_for_fetch, split_batches, validate, BatchError, BatchInfo, HEADER,
};

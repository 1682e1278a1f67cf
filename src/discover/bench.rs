//! Entry points for the crate's own benchmarks (`benches/update.rs`): the
//! decoding step of the sources that read endpoint records, without their
//! I/O. Not part of the API; it may change in any release.

use super::record;
use crate::endpoint::Endpoint;

/// Decodes a file source's document as [`FileSource`](super::FileSource)
/// does once it has read the file: the endpoints that validate.
#[cfg(feature = "file")]
pub fn decode_file(text: &[u8]) -> Vec<Endpoint> {
    record::parse(text, "bench")
        .map(|parsed| parsed.good)
        .unwrap_or_default()
}

/// Decodes `(key, value)` pairs as [`EtcdSource`](super::EtcdSource) does
/// after listing a prefix: one record per key, the ones that validate.
#[cfg(feature = "etcd")]
pub fn decode_etcd<'a>(kvs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<Endpoint> {
    kvs.into_iter()
        .filter_map(|(key, value)| record::decode(value, key).ok())
        .collect()
}

//! The JSON shape of an endpoint record, shared by sources that read
//! endpoints from text: a file of records, and registries (etcd) that
//! store one record per key.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::endpoint::Endpoint;
use crate::error::{DiscoveryError, InvalidEndpoint};

/// One endpoint as written in JSON:
///
/// ```json
/// { "address": "10.0.0.1:8080", "weight": 3, "priority": 0,
///   "zone": "eu-west-1a", "tags": { "version": "7" }, "key": "optional" }
/// ```
///
/// `address` is required unless `key` is given; `key` defaults to the
/// address. `weight` may be a float (as some registries store it) and is
/// mapped by [`weight_from_f64`](crate::endpoint::weight_from_f64);
/// `priority` is 0–255.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Record {
    key: Option<String>,
    address: Option<String>,
    weight: Option<f64>,
    priority: Option<u64>,
    zone: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

/// A record as written by [`encode`]: integers for weight and priority,
/// absent fields left out.
#[derive(Debug, Serialize)]
struct RecordOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    weight: u32,
    priority: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    zone: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    tags: &'a BTreeMap<String, String>,
}

/// A document wrapping its records: `{"endpoints": [...]}`. Records stay
/// raw JSON until each is decoded alone, so one that does not parse is set
/// aside without failing the others (and is parsed once, not twice).
#[derive(Debug, Deserialize)]
struct Wrapped<'a> {
    #[serde(borrow)]
    endpoints: Vec<&'a RawValue>,
}

impl Record {
    /// Validates a record into an endpoint; `name` says where it came from
    /// in errors (built only for an error).
    pub(crate) fn into_endpoint(
        self,
        name: &dyn Fn() -> String,
    ) -> Result<Endpoint, DiscoveryError> {
        let bad = |source: InvalidEndpoint| DiscoveryError::InvalidRecord {
            record: name(),
            source,
        };
        let address = match &self.address {
            Some(a) => Some(
                a.parse::<SocketAddr>()
                    .map_err(|_| bad(InvalidEndpoint::BadAddress { address: a.clone() }))?,
            ),
            None => None,
        };
        let key = match (self.key, address) {
            (Some(k), _) => k,
            (None, Some(a)) => a.to_string(),
            (None, None) => return Err(bad(InvalidEndpoint::EmptyKey)),
        };
        let mut b = Endpoint::builder(key)
            .weight_f64(self.weight.unwrap_or(1.0))
            .priority_u64(self.priority.unwrap_or(0));
        if let Some(a) = address {
            b = b.address(a);
        }
        if let Some(z) = self.zone {
            b = b.zone(z);
        }
        for (k, v) in self.tags {
            b = b.tag(k, v);
        }
        b.build().map_err(bad)
    }
}

/// Decodes one record stored on its own (a registry's value under one
/// key); `name` (the key) is named in every error, whether the value is
/// not JSON, not a record, or a record that does not validate.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub(crate) fn decode(value: &[u8], name: &str) -> Result<Endpoint, DiscoveryError> {
    let record: Record = serde_json::from_slice(value)
        .map_err(|e| DiscoveryError::Source(format!("record `{name}`: {e}").into()))?;
    record.into_endpoint(&|| name.to_owned())
}

/// Encodes an endpoint as one record that [`decode`] turns back into the
/// same endpoint. The key is written only when it differs from the
/// address.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub(crate) fn encode(endpoint: &Endpoint) -> Vec<u8> {
    let address = endpoint.address().map(|a| a.to_string());
    let key = match &address {
        Some(a) if a == endpoint.key() => None,
        _ => Some(endpoint.key()),
    };
    let out = RecordOut {
        key,
        address,
        weight: endpoint.weight(),
        priority: endpoint.priority(),
        zone: endpoint.zone(),
        tags: endpoint.tags(),
    };
    // Strings, integers and a string map always serialize.
    serde_json::to_vec(&out).unwrap_or_default()
}

/// Parses a document. A syntax error fails the whole document; a record
/// that does not validate is returned as an error beside the good ones,
/// so one bad record never empties the set.
#[cfg_attr(not(feature = "file"), allow(dead_code))]
pub(crate) fn parse(
    text: &[u8],
    origin: &str,
) -> Result<(Vec<Endpoint>, Vec<DiscoveryError>), DiscoveryError> {
    let whole = |e: serde_json::Error| DiscoveryError::Source(format!("{origin}: {e}").into());
    // `[...]` is a bare list of records; anything else must be the wrapper.
    let values: Vec<&RawValue> = match text.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => serde_json::from_slice(text).map_err(whole)?,
        _ => {
            serde_json::from_slice::<Wrapped<'_>>(text)
                .map_err(whole)?
                .endpoints
        }
    };
    let mut good = Vec::with_capacity(values.len());
    let mut bad = Vec::new();
    for (i, value) in values.into_iter().enumerate() {
        // Named only when something is wrong with it.
        let name = || format!("{origin}[{i}]");
        match serde_json::from_str::<Record>(value.get()) {
            Ok(r) => match r.into_endpoint(&name) {
                Ok(e) => good.push(e),
                Err(e) => bad.push(e),
            },
            Err(e) => bad.push(DiscoveryError::Source(format!("{}: {e}", name()).into())),
        }
    }
    Ok((good, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_bad_ones_are_set_aside() {
        let text = br#"{"endpoints": [
            {"address": "127.0.0.1:1", "weight": 2.5, "priority": 1, "zone": "a", "tags": {"v": "7"}},
            {"key": "named", "weight": 0},
            {"address": "not an address"},
            {"address": "127.0.0.1:2", "weight": -1},
            {"address": "127.0.0.1:3", "priority": 300},
            {"address": "127.0.0.1:4", "surprise": true},
            {}
        ]}"#;
        let (good, bad) = parse(text, "test").unwrap();
        assert_eq!(good.len(), 2);
        assert_eq!(
            (
                good[0].key(),
                good[0].weight(),
                good[0].priority(),
                good[0].zone(),
                good[0].tag("v")
            ),
            ("127.0.0.1:1", 3, 1, Some("a"), Some("7"))
        );
        assert_eq!(
            (good[1].key(), good[1].weight(), good[1].address()),
            ("named", 0, None)
        );
        assert_eq!(bad.len(), 5);
        for e in &bad {
            let text = crate::error::render_chain(e);
            assert!(text.contains("test["), "{text}");
        }
        let (good, bad) = parse(br#"[{"address": "[::1]:80"}]"#, "bare").unwrap();
        assert_eq!((good.len(), bad.len()), (1, 0));
        assert!(parse(b"{not json", "broken").is_err());
        assert!(parse(br#"{"endpoints": 3}"#, "wrong").is_err());
    }

    #[test]
    fn a_single_record_decodes_and_errors_name_its_key() {
        let e = decode(
            br#"{"address": "127.0.0.1:1", "weight": 2, "zone": "a"}"#,
            "/svc/a",
        )
        .unwrap();
        assert_eq!(
            (e.key(), e.weight(), e.zone()),
            ("127.0.0.1:1", 2, Some("a"))
        );

        for bad in [
            &b"{not json"[..],
            br#"{"address": "nowhere"}"#,
            br#"{"address": "127.0.0.1:1", "weight": "heavy"}"#,
            br#"{"address": "127.0.0.1:1", "extra": 1}"#,
            br#"[]"#,
            b"",
        ] {
            let err = decode(bad, "/svc/broken-7").unwrap_err();
            let text = crate::error::render_chain(&err);
            assert!(text.contains("/svc/broken-7"), "{text}");
        }
    }

    #[test]
    fn encode_round_trips_through_decode() {
        let full = Endpoint::builder("api-1")
            .address("10.0.0.1:8080".parse().unwrap())
            .weight(7)
            .priority(2)
            .zone("eu-1a")
            .tag("version", "7")
            .build()
            .unwrap();
        let plain = Endpoint::new("[::1]:80".parse().unwrap()).with_weight(0);
        let keyed = Endpoint::builder("no-address").build().unwrap();
        for e in [full, plain, keyed] {
            let bytes = encode(&e);
            assert_eq!(
                decode(&bytes, "k").unwrap(),
                e,
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let plain = Endpoint::new("127.0.0.1:9".parse().unwrap());
        let text = String::from_utf8(encode(&plain)).unwrap();
        assert!(
            !text.contains("\"key\""),
            "key equal to the address is left out: {text}"
        );
    }
}

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

/// The longest piece of a source's input an error quotes, in bytes; longer
/// text is cut and ends in `…`.
const MAX_SHOWN: usize = 256;

/// At most this many invalid records of one document are reported one by
/// one; the rest are counted (see [`Parsed::invalid`]).
pub(crate) const MAX_REPORTED: usize = 16;

/// `text`, cut to at most [`MAX_SHOWN`] bytes (on a character boundary)
/// and marked with `…` when it was cut.
fn clip(text: &str) -> String {
    if text.len() <= MAX_SHOWN {
        return text.to_owned();
    }
    let mut end = MAX_SHOWN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A JSON error about one record as an [`InvalidEndpoint`]: the parser's
/// message without its position (which would count from the record, not
/// the document), cut to [`MAX_SHOWN`] bytes.
fn malformed(e: &serde_json::Error) -> InvalidEndpoint {
    let text = e.to_string();
    let reason = match text.rfind(" at line ") {
        Some(at) if e.line() > 0 => &text[..at],
        _ => &text,
    };
    InvalidEndpoint::Malformed {
        reason: clip(reason),
    }
}

/// `source` as the error for the record `name`.
fn invalid(name: String, source: InvalidEndpoint) -> DiscoveryError {
    DiscoveryError::InvalidRecord {
        record: name,
        source,
    }
}

impl Record {
    /// Validates a record into an endpoint; `name` says where it came from
    /// in errors (built only for an error).
    pub(crate) fn into_endpoint(
        self,
        name: &dyn Fn() -> String,
    ) -> Result<Endpoint, DiscoveryError> {
        let bad = |source: InvalidEndpoint| invalid(name(), source);
        let address = match &self.address {
            Some(a) => Some(
                a.parse::<SocketAddr>()
                    .map_err(|_| bad(InvalidEndpoint::BadAddress { address: clip(a) }))?,
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
/// key). Every failure, whether the value is not JSON, not a record, or a
/// record that does not validate, is a
/// [`DiscoveryError::InvalidRecord`] naming `name` (the key).
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub(crate) fn decode(value: &[u8], name: &str) -> Result<Endpoint, DiscoveryError> {
    let record: Record =
        serde_json::from_slice(value).map_err(|e| invalid(name.to_owned(), malformed(&e)))?;
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

/// What [`parse`] made of a document.
#[derive(Debug)]
#[cfg_attr(not(feature = "file"), allow(dead_code))]
pub(crate) struct Parsed {
    /// The records that validated, in document order.
    pub(crate) good: Vec<Endpoint>,
    /// Why records were left out, for the first [`MAX_REPORTED`] of them:
    /// each a [`DiscoveryError::InvalidRecord`] naming `origin[index]`.
    pub(crate) bad: Vec<DiscoveryError>,
    /// How many records were left out in all.
    pub(crate) invalid: usize,
}

/// Parses a document. A syntax error (or a document that is not a list of
/// records) fails the whole document; a record that does not validate,
/// whatever the reason, is counted and reported beside the good ones, so
/// one bad record never empties the set.
#[cfg_attr(not(feature = "file"), allow(dead_code))]
pub(crate) fn parse(text: &[u8], origin: &str) -> Result<Parsed, DiscoveryError> {
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
    let mut parsed = Parsed {
        good: Vec::with_capacity(values.len()),
        bad: Vec::new(),
        invalid: 0,
    };
    for (i, value) in values.into_iter().enumerate() {
        // Named only when something is wrong with it.
        let name = || format!("{origin}[{i}]");
        let endpoint = serde_json::from_str::<Record>(value.get())
            .map_err(|e| invalid(name(), malformed(&e)))
            .and_then(|r| r.into_endpoint(&name));
        match endpoint {
            Ok(e) => parsed.good.push(e),
            Err(e) => {
                parsed.invalid += 1;
                if parsed.bad.len() < MAX_REPORTED {
                    parsed.bad.push(e);
                }
            }
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `InvalidEndpoint` behind an `InvalidRecord`, and the record's
    /// name.
    fn cause(e: &DiscoveryError) -> (&str, &InvalidEndpoint) {
        match e {
            DiscoveryError::InvalidRecord { record, source } => (record, source),
            other => panic!("not an InvalidRecord: {other:?}"),
        }
    }

    #[test]
    fn records_parse_and_bad_ones_are_set_aside() {
        let text = br#"{"endpoints": [
            {"address": "127.0.0.1:1", "weight": 2.5, "priority": 1, "zone": "a", "tags": {"v": "7"}},
            {"key": "named", "weight": 0},
            {"address": "not an address"},
            {"address": "127.0.0.1:2", "weight": -1},
            {"address": "127.0.0.1:3", "priority": 300},
            {"address": "127.0.0.1:4", "surprise": true},
            {},
            "a string",
            {"address": "127.0.0.1:5", "weight": "NaN"},
            {"address": "127.0.0.1:6", "weight": 1e999}
        ]}"#;
        let parsed = parse(text, "test").unwrap();
        let good = &parsed.good;
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
        assert_eq!((parsed.bad.len(), parsed.invalid), (8, 8));
        let names: Vec<&str> = parsed.bad.iter().map(|e| cause(e).0).collect();
        assert_eq!(
            names,
            [
                "test[2]", "test[3]", "test[4]", "test[5]", "test[6]", "test[7]", "test[8]",
                "test[9]"
            ]
        );
        let causes: Vec<&InvalidEndpoint> = parsed.bad.iter().map(|e| cause(e).1).collect();
        assert!(matches!(causes[0], InvalidEndpoint::BadAddress { .. }));
        assert!(matches!(causes[1], InvalidEndpoint::WeightNotFinite { .. }));
        assert!(matches!(
            causes[2],
            InvalidEndpoint::PriorityTooLarge { priority: 300 }
        ));
        assert_eq!(causes[4], &InvalidEndpoint::EmptyKey);
        for (i, part) in [
            (3, "unknown field `surprise`"),
            (5, "string"),
            (6, "NaN"),
            (7, "out of range"),
        ] {
            let InvalidEndpoint::Malformed { reason } = causes[i] else {
                panic!("record {i}: {:?}", causes[i]);
            };
            assert!(reason.contains(part), "{reason}");
            assert!(!reason.contains(" at line "), "no position: {reason}");
        }

        let parsed = parse(br#"[{"address": "[::1]:80"}]"#, "bare").unwrap();
        assert_eq!((parsed.good.len(), parsed.invalid), (1, 0));
        let parsed = parse(b" [] ", "empty").unwrap();
        assert_eq!((parsed.good.len(), parsed.invalid), (0, 0));
        assert!(matches!(
            parse(b"{not json", "broken"),
            Err(DiscoveryError::Source(_))
        ));
        assert!(matches!(
            parse(br#"{"endpoints": 3}"#, "wrong"),
            Err(DiscoveryError::Source(_))
        ));
    }

    #[test]
    fn deep_nesting_is_an_invalid_record_not_a_crash() {
        let depth = 100_000;
        let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let parsed = parse(text.as_bytes(), "deep").unwrap();
        assert_eq!((parsed.good.len(), parsed.invalid), (0, 1));
        assert!(matches!(
            cause(&parsed.bad[0]),
            ("deep[0]", InvalidEndpoint::Malformed { .. })
        ));
        // Unbalanced: a syntax error for the whole document.
        assert!(parse("[".repeat(depth).as_bytes(), "open").is_err());
        let err = decode(text.as_bytes(), "/svc/deep").unwrap_err();
        assert!(matches!(
            cause(&err),
            ("/svc/deep", InvalidEndpoint::Malformed { .. })
        ));
    }

    #[test]
    fn only_the_first_invalid_records_are_reported_one_by_one() {
        let n = MAX_REPORTED * 4;
        let mut text = String::from("[{\"address\": \"127.0.0.1:1\"}");
        for _ in 0..n {
            text.push_str(", {\"address\": \"nope\"}");
        }
        text.push(']');
        let parsed = parse(text.as_bytes(), "many").unwrap();
        assert_eq!(parsed.good.len(), 1);
        assert_eq!((parsed.bad.len(), parsed.invalid), (MAX_REPORTED, n));
    }

    #[test]
    fn huge_values_make_short_errors() {
        let long = "x".repeat(1 << 20);
        let text =
            format!(r#"[{{"address": "{long}"}}, {{"address": "127.0.0.1:1", "{long}": 1}}]"#);
        let parsed = parse(text.as_bytes(), "huge").unwrap();
        assert_eq!(parsed.invalid, 2);
        for e in &parsed.bad {
            let shown = crate::error::render_chain(e);
            assert!(shown.len() < 2 * MAX_SHOWN, "{} bytes", shown.len());
            assert!(shown.contains('…'), "{shown}");
        }
        // Cut on a character boundary: 85 three-byte characters.
        assert_eq!(clip(&"€".repeat(200)), format!("{}…", "€".repeat(85)));
        assert_eq!(clip("short"), "short");
    }

    #[test]
    fn a_single_record_decodes_and_every_error_is_an_invalid_record_naming_its_key() {
        let e = decode(
            br#"{"address": "127.0.0.1:1", "weight": 2, "zone": "a"}"#,
            "/svc/a",
        )
        .unwrap();
        assert_eq!(
            (e.key(), e.weight(), e.zone()),
            ("127.0.0.1:1", 2, Some("a"))
        );

        for (bad, malformed) in [
            (&b"{not json"[..], true),
            (br#"{"address": "nowhere"}"#, false),
            (br#"{"address": "127.0.0.1:1", "weight": "heavy"}"#, true),
            (br#"{"address": "127.0.0.1:1", "extra": 1}"#, true),
            (br#"{"address": "127.0.0.1:1", "weight": -3}"#, false),
            (br#"[]"#, true),
            (b"", true),
            (b"\xff\xfe garbage", true),
        ] {
            let err = decode(bad, "/svc/broken-7").unwrap_err();
            let (name, why) = cause(&err);
            assert_eq!(name, "/svc/broken-7");
            assert_eq!(
                matches!(why, InvalidEndpoint::Malformed { .. }),
                malformed,
                "{why:?}"
            );
            let text = crate::error::render_chain(&err);
            assert!(
                text.starts_with("record `/svc/broken-7` is invalid: "),
                "{text}"
            );
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

//! The JSON shape of an endpoint record, shared by sources that read
//! endpoints from text (a file today; registries that store JSON values).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;

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

/// A whole document: either `{"endpoints": [...]}` or a bare array.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Document {
    Wrapped { endpoints: Vec<serde_json::Value> },
    Bare(Vec<serde_json::Value>),
}

impl Record {
    /// Validates a record into an endpoint; `name` says where it came from
    /// in errors.
    pub(crate) fn into_endpoint(self, name: &str) -> Result<Endpoint, DiscoveryError> {
        let bad = |source: InvalidEndpoint| DiscoveryError::InvalidRecord {
            record: name.to_owned(),
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

/// Parses a document. A syntax error fails the whole document; a record
/// that does not validate is returned as an error beside the good ones,
/// so one bad record never empties the set.
pub(crate) fn parse(
    text: &[u8],
    origin: &str,
) -> Result<(Vec<Endpoint>, Vec<DiscoveryError>), DiscoveryError> {
    let doc: Document = serde_json::from_slice(text)
        .map_err(|e| DiscoveryError::Source(format!("{origin}: {e}").into()))?;
    let values = match doc {
        Document::Wrapped { endpoints } => endpoints,
        Document::Bare(v) => v,
    };
    let mut good = Vec::with_capacity(values.len());
    let mut bad = Vec::new();
    for (i, value) in values.into_iter().enumerate() {
        let name = format!("{origin}[{i}]");
        match serde_json::from_value::<Record>(value) {
            Ok(r) => match r.into_endpoint(&name) {
                Ok(e) => good.push(e),
                Err(e) => bad.push(e),
            },
            Err(e) => bad.push(DiscoveryError::Source(format!("{name}: {e}").into())),
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
}

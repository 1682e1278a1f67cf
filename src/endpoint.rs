//! Endpoints: what discovery finds and what a balancer picks.
//!
//! An [`Endpoint`] is an identity (its [key](Endpoint::key), usually the
//! address) plus the metadata a balancer needs: a weight (0 drains it), a
//! priority tier, an optional zone and free-form tags. Every way of building
//! one validates its input, so an endpoint that exists is a valid one: a bad
//! record from a registry becomes a typed [`InvalidEndpoint`], never a panic
//! and never a wrong pick.
//!
//! ```
//! use tower_lb::Endpoint;
//!
//! let a = Endpoint::new("127.0.0.1:8080".parse().unwrap()).with_weight(3);
//! assert_eq!(a.key(), "127.0.0.1:8080");
//!
//! let b = Endpoint::builder("cache-2")
//!     .address("10.0.0.2:6379".parse().unwrap())
//!     .weight_f64(2.5) // some registries carry floats
//!     .priority(1)
//!     .zone("eu-west-1a")
//!     .tag("version", "7.2")
//!     .build()
//!     .unwrap();
//! assert_eq!(b.weight(), 3);
//! assert!(Endpoint::builder("x").weight_f64(f64::NAN).build().is_err());
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::error::InvalidEndpoint;

/// The longest key an endpoint may have, in bytes.
pub const MAX_KEY_LEN: usize = 512;

/// The weight an endpoint gets when none is given.
pub const DEFAULT_WEIGHT: u32 = 1;

/// One instance of a service that requests can be sent to.
///
/// Cheap to clone: one reference count, plus the weight, which failover's
/// slow start adjusts per view without copying the rest.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    meta: Arc<Meta>,
    weight: u32,
}

/// Everything but the weight.
#[derive(Clone, PartialEq, Eq)]
struct Meta {
    key: Arc<str>,
    address: Option<SocketAddr>,
    priority: u8,
    zone: Option<Box<str>>,
    tags: BTreeMap<String, String>,
}

impl Endpoint {
    /// An endpoint for a socket address, keyed by that address, with weight
    /// [`DEFAULT_WEIGHT`] and priority 0.
    pub fn new(address: SocketAddr) -> Self {
        Endpoint {
            meta: Arc::new(Meta {
                key: address.to_string().into(),
                address: Some(address),
                priority: 0,
                zone: None,
                tags: BTreeMap::new(),
            }),
            weight: DEFAULT_WEIGHT,
        }
    }

    /// A builder for an endpoint identified by `key` (a name or an address).
    pub fn builder(key: impl Into<String>) -> EndpointBuilder {
        EndpointBuilder {
            key: key.into(),
            address: None,
            weight: Ok(DEFAULT_WEIGHT),
            priority: Ok(0),
            zone: None,
            tags: BTreeMap::new(),
        }
    }

    /// Returns this endpoint with another weight. 0 drains it: it is never
    /// picked while any endpoint with a non-zero weight is eligible.
    #[must_use]
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Returns this endpoint with another priority tier (0 = primary).
    #[must_use]
    pub fn with_priority(mut self, priority: u8) -> Self {
        if self.meta.priority != priority {
            Arc::make_mut(&mut self.meta).priority = priority;
        }
        self
    }

    /// The stable identity of this endpoint. Two endpoints with the same key
    /// are the same instance, whatever their metadata.
    pub fn key(&self) -> &str {
        &self.meta.key
    }

    /// The socket address, when the endpoint has one.
    pub fn address(&self) -> Option<SocketAddr> {
        self.meta.address
    }

    /// The weight; 0 means draining.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// The priority tier: 0 is primary, 1 the first backup, and so on.
    pub fn priority(&self) -> u8 {
        self.meta.priority
    }

    /// The zone (availability zone, rack, region), if known.
    pub fn zone(&self) -> Option<&str> {
        self.meta.zone.as_deref()
    }

    /// Free-form tags.
    pub fn tags(&self) -> &BTreeMap<String, String> {
        &self.meta.tags
    }

    /// One tag's value.
    pub fn tag(&self, name: &str) -> Option<&str> {
        self.meta.tags.get(name).map(String::as_str)
    }

    pub(crate) fn key_arc(&self) -> &Arc<str> {
        &self.meta.key
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &*self.meta;
        let mut d = f.debug_struct("Endpoint");
        d.field("key", &&*m.key);
        if let Some(a) = m.address {
            if *m.key != *a.to_string() {
                d.field("address", &a);
            }
        }
        d.field("weight", &self.weight)
            .field("priority", &m.priority);
        if let Some(z) = &m.zone {
            d.field("zone", &&**z);
        }
        if !m.tags.is_empty() {
            d.field("tags", &m.tags);
        }
        d.finish()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.meta.key)
    }
}

/// Builds a validated [`Endpoint`]; see [`Endpoint::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct EndpointBuilder {
    key: String,
    address: Option<SocketAddr>,
    weight: Result<u32, InvalidEndpoint>,
    priority: Result<u8, InvalidEndpoint>,
    zone: Option<String>,
    tags: BTreeMap<String, String>,
}

impl EndpointBuilder {
    /// The socket address requests go to.
    pub fn address(mut self, address: SocketAddr) -> Self {
        self.address = Some(address);
        self
    }

    /// An integer weight. 0 drains the endpoint.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = Ok(weight);
        self
    }

    /// A floating-point weight, as some registries carry: rounded to the
    /// nearest integer, never below 1 unless it is 0; NaN, infinite,
    /// negative and too-large values make [`build`](Self::build) fail. See
    /// [`weight_from_f64`] for the rule.
    pub fn weight_f64(mut self, weight: f64) -> Self {
        self.weight = weight_from_f64(weight);
        self
    }

    /// The priority tier (0 = primary).
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Ok(priority);
        self
    }

    /// A priority from a wider integer, as registries carry it; more than
    /// 255 is rejected.
    pub fn priority_u64(mut self, priority: u64) -> Self {
        self.priority =
            u8::try_from(priority).map_err(|_| InvalidEndpoint::PriorityTooLarge { priority });
        self
    }

    /// The zone.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Adds a tag; a second tag with the same name replaces the first.
    pub fn tag(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(name.into(), value.into());
        self
    }

    /// Validates and builds the endpoint.
    pub fn build(self) -> Result<Endpoint, InvalidEndpoint> {
        validate_key(&self.key)?;
        let weight = self.weight?;
        let priority = self.priority?;
        let zone = match self.zone {
            Some(z) if z.is_empty() => return Err(InvalidEndpoint::EmptyZone),
            Some(z) => Some(z.into_boxed_str()),
            None => None,
        };
        if self.tags.keys().any(String::is_empty) {
            return Err(InvalidEndpoint::EmptyTagName);
        }
        Ok(Endpoint {
            meta: Arc::new(Meta {
                key: self.key.into(),
                address: self.address,
                priority,
                zone,
                tags: self.tags,
            }),
            weight,
        })
    }
}

fn validate_key(key: &str) -> Result<(), InvalidEndpoint> {
    if key.is_empty() {
        return Err(InvalidEndpoint::EmptyKey);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(InvalidEndpoint::KeyTooLong {
            len: key.len(),
            max: MAX_KEY_LEN,
        });
    }
    if key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(InvalidEndpoint::BadKeyCharacter { key: key.into() });
    }
    Ok(())
}

/// Maps a floating-point weight from a registry to a `u32` weight.
///
/// The rule:
///
/// - 0 is 0: the endpoint is drained. `-0.0` (which some serializers
///   write for zero) is the same zero, so it drains too.
/// - Any other value rounds to the nearest integer, halves away from zero
///   (as [`f64::round`] does): 1.4 becomes 1, 1.5 becomes 2, 2.5 becomes 3.
/// - A positive value never rounds down to 0: anything in (0, 0.5) becomes
///   1, so a small weight does not silently drain an endpoint.
/// - NaN, infinities and negative values, however small, are refused with
///   [`InvalidEndpoint::WeightNotFinite`]; a value that rounds above
///   `u32::MAX` is refused with [`InvalidEndpoint::WeightTooLarge`].
///
/// ```
/// use tower_lb::endpoint::weight_from_f64;
/// use tower_lb::InvalidEndpoint;
///
/// assert_eq!(weight_from_f64(0.4), Ok(1));
/// assert_eq!(weight_from_f64(1.4), Ok(1));
/// assert_eq!(weight_from_f64(2.5), Ok(3));
/// assert_eq!(weight_from_f64(-0.0), Ok(0));
/// assert!(matches!(weight_from_f64(-0.1), Err(InvalidEndpoint::WeightNotFinite { .. })));
/// assert!(matches!(weight_from_f64(1e10), Err(InvalidEndpoint::WeightTooLarge { .. })));
/// ```
pub fn weight_from_f64(weight: f64) -> Result<u32, InvalidEndpoint> {
    if !weight.is_finite() || weight.is_sign_negative() && weight != 0.0 {
        return Err(InvalidEndpoint::WeightNotFinite { weight });
    }
    if weight == 0.0 {
        return Ok(0);
    }
    let rounded = weight.round().max(1.0);
    if rounded > f64::from(u32::MAX) {
        return Err(InvalidEndpoint::WeightTooLarge { weight });
    }
    // In range and integral by the checks above.
    Ok(rounded as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_weights_round_to_nearest_with_a_floor_of_one() {
        for (given, want) in [
            (0.4, 1),
            (0.5, 1),
            (0.6, 1),
            (1.0, 1),
            (1.4, 1),
            (1.5, 2),
            (2.4, 2),
            (2.5, 3),
            (3.5, 4),
            (f64::MIN_POSITIVE, 1),
            (5e-324, 1),
            (4_294_967_294.5, u32::MAX),
            (4_294_967_295.0, u32::MAX),
            (4_294_967_295.4, u32::MAX),
        ] {
            assert_eq!(weight_from_f64(given), Ok(want), "{given}");
        }
    }

    #[test]
    fn zero_and_negative_zero_drain() {
        assert_eq!(weight_from_f64(0.0), Ok(0));
        assert_eq!(weight_from_f64(-0.0), Ok(0));
        let e = Endpoint::builder("a").weight_f64(-0.0).build().unwrap();
        assert_eq!(e.weight(), 0);
    }

    #[test]
    fn nan_infinite_negative_and_huge_weights_are_typed_errors() {
        for bad in [
            f64::NAN,
            -f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -1.0,
            -0.4,
            -1e-9,
            -5e-324,
            f64::MIN,
        ] {
            let err = weight_from_f64(bad).unwrap_err();
            assert!(
                matches!(err, InvalidEndpoint::WeightNotFinite { .. }),
                "{bad}: {err:?}"
            );
            let built = Endpoint::builder("a").weight_f64(bad).build();
            assert!(matches!(
                built,
                Err(InvalidEndpoint::WeightNotFinite { .. })
            ));
        }
        for big in [4_294_967_295.5, 4_294_967_296.0, 1e12, 1e300, f64::MAX] {
            assert!(
                matches!(
                    weight_from_f64(big),
                    Err(InvalidEndpoint::WeightTooLarge { weight }) if weight == big
                ),
                "{big}"
            );
        }
        assert_eq!(
            weight_from_f64(-2.0).unwrap_err().to_string(),
            "weight -2 is not a finite, non-negative number"
        );
    }

    #[test]
    fn builder_validates() {
        assert_eq!(
            Endpoint::builder("").build(),
            Err(InvalidEndpoint::EmptyKey)
        );
        assert!(matches!(
            Endpoint::builder("a b").build(),
            Err(InvalidEndpoint::BadKeyCharacter { .. })
        ));
        assert!(matches!(
            Endpoint::builder("x".repeat(MAX_KEY_LEN + 1)).build(),
            Err(InvalidEndpoint::KeyTooLong { .. })
        ));
        assert_eq!(
            Endpoint::builder("a").zone("").build(),
            Err(InvalidEndpoint::EmptyZone)
        );
        assert_eq!(
            Endpoint::builder("a").tag("", "v").build(),
            Err(InvalidEndpoint::EmptyTagName)
        );
        assert!(matches!(
            Endpoint::builder("a").priority_u64(256).build(),
            Err(InvalidEndpoint::PriorityTooLarge { priority: 256 })
        ));
        let e = Endpoint::builder("a")
            .weight(u32::MAX)
            .priority_u64(255)
            .tag("k", "1")
            .tag("k", "2")
            .build()
            .unwrap();
        assert_eq!(
            (e.weight(), e.priority(), e.tag("k")),
            (u32::MAX, 255, Some("2"))
        );
    }

    #[test]
    fn address_endpoint_is_keyed_by_address() {
        let e = Endpoint::new("[::1]:80".parse().unwrap()).with_weight(0);
        assert_eq!(e.key(), "[::1]:80");
        assert_eq!(e.weight(), 0);
        assert_eq!(format!("{e}"), "[::1]:80");
    }
}

//! DNS discovery: A/AAAA names and SRV records (feature `dns`).
//!
//! Why DNS: it is already there. Every platform — Kubernetes headless
//! services, Consul's DNS interface, cloud private zones, a zone file —
//! publishes instances in DNS, so a client can discover them with no
//! control plane and no agent. SRV records (RFC 2782) carry a *priority*
//! and a *weight* per instance, which are exactly this crate's priority
//! tiers and weights: an operator who edits a zone moves traffic between
//! tiers and shifts shares without touching the client.
//!
//! How: a [`DnsSource`] resolves its name with
//! [`hickory-resolver`](https://docs.rs/hickory-resolver), sends the set
//! as a snapshot, and resolves again when the answer's TTL expires.

mod source;
mod srv;

pub use source::DnsSource;

use std::task::{Context, Poll};

use super::{Source, Update};
use crate::endpoint::Endpoint;
use crate::error::DiscoveryError;

/// A fixed list of endpoints: one snapshot at revision 1, then nothing.
///
/// The source stays open after its snapshot (it never ends), so a pool fed
/// by it reports no "source ended" condition.
#[derive(Debug, Clone)]
pub struct StaticSource {
    endpoints: Option<Vec<Endpoint>>,
}

impl StaticSource {
    /// A source that yields `endpoints` once.
    pub fn new(endpoints: impl IntoIterator<Item = Endpoint>) -> Self {
        StaticSource {
            endpoints: Some(endpoints.into_iter().collect()),
        }
    }
}

impl Source for StaticSource {
    fn poll_update(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Update, DiscoveryError>>> {
        match self.endpoints.take() {
            Some(list) => Poll::Ready(Some(Ok(Update::snapshot(1, list)))),
            None => Poll::Pending,
        }
    }
}

//! Not part of the API: lets the criterion benches time one republish of
//! the eligible view without a runtime or timers.

use tokio::time::Instant;

use super::state::Tracker;
use super::{Failover, FailoverConfig, View};
use crate::endpoint::Endpoint;
use crate::pool::{Member, Pool, Snapshot, StatsHandle};

/// A snapshot of `n` endpoints in two tiers, a failover tracker over it,
/// and the [`Failover`] view it publishes into (with no driver: `run`
/// evaluates and publishes by hand).
#[derive(Debug)]
pub struct Republish {
    upstream: Snapshot<()>,
    tracker: TrackerBox,
    view: Failover<()>,
    revision: u64,
}

struct TrackerBox(Tracker);

impl std::fmt::Debug for TrackerBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracker")
    }
}

impl Republish {
    /// Sets up `n` endpoints (a fifth of them backups).
    pub fn new(n: usize) -> Self {
        let epoch = Instant::now();
        let members = (0..n)
            .map(|i| {
                let port = 10_000 + (i % 50_000) as u16;
                let ep = Endpoint::builder(format!(
                    "10.{}.{}.{}:{port}",
                    i >> 16,
                    (i >> 8) & 255,
                    i & 255
                ))
                .weight(1 + (i % 4) as u32)
                .priority(u8::from(i % 5 == 4))
                .build()
                .unwrap_or_else(|_| Endpoint::new(([127, 0, 0, 1], port).into()));
                Member::new(ep, (), StatsHandle::new(epoch))
            })
            .collect::<Vec<_>>();
        Republish {
            upstream: Snapshot::new(1, epoch, members),
            tracker: TrackerBox(Tracker::new(FailoverConfig::new())),
            view: Failover::detached(Pool::empty()),
            revision: 0,
        }
    }

    /// The view `run` publishes into: subscribe a balancer to it to time
    /// the picker's rebuild too.
    pub fn view(&self) -> &Failover<()> {
        &self.view
    }

    /// Evaluates health (outlier detection included), builds the view and
    /// publishes it, which rebuilds the pickers of balancers over it.
    /// Returns the view's size.
    pub fn run(&mut self) -> usize {
        let next = self
            .tracker
            .0
            .evaluate(&self.upstream, Instant::now(), true);
        self.revision += 1;
        let len = next.members.len();
        self.view.publish(View::new(
            self.revision,
            &self.upstream,
            next.members,
            next.groups,
            next.trials,
            next.report,
        ));
        len
    }
}

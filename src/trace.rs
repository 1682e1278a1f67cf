//! `tracing` events when the `tracing` feature is on; nothing otherwise.
//!
//! Each event's target is the module that emits it
//! (`tower_lb::failover::state`, `tower_lb::discover::etcd::worker`, …),
//! so a filter such as `RUST_LOG=tower_lb::failover=debug` selects one
//! part of the crate.

macro_rules! event {
    ($level:ident, $($arg:tt)*) => {{
        #[cfg(feature = "tracing")]
        {
            tracing::$level!(target: module_path!(), $($arg)*);
        }
    }};
}

pub(crate) use event;

#[cfg(all(test, feature = "tracing"))]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    /// Records the target of every event.
    struct Targets(Arc<Mutex<Vec<String>>>);

    impl Subscriber for Targets {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let target = event.metadata().target().to_owned();
            self.0.lock().unwrap().push(target);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn events_take_the_target_of_the_module_that_emits_them() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        tracing::subscriber::with_default(Targets(seen.clone()), || {
            super::event!(info, answer = 42, "an event");
        });
        assert_eq!(*seen.lock().unwrap(), ["tower_lb::trace::tests"]);
    }
}

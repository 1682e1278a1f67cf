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

/// A span in a [`SpanSlot`], made only when a subscriber wants it: with
/// none (or without the `tracing` feature) this is one cached check of the
/// callsite's interest, and the slot is empty.
macro_rules! span {
    ($level:ident, $($arg:tt)*) => {{
        #[cfg(feature = "tracing")]
        {
            $crate::trace::SpanSlot::new(tracing::$level!(target: module_path!(), $($arg)*))
        }
        #[cfg(not(feature = "tracing"))]
        {
            $crate::trace::SpanSlot::none()
        }
    }};
}

pub(crate) use span;

/// Whether any subscriber may want `debug` spans: one load and compare.
/// Request paths check this before they call a `#[cold]` function that
/// makes the span, so that with no subscriber they run no more code than
/// this.
#[inline(always)]
pub(crate) fn debug_spans() -> bool {
    #[cfg(feature = "tracing")]
    {
        tracing::level_enabled!(tracing::Level::DEBUG)
    }
    #[cfg(not(feature = "tracing"))]
    {
        false
    }
}

/// A span a future enters while it is polled, boxed so that an empty slot
/// costs one word (and nothing without the `tracing` feature).
#[derive(Debug, Default)]
pub(crate) struct SpanSlot {
    #[cfg(feature = "tracing")]
    span: Option<Box<tracing::Span>>,
}

impl SpanSlot {
    /// An empty slot.
    #[inline]
    pub(crate) const fn none() -> Self {
        SpanSlot {
            #[cfg(feature = "tracing")]
            span: None,
        }
    }

    /// A slot holding `span`, or empty when no subscriber took it.
    #[cfg(feature = "tracing")]
    #[inline]
    pub(crate) fn new(span: tracing::Span) -> Self {
        SpanSlot {
            span: (!span.is_disabled()).then(|| Box::new(span)),
        }
    }

    /// Whether the slot holds a span.
    #[inline]
    pub(crate) fn is_some(&self) -> bool {
        #[cfg(feature = "tracing")]
        {
            self.span.is_some()
        }
        #[cfg(not(feature = "tracing"))]
        {
            false
        }
    }

    /// Runs `f` inside the span.
    #[inline]
    pub(crate) fn in_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        #[cfg(feature = "tracing")]
        if let Some(span) = &self.span {
            return span.in_scope(f);
        }
        f()
    }

    /// Enters (a handle on) the span until the guard is dropped; the
    /// guard borrows nothing, so the slot may move meanwhile.
    #[inline]
    pub(crate) fn enter_owned(&self) -> EnteredOwned {
        #[cfg(feature = "tracing")]
        {
            self.span.as_deref().map(|s| s.clone().entered())
        }
        #[cfg(not(feature = "tracing"))]
        {
            EnteredOwned::default()
        }
    }

    /// Records a string field (declared `Empty` when the span was made).
    #[inline]
    pub(crate) fn record(&self, field: &'static str, value: &str) {
        #[cfg(feature = "tracing")]
        if let Some(span) = &self.span {
            span.record(field, value);
        }
    }

    /// Records a number field (declared `Empty` when the span was made).
    #[inline]
    pub(crate) fn record_u64(&self, field: &'static str, value: u64) {
        #[cfg(feature = "tracing")]
        if let Some(span) = &self.span {
            span.record(field, value);
        }
    }
}

/// What [`SpanSlot::enter_owned`] returns.
#[cfg(feature = "tracing")]
pub(crate) type EnteredOwned = Option<tracing::span::EnteredSpan>;
/// What [`SpanSlot::enter_owned`] returns.
#[cfg(not(feature = "tracing"))]
pub(crate) type EnteredOwned = std::marker::PhantomData<()>;

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

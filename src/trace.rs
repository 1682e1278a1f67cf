//! `tracing` events when the `tracing` feature is on; nothing otherwise.

macro_rules! event {
    ($level:ident, $($arg:tt)*) => {{
        #[cfg(feature = "tracing")]
        {
            tracing::$level!(target: "tower_lb", $($arg)*);
        }
    }};
}

pub(crate) use event;

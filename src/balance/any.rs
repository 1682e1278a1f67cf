//! A strategy chosen at run time, by name: from a config file, a flag or
//! an environment variable.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::hash::{KeyHash, Maglev, Rendezvous, Ring};
use super::hash::{MaglevPicker, RendezvousPicker, RingPicker};
use super::p2c::{LeastInFlightPicker, PeakEwmaPicker};
use super::random::RandomPicker;
use super::round_robin::RoundRobinPicker;
use super::weighted_random::WeightedRandomPicker;
use super::weighted_round_robin::WeightedRoundRobinPicker;
use super::{BuildContext, PickContext, Picker, Strategy};
use super::{LeastInFlight, PeakEwma, Random, RoundRobin, WeightedRandom, WeightedRoundRobin};
use crate::error::InvalidSetting;
use crate::pool::Members;

/// Any of the crate's strategies, chosen at run time.
///
/// Parse one from its name ([`AnyStrategy::NAMES`]; case and `-` for `_`
/// do not matter, and `least_in_flight` and `peak_ewma` name the two power
/// of two choices strategies too), or wrap a configured one with `From`.
/// It routes exactly as the strategy it holds, with the same seed; each
/// pick costs one more branch on the variant. Code that knows its strategy
/// at compile time keeps using the strategy's own type.
///
/// With the `serde` feature it serializes as its name, and deserializes
/// from one. Settings beyond the name (a Peak-EWMA decay, a Maglev table
/// size) are set in code: `AnyStrategy::from(PeakEwma::new().decay(..))`.
///
/// ```
/// use tower_lb::balance::{AnyStrategy, PeakEwma};
///
/// let strategy: AnyStrategy = "p2c_peak_ewma".parse().unwrap();
/// assert_eq!(strategy.name(), "p2c_peak_ewma");
/// assert_eq!(strategy.to_string(), "p2c_peak_ewma");
///
/// let err = "fastest".parse::<AnyStrategy>().unwrap_err();
/// assert_eq!(err.value(), "\"fastest\"");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AnyStrategy {
    /// [`RoundRobin`]: `round_robin`.
    RoundRobin(RoundRobin),
    /// [`Random`]: `random`.
    Random(Random),
    /// [`WeightedRoundRobin`]: `weighted_round_robin`.
    WeightedRoundRobin(WeightedRoundRobin),
    /// [`WeightedRandom`]: `weighted_random`.
    WeightedRandom(WeightedRandom),
    /// [`LeastInFlight`]: `p2c_least_in_flight`.
    LeastInFlight(LeastInFlight),
    /// [`PeakEwma`]: `p2c_peak_ewma`.
    PeakEwma(PeakEwma),
    /// [`Maglev`], with its default fallback: `maglev`.
    Maglev(Maglev),
    /// [`Ring`], with its default fallback: `ring`.
    Ring(Ring),
    /// [`Rendezvous`], with its default fallback: `rendezvous`.
    Rendezvous(Rendezvous),
}

impl AnyStrategy {
    /// Every strategy's name, as [`name`](AnyStrategy::name) gives it.
    pub const NAMES: [&'static str; 9] = [
        "round_robin",
        "random",
        "weighted_round_robin",
        "weighted_random",
        "p2c_least_in_flight",
        "p2c_peak_ewma",
        "maglev",
        "ring",
        "rendezvous",
    ];

    /// The strategy's name, which [`FromStr`] reads back.
    pub fn name(&self) -> &'static str {
        let at = match self {
            AnyStrategy::RoundRobin(_) => 0,
            AnyStrategy::Random(_) => 1,
            AnyStrategy::WeightedRoundRobin(_) => 2,
            AnyStrategy::WeightedRandom(_) => 3,
            AnyStrategy::LeastInFlight(_) => 4,
            AnyStrategy::PeakEwma(_) => 5,
            AnyStrategy::Maglev(_) => 6,
            AnyStrategy::Ring(_) => 7,
            AnyStrategy::Rendezvous(_) => 8,
        };
        Self::NAMES[at]
    }

    /// The strategy named `name`, with its default settings.
    fn named(name: &str) -> Option<Self> {
        let name = name.trim().to_ascii_lowercase().replace('-', "_");
        Some(match name.as_str() {
            "round_robin" => RoundRobin.into(),
            "random" => Random.into(),
            "weighted_round_robin" => WeightedRoundRobin.into(),
            "weighted_random" => WeightedRandom.into(),
            "p2c_least_in_flight" | "least_in_flight" => LeastInFlight.into(),
            "p2c_peak_ewma" | "peak_ewma" => PeakEwma::new().into(),
            "maglev" => Maglev::new().into(),
            "ring" => Ring::new().into(),
            "rendezvous" => Rendezvous::new().into(),
            _ => return None,
        })
    }
}

impl FromStr for AnyStrategy {
    type Err = InvalidSetting;

    /// The strategy with this name, or an [`InvalidSetting`] listing the
    /// names there are.
    fn from_str(name: &str) -> Result<Self, InvalidSetting> {
        Self::named(name).ok_or_else(|| {
            InvalidSetting::new(
                "AnyStrategy::from_str",
                name,
                "must be one of round_robin, random, weighted_round_robin, weighted_random, \
                 p2c_least_in_flight, p2c_peak_ewma, maglev, ring, rendezvous",
            )
        })
    }
}

impl fmt::Display for AnyStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

macro_rules! any_strategy {
    ($($variant:ident($strategy:ty) => $picker:ty),* $(,)?) => {
        $(
            impl From<$strategy> for AnyStrategy {
                fn from(s: $strategy) -> Self {
                    AnyStrategy::$variant(s)
                }
            }
        )*

        /// The picker of an [`AnyStrategy`]: the picker of the strategy it
        /// holds.
        #[derive(Debug)]
        pub struct AnyPicker(Inner);

        #[derive(Debug)]
        enum Inner {
            $($variant($picker),)*
        }

        impl Strategy for AnyStrategy {
            type Picker = AnyPicker;

            fn build<S>(&self, members: Members<'_, S>, ctx: &BuildContext<'_>) -> AnyPicker {
                AnyPicker(match self {
                    $(AnyStrategy::$variant(s) => Inner::$variant(s.build(members, ctx)),)*
                })
            }

            fn rebuild_delay<S>(&self, members: Members<'_, S>) -> Duration {
                match self {
                    $(AnyStrategy::$variant(s) => s.rebuild_delay(members),)*
                }
            }

            fn name(&self) -> &'static str {
                AnyStrategy::name(self)
            }

            fn key_hash(&self) -> KeyHash {
                match self {
                    $(AnyStrategy::$variant(s) => s.key_hash(),)*
                }
            }
        }

        impl Picker for AnyPicker {
            #[inline]
            fn pick<S>(&self, members: Members<'_, S>, ctx: &PickContext<'_>) -> Option<usize> {
                match &self.0 {
                    $(Inner::$variant(p) => p.pick(members, ctx),)*
                }
            }

            #[inline]
            fn pick_nth<S>(
                &self,
                members: Members<'_, S>,
                ctx: &PickContext<'_>,
                n: usize,
            ) -> Option<usize> {
                match &self.0 {
                    $(Inner::$variant(p) => p.pick_nth(members, ctx, n),)*
                }
            }

            fn ewma_decay(&self) -> Option<Duration> {
                match &self.0 {
                    $(Inner::$variant(p) => p.ewma_decay(),)*
                }
            }
        }
    };
}

any_strategy! {
    RoundRobin(RoundRobin) => RoundRobinPicker,
    Random(Random) => RandomPicker,
    WeightedRoundRobin(WeightedRoundRobin) => WeightedRoundRobinPicker,
    WeightedRandom(WeightedRandom) => WeightedRandomPicker,
    LeastInFlight(LeastInFlight) => LeastInFlightPicker,
    PeakEwma(PeakEwma) => PeakEwmaPicker,
    Maglev(Maglev) => MaglevPicker<WeightedRoundRobinPicker>,
    Ring(Ring) => RingPicker<WeightedRoundRobinPicker>,
    Rendezvous(Rendezvous) => RendezvousPicker<WeightedRoundRobinPicker>,
}

#[cfg(feature = "serde")]
impl serde::Serialize for AnyStrategy {
    fn serialize<Ser: serde::Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        serializer.serialize_str(self.name())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for AnyStrategy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_to_the_strategy_that_gives_it_back() {
        for name in AnyStrategy::NAMES {
            let s: AnyStrategy = name.parse().expect("a known name");
            assert_eq!(s.name(), name);
            assert_eq!(s.to_string(), name);
        }
    }

    #[test]
    fn names_ignore_case_dashes_and_the_p2c_prefix() {
        let s: AnyStrategy = " P2C-Peak-EWMA ".parse().expect("a known name");
        assert_eq!(s.name(), "p2c_peak_ewma");
        let s: AnyStrategy = "least_in_flight".parse().expect("a known name");
        assert_eq!(s.name(), "p2c_least_in_flight");
    }

    #[test]
    fn an_unknown_name_is_an_invalid_setting_naming_the_choices() {
        let err = "fastest".parse::<AnyStrategy>().unwrap_err();
        assert_eq!(err.setting(), "AnyStrategy::from_str");
        assert!(err.to_string().contains("p2c_peak_ewma"), "{err}");
        assert!("".parse::<AnyStrategy>().is_err());
    }

    #[test]
    fn each_strategy_names_itself_as_any_strategy_does() {
        fn trait_name<St: Strategy>(s: &St) -> &'static str {
            s.name()
        }
        for name in AnyStrategy::NAMES {
            let any: AnyStrategy = name.parse().unwrap();
            assert_eq!(trait_name(&any), name);
            let held = match &any {
                AnyStrategy::RoundRobin(s) => trait_name(s),
                AnyStrategy::Random(s) => trait_name(s),
                AnyStrategy::WeightedRoundRobin(s) => trait_name(s),
                AnyStrategy::WeightedRandom(s) => trait_name(s),
                AnyStrategy::LeastInFlight(s) => trait_name(s),
                AnyStrategy::PeakEwma(s) => trait_name(s),
                AnyStrategy::Maglev(s) => trait_name(s),
                AnyStrategy::Ring(s) => trait_name(s),
                AnyStrategy::Rendezvous(s) => trait_name(s),
            };
            assert_eq!(held, name);
        }
    }

    #[test]
    fn the_key_hash_is_the_held_strategys() {
        let ring: AnyStrategy = "ring".parse().unwrap();
        assert_eq!(ring.key_hash(), KeyHash::Crc32);
        let maglev: AnyStrategy = "maglev".parse().unwrap();
        assert_eq!(maglev.key_hash(), KeyHash::Xxh64);
    }
}

//! Hybrid logical clocks: the timestamps that order setting writes across devices.
//!
//! A stamp is a wall-clock reading in milliseconds plus a counter that orders events within the
//! same millisecond (or while the wall clock stands still or goes backwards). Stamps only grow:
//! every device [`tick`](Hlc::tick)s its clock for a local write and [`observe`](Hlc::observe)s
//! every stamp it receives, so a write made after seeing another always carries a larger stamp,
//! whatever the devices' clocks say.
//!
//! On the wire a stamp is the fixed-width string `MMMMMMMMMMMMMMM-CCCCCCCCCC` (15 digits of
//! milliseconds, a dash, 10 digits of counter), e.g. `001763920000000-0000000003`. Because the
//! width is fixed, comparing the strings byte by byte gives the same order as comparing stamps,
//! which lets a database index them as text.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Length of the text form: 15 digits, a dash, 10 digits.
pub const HLC_TEXT_LEN: usize = 15 + 1 + 10;

/// A hybrid logical clock stamp. Ordered by `millis`, then `counter` (the field order matters for
/// the derived `Ord`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hlc {
    /// Wall-clock milliseconds since the Unix epoch (as far as the clock knows).
    pub millis: u64,
    /// Orders stamps that share `millis`.
    pub counter: u32,
}

impl Hlc {
    /// The smallest stamp, older than every real one.
    pub const ZERO: Hlc = Hlc {
        millis: 0,
        counter: 0,
    };

    /// The largest `millis` the 15-digit text form can carry (about the year 33658).
    /// Stamps beyond it have no text form: serializing one fails.
    pub const MAX_MILLIS: u64 = 999_999_999_999_999;

    /// A stamp from its parts.
    pub const fn new(millis: u64, counter: u32) -> Hlc {
        Hlc { millis, counter }
    }

    /// The stamp for a local event at wall-clock `now_ms`.
    ///
    /// If the wall clock is ahead of this stamp the result is `(now_ms, 0)`; otherwise (same
    /// millisecond, or the clock went backwards) it is `(self.millis, self.counter + 1)`. Either
    /// way the result is greater than `self`, so stamps stay monotonic whatever the clock does.
    ///
    /// Counter overflow: when `counter` is already `u32::MAX` the stamp moves on to
    /// `(self.millis + 1, 0)` instead, borrowing a millisecond from the future; this still
    /// orders after `self`. (Only `Hlc { millis: u64::MAX, counter: u32::MAX }` cannot advance and
    /// is returned unchanged; it is far outside [`Hlc::MAX_MILLIS`] anyway.)
    pub fn tick(self, now_ms: u64) -> Hlc {
        if now_ms > self.millis {
            Hlc::new(now_ms, 0)
        } else {
            self.successor()
        }
    }

    /// The stamp after receiving `remote` at wall-clock `now_ms` (the standard HLC receive rule).
    ///
    /// The result is greater than both `self` and `remote`, and its `millis` is at least
    /// `now_ms`. Counter overflow is handled as in [`Hlc::tick`].
    pub fn observe(self, remote: Hlc, now_ms: u64) -> Hlc {
        let millis = self.millis.max(remote.millis).max(now_ms);
        if millis == self.millis && millis == remote.millis {
            Hlc::new(millis, self.counter.max(remote.counter)).successor()
        } else if millis == self.millis {
            self.successor()
        } else if millis == remote.millis {
            remote.successor()
        } else {
            Hlc::new(millis, 0)
        }
    }

    /// Whether this stamp claims a time more than `max_ahead_ms` after `now_ms`.
    ///
    /// A server should refuse such writes: a stamp from far in the future would win every merge
    /// until the real clock catches up, and would drag every clock that observes it along.
    pub fn is_too_far_ahead(self, now_ms: u64, max_ahead_ms: u64) -> bool {
        self.millis > now_ms.saturating_add(max_ahead_ms)
    }

    /// The next stamp in order, saturating the counter into the next millisecond.
    fn successor(self) -> Hlc {
        match self.counter.checked_add(1) {
            Some(counter) => Hlc::new(self.millis, counter),
            None => match self.millis.checked_add(1) {
                Some(millis) => Hlc::new(millis, 0),
                None => self,
            },
        }
    }
}

impl fmt::Display for Hlc {
    /// `{millis:015}-{counter:010}`, e.g. `001763920000000-0000000003`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:015}-{:010}", self.millis, self.counter)
    }
}

/// A string that is not a stamp's text form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HlcError;

impl fmt::Display for HlcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "hlc must look like 001763920000000-0000000000 \
             (15-digit milliseconds, dash, 10-digit counter)",
        )
    }
}

impl std::error::Error for HlcError {}

impl FromStr for Hlc {
    type Err = HlcError;

    /// Strict: exactly 15 ASCII digits, `-`, 10 ASCII digits, and the counter must fit a `u32`.
    fn from_str(s: &str) -> Result<Hlc, HlcError> {
        let bytes = s.as_bytes();
        if bytes.len() != HLC_TEXT_LEN || bytes[15] != b'-' {
            return Err(HlcError);
        }
        let (millis, counter) = (&s[..15], &s[16..]);
        if !all_digits(millis) || !all_digits(counter) {
            return Err(HlcError);
        }
        let millis: u64 = millis.parse().map_err(|_| HlcError)?;
        let counter: u64 = counter.parse().map_err(|_| HlcError)?;
        let counter = u32::try_from(counter).map_err(|_| HlcError)?;
        Ok(Hlc::new(millis, counter))
    }
}

fn all_digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

impl Serialize for Hlc {
    /// As the text form; fails for stamps beyond [`Hlc::MAX_MILLIS`], which have none.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.millis > Hlc::MAX_MILLIS {
            return Err(serde::ser::Error::custom(
                "hlc milliseconds do not fit in 15 digits",
            ));
        }
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Hlc {
    /// From the text form only (strict, as [`FromStr`]).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Hlc, D::Error> {
        struct HlcVisitor;

        impl Visitor<'_> for HlcVisitor {
            type Value = Hlc;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an hlc string like 001763920000000-0000000000")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Hlc, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(HlcVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tick_follows_the_wall_clock_when_it_moves_forward() {
        assert_eq!(Hlc::ZERO.tick(1000), Hlc::new(1000, 0));
        assert_eq!(Hlc::new(1000, 7).tick(1001), Hlc::new(1001, 0));
    }

    #[test]
    fn tick_stays_monotonic_when_the_clock_stalls_or_goes_backwards() {
        let a = Hlc::ZERO.tick(5000);
        let b = a.tick(5000);
        let c = b.tick(4000);
        let d = c.tick(1);
        assert_eq!(b, Hlc::new(5000, 1));
        assert_eq!(c, Hlc::new(5000, 2));
        assert_eq!(d, Hlc::new(5000, 3));
        assert!(a < b && b < c && c < d);
    }

    #[test]
    fn tick_moves_to_the_next_millisecond_when_the_counter_overflows() {
        let full = Hlc::new(5000, u32::MAX);
        assert_eq!(full.tick(10), Hlc::new(5001, 0));
        assert!(full.tick(10) > full);
        let remote_full = Hlc::new(9000, u32::MAX);
        assert_eq!(Hlc::ZERO.observe(remote_full, 1), Hlc::new(9001, 0));
    }

    #[test]
    fn observe_is_after_both_inputs_and_not_before_now() {
        let local = Hlc::new(100, 5);
        // Remote ahead.
        assert_eq!(local.observe(Hlc::new(200, 3), 50), Hlc::new(200, 4));
        // Local ahead.
        assert_eq!(local.observe(Hlc::new(50, 9), 10), Hlc::new(100, 6));
        // Same millisecond: the larger counter plus one.
        assert_eq!(local.observe(Hlc::new(100, 9), 10), Hlc::new(100, 10));
        // Wall clock ahead of both.
        assert_eq!(local.observe(Hlc::new(200, 3), 300), Hlc::new(300, 0));
    }

    #[test]
    fn text_form_is_fixed_width() {
        let hlc = Hlc::new(1_763_920_000_000, 3);
        assert_eq!(hlc.to_string(), "001763920000000-0000000003");
        assert_eq!("001763920000000-0000000003".parse(), Ok(hlc));
        assert_eq!(
            Hlc::ZERO.to_string().parse::<Hlc>(),
            Ok(Hlc::ZERO),
            "zero round-trips"
        );
        let max = Hlc::new(Hlc::MAX_MILLIS, u32::MAX);
        assert_eq!(max.to_string(), "999999999999999-4294967295");
        assert_eq!(max.to_string().parse(), Ok(max));
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in [
            "",
            "1-2",
            "00176392000000a-0000000000",
            "001763920000000-000000000a",
            "001763920000000-00000000000",
            "0017639200000000-000000000",
            "001763920000000_0000000000",
            "001763920000000-4294967296",
            "001763920000000-9999999999",
            "+01763920000000-0000000000",
            "001763920000000-+000000000",
            " 001763920000000-0000000000",
            "001763920000000-0000000000 ",
            "００1763920000000-0000000000",
        ] {
            assert_eq!(bad.parse::<Hlc>(), Err(HlcError), "{bad:?}");
        }
    }

    #[test]
    fn error_message_shows_the_expected_shape() {
        assert_eq!(
            HlcError.to_string(),
            "hlc must look like 001763920000000-0000000000 \
             (15-digit milliseconds, dash, 10-digit counter)"
        );
    }

    #[test]
    fn serde_uses_the_text_form() {
        let hlc = Hlc::new(1_763_920_000_000, 42);
        let json = serde_json::to_string(&hlc).unwrap();
        assert_eq!(json, "\"001763920000000-0000000042\"");
        assert_eq!(serde_json::from_str::<Hlc>(&json).unwrap(), hlc);
        assert!(serde_json::from_str::<Hlc>("\"1-2\"").is_err());
        assert!(serde_json::from_str::<Hlc>("17").is_err());
        assert!(serde_json::to_string(&Hlc::new(Hlc::MAX_MILLIS + 1, 0)).is_err());
    }

    #[test]
    fn too_far_ahead() {
        let now = 1_000_000;
        assert!(!Hlc::new(now, 0).is_too_far_ahead(now, 60_000));
        assert!(!Hlc::new(now + 60_000, u32::MAX).is_too_far_ahead(now, 60_000));
        assert!(Hlc::new(now + 60_001, 0).is_too_far_ahead(now, 60_000));
        assert!(!Hlc::new(u64::MAX, 0).is_too_far_ahead(u64::MAX - 1, u64::MAX));
    }

    fn any_hlc() -> impl Strategy<Value = Hlc> {
        prop_oneof![
            (0..=Hlc::MAX_MILLIS, any::<u32>()),
            // Small ranges so that equal millis (and counters) come up often.
            (0u64..4, 0u32..4),
        ]
        .prop_map(|(m, c)| Hlc::new(m, c))
    }

    proptest! {
        #[test]
        fn string_order_equals_stamp_order(a in any_hlc(), b in any_hlc()) {
            prop_assert_eq!(a.to_string().cmp(&b.to_string()), a.cmp(&b));
        }

        #[test]
        fn text_and_serde_round_trip(a in any_hlc()) {
            prop_assert_eq!(a.to_string().parse::<Hlc>(), Ok(a));
            let json = serde_json::to_string(&a).unwrap();
            prop_assert_eq!(serde_json::from_str::<Hlc>(&json).unwrap(), a);
        }

        #[test]
        fn tick_is_strictly_monotonic(start in any_hlc(), clock in prop::collection::vec(0u64..10, 1..50)) {
            let mut hlc = start;
            for now in clock {
                let next = hlc.tick(now);
                prop_assert!(next > hlc);
                prop_assert!(next.millis >= now);
                hlc = next;
            }
        }

        #[test]
        fn observe_is_after_both(local in any_hlc(), remote in any_hlc(), now in 0u64..10) {
            let next = local.observe(remote, now);
            prop_assert!(next > local);
            prop_assert!(next > remote);
            prop_assert!(next.millis >= now);
        }
    }
}

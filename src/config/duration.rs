//! Durations as operators write them: `"500ms"`, `"2s"`, `"1m"`, `"1h"`.
//!
//! A bare number is refused on purpose: `timeout = 2` could mean seconds or
//! milliseconds, and guessing wrong by a factor of 1000 is an outage.
//!
//! Not the `humantime` crate: it accepts more than a config should (months
//! and years of fractional days, several parts in one value) and its errors
//! give a byte offset where dbsplice's give the fix.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration read from the config file, with the text it was written as.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigDuration(pub Duration);

impl fmt::Debug for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

/// Parses `"<integer><unit>"` with unit `ms`, `s`, `m` or `h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
        format!("\"{text}\" has no unit; write for example \"{text}s\" or \"{text}ms\"")
    })?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "\"{text}\" is not a duration; write a whole number and a unit: \"500ms\", \"2s\", \"1m\""
        ));
    }
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("\"{text}\" is too large for a duration"))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
            "\"{text}\" has unknown unit \"{unit}\"; use ms, s, m or h, as in \"500ms\" or \"2s\""
        ))
        }
    };
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("\"{text}\" is too large for a duration"))
}

/// Formats a duration the way the config file accepts it back.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".to_owned()
    } else if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1_000 == 0 {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"500ms\", \"2s\" or \"1m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_duration(v).map(ConfigDuration).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "a bare number ({v}) has no unit; write a string such as \"{v}s\" or \"{v}ms\""
                )))
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        let table = [
            ("500ms", 500),
            ("2s", 2_000),
            ("1m", 60_000),
            ("1h", 3_600_000),
            ("0s", 0),
            (" 3s ", 3_000),
        ];
        for (text, ms) in table {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
    }

    #[test]
    fn refuses_what_is_ambiguous_or_wrong() {
        for text in [
            "2",
            "s",
            "",
            "2 s",
            "1.5s",
            "2sec",
            "-1s",
            "99999999999999999999s",
        ] {
            let err = parse_duration(text).unwrap_err();
            assert!(err.contains('"'), "{text}: {err}");
        }
        assert!(parse_duration("2").unwrap_err().contains("\"2s\""));
    }

    #[test]
    fn formats_round_trip() {
        for ms in [0, 1, 500, 1_000, 1_500, 60_000, 90_000, 3_600_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}

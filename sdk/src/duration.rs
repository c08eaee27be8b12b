//! Durations as people write them: `500ms`, `10s`, `5m`, `1h`. One syntax for every duration
//! of a configuration ([`NodeConfig`](crate::NodeConfig)'s serde form) and for the `ferry`
//! binary's flags and config file.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Duration;

/// Why a text is no duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// No unsigned integer where the number should be.
    #[error("invalid duration {0:?}: use e.g. 10s or 500ms")]
    Number(String),
    /// A unit other than `ms`, `s`, `m` and `h`.
    #[error("invalid duration unit in {0:?}: use ms, s, m or h")]
    Unit(String),
    /// More seconds than a `u64` holds.
    #[error("duration {0:?} is too large")]
    TooLarge(String),
}

/// Parses `<integer><unit>` with unit `ms`, `s`, `m` or `h`; a bare integer means seconds.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |at| text.split_at(at));
    let number: u64 = number
        .parse()
        .map_err(|_| DurationError::Number(text.to_owned()))?;
    let seconds = |factor: u64| {
        number
            .checked_mul(factor)
            .map(Duration::from_secs)
            .ok_or_else(|| DurationError::TooLarge(text.to_owned()))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        _ => Err(DurationError::Unit(text.to_owned())),
    }
}

/// Deserializes a duration from its text (`#[serde(with = "ferry::duration")]`): a string,
/// never a bare number, so that the unit is always written down.
pub fn deserialize<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    struct Text;
    impl serde::de::Visitor<'_> for Text {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(r#"a duration string such as "10s" or "500ms""#)
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
            parse_duration(text).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(Text)
}

/// The shortest text [`parse_duration`] reads back as `duration` (to the millisecond).
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if !millis.is_multiple_of(1000) || millis == 0 {
        return format!("{millis}ms");
    }
    let seconds = millis / 1000;
    if seconds.is_multiple_of(3600) {
        format!("{}h", seconds / 3600)
    } else if seconds.is_multiple_of(60) {
        format!("{}m", seconds / 60)
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bare_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn malformed_durations_are_refused() {
        for bad in [
            "",
            "s",
            "10x",
            "1.5s",
            "-1s",
            " 10s",
            "10 s",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(parse_duration("18446744073709551615h").is_err());
    }

    #[test]
    fn formatting_round_trips() {
        for millis in [
            0, 1, 250, 1000, 1500, 30_000, 60_000, 90_000, 3_600_000, 7_200_000,
        ] {
            let duration = Duration::from_millis(millis);
            assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
    }
}

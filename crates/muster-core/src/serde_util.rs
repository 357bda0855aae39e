//! Serde helpers for the wire forms of durations ("30s") and timestamps (RFC 3339).

/// Milliseconds, written and read as a human duration such as `"30s"` or `"1m 30s"`.
pub(crate) mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(Duration::from_millis(*ms)))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::parse_duration_ms(&text).map_err(D::Error::custom)
    }
}

/// Milliseconds since the Unix epoch, written and read as RFC 3339 (`2026-04-18T10:00:00.000Z`).
pub(crate) mod timestamp_ms {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};
    use std::time::{Duration, UNIX_EPOCH};

    pub(crate) fn serialize<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&super::format_timestamp(*ms))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let t = humantime::parse_rfc3339(&text).map_err(D::Error::custom)?;
        let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Ok(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Formats milliseconds since the Unix epoch as RFC 3339 with millisecond precision.
pub fn format_timestamp(ms: u64) -> impl std::fmt::Display {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

/// Parses a human duration (`"30s"`, `"1m30s"`, `"1500ms"`) into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("expected a duration such as \"30s\" or \"1m\", got {text:?}: {e}"))?;
    u64::try_from(d.as_millis()).map_err(|_| format!("duration {text:?} is too large"))
}

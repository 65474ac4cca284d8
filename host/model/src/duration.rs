//! Durations written the way operators write them in configuration and
//! playbooks: a whole number and a unit, such as `500ms`, `30s`, `15m`,
//! `4h` or `2d`.

use std::time::Duration;

/// Accepted forms, for error messages.
pub const DURATION_FORMS: &str =
    "a whole number and a unit: ms, s, m, h or d, such as 30s, 15m or 4h";

/// Parses `text` as a duration. `0` alone is accepted as zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed == "0" {
        return Ok(Duration::ZERO);
    }
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let invalid = || format!("{text:?} is not a duration; write {DURATION_FORMS}");
    let amount: u64 = digits.parse().map_err(|_| invalid())?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(invalid()),
    };
    let millis = amount
        .checked_mul(unit_ms)
        .filter(|ms| *ms <= MAX_DURATION_MS)
        .ok_or_else(|| format!("{text:?} is longer than 365 days; write a shorter duration"))?;
    Ok(Duration::from_millis(millis))
}

/// Longest duration accepted: 365 days.
const MAX_DURATION_MS: u64 = 365 * 86_400_000;

/// Writes `duration` in the largest unit that divides it exactly.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis() as u64;
    if millis == 0 {
        return "0".to_string();
    }
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if millis.is_multiple_of(size) {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("4h").unwrap(), Duration::from_secs(14_400));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn bad_forms_are_named() {
        for text in ["", "15", "m", "1.5h", "-1s", "4 h", "3w", "1e3s"] {
            let error = parse_duration(text).unwrap_err();
            assert!(error.contains(&format!("{text:?}")), "{error}");
        }
        assert!(parse_duration("400d").unwrap_err().contains("365 days"));
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn formatting_round_trips() {
        for text in ["500ms", "30s", "15m", "4h", "2d", "0", "90s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }
}

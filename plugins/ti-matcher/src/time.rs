//! RFC 3339 timestamps, as STIX uses them, converted to Unix milliseconds.

/// Parses an RFC 3339 timestamp such as `2014-05-08T09:00:00.000000Z` or
/// `2024-01-31T23:59:59+02:00` into milliseconds since the Unix epoch.
///
/// Fractions of a second beyond milliseconds are truncated. Leap seconds
/// (second 60) are accepted and count as the next second.
///
/// # Errors
///
/// Returns a message naming the timestamp when it is malformed, out of
/// range, or before 1970.
pub fn parse_rfc3339_ms(text: &str) -> Result<u64, String> {
    parse_fields(text).ok_or_else(|| format!("invalid RFC 3339 timestamp {text:?}"))
}

fn parse_fields(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes[4] != b'-' || bytes[7] != b'-' || bytes[13] != b':' {
        return None;
    }
    if !matches!(bytes[10], b'T' | b't' | b' ') || bytes[16] != b':' {
        return None;
    }

    let year = digits(text, 0, 4)?;
    let month = digits(text, 5, 7)?;
    let day = digits(text, 8, 10)?;
    let hour = digits(text, 11, 13)?;
    let minute = digits(text, 14, 16)?;
    let second = digits(text, 17, 19)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }

    // An optional fraction follows the seconds, then the zone.
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let length = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if length == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &fraction[..length.min(3)]);
        millis = padded.parse::<i64>().ok()?;
        rest = &fraction[length..];
    }
    let offset_minutes = parse_zone(rest)?;

    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    u64::try_from(seconds * 1_000 + millis).ok()
}

fn digits(text: &str, start: usize, end: usize) -> Option<i64> {
    let part = text.get(start..end)?;
    if part.bytes().all(|byte| byte.is_ascii_digit()) {
        part.parse().ok()
    } else {
        None
    }
}

/// Parses `Z` or `±HH:MM` into an offset east of UTC, in minutes.
fn parse_zone(zone: &str) -> Option<i64> {
    if zone == "Z" || zone == "z" {
        return Some(0);
    }
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    if zone.len() != 6 || zone.as_bytes()[3] != b':' {
        return None;
    }
    let hours = digits(zone, 1, 3)?;
    let minutes = digits(zone, 4, 6)?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some(sign * (hours * 60 + minutes))
}

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Counts days from 1970-01-01 to the given proleptic Gregorian date.
///
/// The year is shifted to start in March, so the leap day falls at the end
/// of a year, and counted in 400-year cycles of 146,097 days.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let shifted_year = if month <= 2 { year - 1 } else { year };
    let cycle = shifted_year.div_euclid(400);
    let year_of_cycle = shifted_year - cycle * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_cycle = year_of_cycle * 365 + year_of_cycle / 4 - year_of_cycle / 100 + day_of_year;
    // 719,468 days separate 0000-03-01 from 1970-01-01.
    cycle * 146_097 + day_of_cycle - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_is_zero() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Ok(0));
    }

    #[test]
    fn stix_example_timestamp_parses() {
        // 2014-05-08T09:00:00Z is 1,399,539,600 seconds after the epoch.
        assert_eq!(
            parse_rfc3339_ms("2014-05-08T09:00:00.000000Z"),
            Ok(1_399_539_600_000)
        );
    }

    #[test]
    fn fraction_gives_milliseconds() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.5Z"), Ok(1_500));
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.123456Z"), Ok(1_123));
    }

    #[test]
    fn offset_moves_to_utc() {
        assert_eq!(
            parse_rfc3339_ms("1970-01-01T02:00:00+02:00"),
            Ok(0),
            "two hours east of UTC"
        );
        assert_eq!(parse_rfc3339_ms("1969-12-31T23:00:00-01:00"), Ok(0));
    }

    #[test]
    fn leap_day_is_accepted_only_in_leap_years() {
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T00:00:00Z"),
            Ok(1_709_164_800_000)
        );
        assert!(parse_rfc3339_ms("2023-02-29T00:00:00Z").is_err());
        assert!(parse_rfc3339_ms("1900-02-29T00:00:00Z").is_err());
    }

    #[test]
    fn malformed_timestamps_are_rejected() {
        for text in [
            "2014-05-08",
            "2014-05-08T09:00:00",
            "2014-13-08T09:00:00Z",
            "2014-05-08T24:00:00Z",
            "2014-05-08T09:00:00.Z",
            "2014-05-08T09:00:00+0200",
            "1969-12-31T23:59:59Z",
        ] {
            assert!(parse_rfc3339_ms(text).is_err(), "accepted {text:?}");
        }
    }
}

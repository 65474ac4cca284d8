//! IPv4 and IPv6 addresses.
//!
//! IPv4 takes only the plain dotted-quad form: four decimal parts of 0 to
//! 255 without leading zeros. `010.1.1.1` is rejected because some parsers
//! read a leading zero as octal, so the value the analyst would look up is
//! ambiguous. A dotted quad that is part of a longer dotted sequence
//! (`1.2.3.4.5`, `4.3.2.1.in-addr.arpa`), glued to a word (`v10.0.2.15`),
//! after a product token (`Chrome/67.0.3396.99`) or after a version keyword
//! is a version number, not an address.
//!
//! IPv6 candidates are runs of hex digits, colons and dots that the standard
//! library parses, printed in the RFC 5952 compressed form. A bare `::` is
//! not taken, because it is far more often a path separator in code, and
//! neither are eight two-digit groups without `::`, the shape of a
//! certificate serial. A zone index (`%eth0`) is dropped.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::extract::{Kind, Sighting};
use crate::source::{Field, Source, is_word_byte};

/// Words that, just before a dotted quad, make it a version number.
const VERSION_WORDS: &[&str] = &["version", "ver", "v", "build", "release", "rev", "revision"];

/// Parses a strict dotted quad.
pub fn parse_ipv4(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        let digits_only = part.bytes().all(|byte| byte.is_ascii_digit());
        let leading_zero = part.len() > 1 && part.starts_with('0');
        if part.is_empty() || part.len() > 3 || !digits_only || leading_zero {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(octets))
}

fn is_ipv4_byte(byte: u8) -> bool {
    byte.is_ascii_digit() || byte == b'.'
}

fn is_ipv6_byte(byte: u8) -> bool {
    byte.is_ascii_hexdigit() || byte == b':' || byte == b'.'
}

/// Finds IPv6 addresses in the unclaimed parts of `source`.
pub fn scan_ipv6(source: &mut Source, out: &mut Vec<Sighting>) {
    for (start, end) in unclaimed_runs(source, is_ipv6_byte) {
        if let Some(sighting) = read_ipv6(source, start, end) {
            out.push(sighting);
        }
    }
}

fn read_ipv6(source: &mut Source, start: usize, end: usize) -> Option<Sighting> {
    let bytes = source.bytes();
    let run = &bytes[start..end];
    if run.iter().filter(|byte| **byte == b':').count() < 2 {
        return None;
    }

    // A single leading colon separates a key (`addr:fe80::1`), so the word
    // before it does not matter. Otherwise the run must not touch a word.
    let mut first = start;
    if run.starts_with(b":") && !run.starts_with(b"::") {
        first += 1;
    } else if source.word_before(start) {
        return None;
    }
    // `%` starts a zone index such as `fe80::1%eth0`.
    if source.at(end).is_some_and(is_word_byte) {
        return None;
    }

    let mut last = end;
    while last > first && bytes[last - 1] == b'.' {
        last -= 1;
    }
    let candidate = &source.text()[first..last];
    let candidate = match candidate.strip_suffix(':') {
        Some(shorter) if !candidate.ends_with("::") => shorter,
        _ => candidate,
    };
    if !candidate.bytes().any(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    // Without `::`, eight groups of exactly two digits are far more likely a
    // certificate serial or fingerprint than an address.
    let byte_pairs = candidate.split(':').all(|group| group.len() == 2);
    if !candidate.contains("::") && byte_pairs {
        return None;
    }
    let address: Ipv6Addr = candidate.parse().ok()?;
    let last = first + candidate.len();
    let defanged = source.is_defanged(first, last);
    source.claim(first, last);
    Some(Sighting {
        kind: Kind::Ipv6,
        value: address.to_string(),
        host: None,
        defanged,
    })
}

/// Finds IPv4 addresses in the unclaimed parts of `source`.
pub fn scan_ipv4(source: &mut Source, out: &mut Vec<Sighting>) {
    for (start, end) in unclaimed_runs(source, is_ipv4_byte) {
        if let Some(sighting) = read_ipv4(source, start, end) {
            out.push(sighting);
        }
    }
}

fn read_ipv4(source: &mut Source, start: usize, end: usize) -> Option<Sighting> {
    let bytes = source.bytes();
    // A leading dot after a word continues a dotted name (`host.1.2.3.4`),
    // and a trailing dot before a word continues into one (`.in-addr`).
    let mut first = start;
    if bytes[start] == b'.' {
        if source.before(start).is_some_and(is_word_byte) {
            return None;
        }
        while first < end && bytes[first] == b'.' {
            first += 1;
        }
    }

    let mut last = end;
    if bytes[end - 1] == b'.' {
        if source.at(end).is_some_and(is_word_byte) {
            return None;
        }
        while last > first && bytes[last - 1] == b'.' {
            last -= 1;
        }
    }

    if first == last || !has_address_boundaries(source, first, last) {
        return None;
    }
    let address = parse_ipv4(&source.text()[first..last])?;
    if source.field == Field::Version || follows_version_word(source, first) {
        return None;
    }

    let defanged = source.is_defanged(first, last);
    source.claim(first, last);
    Some(Sighting {
        kind: Kind::Ipv4,
        value: address.to_string(),
        host: None,
        defanged,
    })
}

/// Rejects a quad glued to a word on either side, or following a product
/// token such as `curl/` or `Chrome/`.
fn has_address_boundaries(source: &Source, first: usize, last: usize) -> bool {
    if source.word_before(first) || source.at(last).is_some_and(is_word_byte) {
        return false;
    }
    let after_product = source.before(first) == Some(b'/')
        && source
            .before(first - 1)
            .is_some_and(|byte| byte.is_ascii_alphabetic());
    !after_product
}

/// Returns true when the word before `start`, across up to three spaces,
/// dots, colons, equals signs or quotes, is a version keyword.
fn follows_version_word(source: &Source, start: usize) -> bool {
    let bytes = source.bytes();
    let mut index = start;
    let mut skipped = 0;
    while index > 0
        && skipped < 3
        && matches!(bytes[index - 1], b' ' | b'.' | b':' | b'=' | b'"' | b'\'')
    {
        index -= 1;
        skipped += 1;
    }
    let word_end = index;
    while index > 0 && word_end - index < 16 && bytes[index - 1].is_ascii_alphabetic() {
        index -= 1;
    }
    let word = source.text()[index..word_end].to_ascii_lowercase();
    VERSION_WORDS.contains(&word.as_str())
}

/// Returns the maximal runs of bytes matching `class` that no earlier
/// scanner claimed, as `(start, end)` pairs.
fn unclaimed_runs(source: &Source, class: fn(u8) -> bool) -> Vec<(usize, usize)> {
    let bytes = source.bytes();
    let mut runs = Vec::new();
    let mut index = 0;
    while index < bytes.len() {
        if source.is_claimed(index) || !class(bytes[index]) {
            index += 1;
            continue;
        }
        let start = index;
        while index < bytes.len() && !source.is_claimed(index) && class(bytes[index]) {
            index += 1;
        }
        runs.push((start, index));
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(text: &str, field: Field) -> Vec<String> {
        let mut source = Source::new(text, field);
        let mut out = Vec::new();
        scan_ipv6(&mut source, &mut out);
        scan_ipv4(&mut source, &mut out);
        out.into_iter().map(|sighting| sighting.value).collect()
    }

    #[test]
    fn strict_quads_parse() {
        assert_eq!(parse_ipv4("10.0.2.15"), Some(Ipv4Addr::new(10, 0, 2, 15)));
        assert_eq!(parse_ipv4("0.0.0.0"), Some(Ipv4Addr::UNSPECIFIED));
        for bad in [
            "010.1.1.1",
            "1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            "1..2.3",
            "1.2.3.4444",
        ] {
            assert_eq!(parse_ipv4(bad), None, "{bad}");
        }
    }

    #[test]
    fn ipv4_addresses_are_found() {
        let cases = [
            ("agent ip 10.0.2.15", "10.0.2.15"),
            ("(sender IP is 89.144.44.6)", "89.144.44.6"),
            ("dst=81.2.69.192:443", "81.2.69.192"),
            ("block 192.168.0.0/16 now", "192.168.0.0"),
            ("C2 at 10[.]0[.]0[.]1.", "10.0.0.1"),
            ("\"10.213.75.205\",\"443\"", "10.213.75.205"),
            ("ipv4-addr:value = '10.0.0.0'", "10.0.0.0"),
            ("\\\\10.1.2.3\\share", "10.1.2.3"),
            ("message\\r\\n10.1.2.3\\tok", "10.1.2.3"),
        ];
        for (text, expected) in cases {
            assert_eq!(
                addresses(text, Field::Plain),
                vec![expected],
                "text {text:?}"
            );
        }
    }

    #[test]
    fn versions_and_ids_are_not_ipv4() {
        let cases = [
            "v10.0.2.15",
            "1.2.3.4.5",
            "4.3.2.1.in-addr.arpa",
            "Chrome/67.0.3396.99 curl/7.58.0 Agent/1.2.3.4",
            "AV: 1.381.1755.0, engine 1.1.19900.2",
            "id 15.20.6699.20",
            "Version: 10.0.2.15",
            "build 1.0.0.1",
            "ver. 2.4.1.0",
            "alert id 1668705462.50453",
            "010.1.1.1",
            "2022-11-17T19:17:42.694+0200",
            "host.1.2.3.4",
        ];
        for text in cases {
            assert_eq!(
                addresses(text, Field::Plain),
                Vec::<String>::new(),
                "text {text:?}"
            );
        }
        assert!(addresses("4.18.2211.5 1.2.3.4", Field::Version).is_empty());
    }

    #[test]
    fn ipv6_addresses_are_compressed() {
        let cases = [
            (
                "src fe80:0000:0000:0000:fada:0cff:fedc:87f1 dst",
                "fe80::fada:cff:fedc:87f1",
            ),
            ("from (2603:10A6:10:2b0::10) by", "2603:10a6:10:2b0::10"),
            ("loopback (::1) by", "::1"),
            ("mapped ::ffff:10.1.2.3 here", "::ffff:10.1.2.3"),
            ("addr:2001:db8::1.", "2001:db8::1"),
            ("zone fe80::1%eth0 up", "fe80::1"),
            ("all zeros 0:0:0:0:0:0:0:0 here", "::"),
        ];
        for (text, expected) in cases {
            assert_eq!(
                addresses(text, Field::Plain),
                vec![expected],
                "text {text:?}"
            );
        }
    }

    #[test]
    fn colon_lists_are_not_ipv6() {
        let cases = [
            "mac 00:03:2d:3f:e5:63",
            "time 19:17:42.694 and 1:00:00:00.0000000",
            "fingerprint 6a:ff:ac:a6:5f:8a:05:e7:a9:8c:76:29:b9:08:c7:69:ad:dc:72:47",
            "std::vector and Foo::bar and a :: b",
            "#_t::before",
            "serial 5C:9C:E1:09:78:87:F8:07",
        ];
        for text in cases {
            assert_eq!(
                addresses(text, Field::Plain),
                Vec::<String>::new(),
                "text {text:?}"
            );
        }
    }
}

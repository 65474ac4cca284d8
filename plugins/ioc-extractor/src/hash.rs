//! MD5, SHA-1 and SHA-256 digests written in hex.
//!
//! A digest is a maximal run of exactly 32, 40 or 64 hex digits, so a
//! longer run (a SHA-512, a key, a blob) is never cut into shorter hashes.
//! The run must not touch a letter on either side: `0x` numbers, masks such
//! as `d41d8cd9xxxx...` and words are not digests. The letter of a `\n`
//! escape in pasted JSON does not count. The run is also rejected when it
//! is
//!
//! - next to `*` or followed by `...`, a masked or truncated value;
//! - written in mixed case, which no hashing tool prints and which is the
//!   mark of a key or base64 text;
//! - all decimal digits, far more likely a number than a digest;
//! - built from fewer than six distinct digits or made of a repeated unit,
//!   which are placeholders (`000...`, `ffff...`, `deadbeef...`);
//! - made of six or more digits counting up or down (`123456`, `abcdef`);
//! - inside an AWS ARN, where hex parts are resource ids;
//! - inside a mail header that carries signatures or checksums of the
//!   message itself (`DKIM-Signature`, `X-IncomingTopHeaderMarker`).
//!
//! Hashes are found anywhere, including inside URLs.

use crate::extract::{Kind, Sighting};
use crate::source::Source;

/// Mail headers whose hex values describe the message, not an observable.
const OPAQUE_HEADER_PREFIXES: &[&str] = &[
    "arc-",
    "dkim-signature",
    "x-google-dkim-signature",
    "x-incomingtopheadermarker",
    "x-microsoft-antispam",
    "x-ms-exchange-antispam",
];

/// Finds hex digests anywhere in `source`.
pub fn scan(source: &Source, out: &mut Vec<Sighting>) {
    let bytes = source.bytes();
    let mut index = 0;
    while index < bytes.len() {
        if !bytes[index].is_ascii_hexdigit() {
            index += 1;
            continue;
        }
        let start = index;
        while index < bytes.len() && bytes[index].is_ascii_hexdigit() {
            index += 1;
        }
        if let Some(sighting) = read_digest(source, start, index) {
            out.push(sighting);
        }
    }
}

fn read_digest(source: &Source, start: usize, end: usize) -> Option<Sighting> {
    let kind = match end - start {
        32 => Kind::Md5,
        40 => Kind::Sha1,
        64 => Kind::Sha256,
        _ => return None,
    };
    if !has_digest_boundaries(source, start, end) {
        return None;
    }
    let digits = &source.text()[start..end];
    if !looks_random(digits) {
        return None;
    }
    let in_opaque_header = source.header_at(start).is_some_and(|header| {
        OPAQUE_HEADER_PREFIXES
            .iter()
            .any(|prefix| header.starts_with(prefix))
    });
    if in_opaque_header {
        return None;
    }
    Some(Sighting {
        kind,
        value: digits.to_ascii_lowercase(),
        host: None,
        defanged: source.is_defanged(start, end),
    })
}

fn has_digest_boundaries(source: &Source, start: usize, end: usize) -> bool {
    let touches =
        |byte: Option<u8>| byte.is_some_and(|byte| byte.is_ascii_alphabetic() || byte == b'*');
    let touches_before = touches(source.before(start)) && !source.is_escape_letter(start - 1);
    let rest = &source.text()[end..];
    let truncated = rest.starts_with("...") || rest.starts_with('…');
    !touches_before && !touches(source.at(end)) && !truncated && !in_aws_arn(source, start)
}

/// Returns true when `start` lies inside an AWS ARN, whose hex path parts
/// are resource ids (GuardDuty findings, detectors), not digests. The look
/// back stops after 256 bytes, well past the prefix of any real ARN, so a
/// long token full of hex runs is not rescanned for each of them.
fn in_aws_arn(source: &Source, start: usize) -> bool {
    let window_start = start.saturating_sub(256);
    let token_start = source.bytes()[window_start..start]
        .iter()
        .rposition(|byte| byte.is_ascii_whitespace() || matches!(byte, b'"' | b'\'' | b','))
        .map_or(window_start, |index| window_start + index + 1);
    source.bytes()[token_start..start].starts_with(b"arn:aws")
}

/// Returns false for digit strings that are placeholders or not digests.
fn looks_random(digits: &str) -> bool {
    let bytes = digits.as_bytes();
    let has_upper = bytes.iter().any(u8::is_ascii_uppercase);
    let has_lower = bytes.iter().any(u8::is_ascii_lowercase);
    if has_upper && has_lower {
        return false;
    }
    if bytes.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let mut seen = [false; 16];
    for byte in bytes {
        if let Some(value) = (*byte as char).to_digit(16) {
            seen[value as usize] = true;
        }
    }
    if seen.iter().filter(|present| **present).count() < 6 {
        return false;
    }
    !is_periodic(bytes) && !has_counting_run(bytes)
}

/// Returns true when six or more consecutive digits count up or down by one
/// (`123456`, `abcdef`), the mark of a made-up value. A random 64-digit
/// digest has such a run with a probability near 1 in 10,000.
fn has_counting_run(bytes: &[u8]) -> bool {
    let values: Vec<i32> = bytes
        .iter()
        .filter_map(|byte| (*byte as char).to_digit(16))
        .map(|value| value as i32)
        .collect();
    [1, -1].iter().any(|step| {
        values
            .windows(6)
            .any(|window| window.windows(2).all(|pair| pair[1] - pair[0] == *step))
    })
}

/// Returns true when `bytes` repeats a unit of at most half its length.
fn is_periodic(bytes: &[u8]) -> bool {
    (1..=bytes.len() / 2).any(|period| {
        bytes.len().is_multiple_of(period)
            && bytes
                .chunks(period)
                .all(|chunk| chunk.eq_ignore_ascii_case(&bytes[..period]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Field;

    const MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";
    const SHA1: &str = "da39a3ee5e6b4b0d3255bfef95601890afd80709";
    const SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn digests(text: &str) -> Vec<(Kind, String)> {
        let source = Source::new(text, Field::Plain);
        let mut out = Vec::new();
        scan(&source, &mut out);
        out.into_iter()
            .map(|sighting| (sighting.kind, sighting.value))
            .collect()
    }

    #[test]
    fn digests_are_found_by_length() {
        let text = format!("md5={MD5} sha1:{SHA1} \"{}\"", SHA256.to_uppercase());
        assert_eq!(
            digests(&text),
            vec![
                (Kind::Md5, MD5.to_string()),
                (Kind::Sha1, SHA1.to_string()),
                (Kind::Sha256, SHA256.to_string()),
            ]
        );
    }

    #[test]
    fn digests_inside_url_paths_count() {
        let text =
            format!("https://www.virustotal.com/gui/file/{SHA256}/detection/f-{SHA256}-1668705304");
        assert_eq!(digests(&text).len(), 2);
    }

    #[test]
    fn longer_runs_are_not_cut() {
        let sha512 = "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce\
                      47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e";
        assert!(digests(sha512).is_empty());
        assert!(digests(&format!("{MD5}{SHA1}")).is_empty());
    }

    #[test]
    fn masks_and_placeholders_are_rejected() {
        let cases = [
            "0x8000000000000000".to_string(),
            format!("0x{MD5}"),
            "d41d8cd9xxxxxxxxxxxxxxxxxxxxxxxx".to_string(),
            format!("{MD5}****"),
            format!("{MD5}..."),
            "0".repeat(32),
            "f".repeat(64),
            "deadbeef".repeat(4),
            "0123456789abcdef".repeat(2),
            "43b6abcdeabcdeabcde1234562176924".to_string(),
            "fedcba9876543210aa55aa55aa55aa55".to_string(),
            "12345678901234567890123456789012".to_string(),
            "85350044dF4AC3518D185678A9414A7F".to_string(),
            format!("g{MD5}"),
            "36f9c971-77e5-4f5e-bbef-f7162522dee1".to_string(),
            "00:03:2d:3f:e5:63".to_string(),
        ];
        for text in cases {
            assert!(digests(&text).is_empty(), "text {text:?}");
        }
    }

    #[test]
    fn escapes_and_arns_are_handled() {
        assert_eq!(
            digests(&format!("line\\n{MD5}")),
            vec![(Kind::Md5, MD5.to_string())]
        );
        let arn = format!("arn:aws:guardduty:us-east-1:1234:detector/d1/finding/{MD5}");
        assert!(digests(&arn).is_empty());
    }

    #[test]
    fn message_checksum_headers_are_skipped() {
        let text = format!(
            "X-IncomingTopHeaderMarker:\n OriginalChecksum:{};Count:12\nX-Hash: {MD5}",
            SHA256.to_uppercase()
        );
        assert_eq!(digests(&text), vec![(Kind::Md5, MD5.to_string())]);
    }
}

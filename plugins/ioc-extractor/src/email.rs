//! Email addresses.
//!
//! The local part takes the characters real mailboxes use (letters, digits,
//! `.`, `_`, `%`, `+`, `-`), not the whole RFC 5322 set, so that
//! `user=alice@example.com` in a key-value log yields `alice@example.com`.
//! One exception keeps bounce addresses whole: when the local part is itself
//! a domain and an `=` sits before it, as in the SRS/VERP form
//! `postmaster=relay.example.com@bounce.example.net`, the part before the
//! `=` belongs to the address. The domain part follows the domain rules, or
//! is `localhost`, and is lowercased; the local part keeps its case. A
//! string with two `@` around one local part (`a@b@example.com`) has no
//! single reading and yields nothing.
//!
//! Message ids (`<uuid@host.example.com>`) have the same shape as an address
//! and are skipped in the `Message-ID`, `In-Reply-To` and `References` mail
//! headers and in document fields named that way.

use crate::domain::normalize_name;
use crate::extract::{Kind, Sighting};
use crate::internal::InternalScope;
use crate::source::{Field, Source};

const MESSAGE_ID_HEADERS: &[&str] = &["message-id", "in-reply-to", "references"];

fn is_local_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_domain_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-')
}

/// Finds email addresses in the unclaimed parts of `source`.
pub fn scan(source: &mut Source, scope: &InternalScope, out: &mut Vec<Sighting>) {
    let signs: Vec<usize> = source.text().match_indices('@').map(|(i, _)| i).collect();
    for sign in signs {
        if source.is_claimed(sign) || is_message_id(source, sign) {
            continue;
        }
        if let Some(sighting) = read_address(source, scope, sign) {
            out.push(sighting);
        }
    }
}

fn is_message_id(source: &Source, sign: usize) -> bool {
    source.field == Field::MessageId
        || source
            .header_at(sign)
            .is_some_and(|header| MESSAGE_ID_HEADERS.contains(&header))
}

/// Reads the address around the `@` at `sign`.
fn read_address(source: &mut Source, scope: &InternalScope, sign: usize) -> Option<Sighting> {
    let start = local_part_start(source, scope, sign)?;
    let local = &source.text()[start..sign];
    if local.len() > 64 || local.ends_with('.') || local.contains("..") {
        return None;
    }

    let bytes = source.bytes();
    let mut end = sign + 1;
    while end < bytes.len() && !source.is_claimed(end) && is_domain_byte(bytes[end]) {
        end += 1;
    }
    while end > sign + 1 && matches!(bytes[end - 1], b'.' | b'-') {
        end -= 1;
    }
    let raw_domain = &source.text()[sign + 1..end];
    let domain = if raw_domain.eq_ignore_ascii_case("localhost") {
        "localhost".to_string()
    } else {
        normalize_name(raw_domain, scope)?
    };

    let value = format!("{local}@{domain}");
    let defanged = source.is_defanged(start, end);
    source.claim(start, end);
    Some(Sighting {
        kind: Kind::Email,
        value,
        host: Some(domain),
        defanged,
    })
}

/// Returns where the local part before `sign` starts, or None when it is
/// empty.
fn local_part_start(source: &Source, scope: &InternalScope, sign: usize) -> Option<usize> {
    let bytes = source.bytes();
    let mut start = sign;
    while start > 0 && !source.is_claimed(start - 1) && is_local_byte(bytes[start - 1]) {
        start -= 1;
    }
    if source.is_escape_letter(start) {
        start += 1;
    }
    while start < sign && bytes[start] == b'.' {
        start += 1;
    }
    // `a@b@example.com` has no single reading, so it yields nothing.
    if start == sign || source.before(start) == Some(b'@') {
        return None;
    }

    // SRS/VERP: `name=relay.example.com@...` keeps the part before `=`.
    let local = &source.text()[start..sign];
    if source.before(start) == Some(b'=') && normalize_name(local, scope).is_some() {
        let mut extended = start - 1;
        while extended > 0
            && !source.is_claimed(extended - 1)
            && (is_local_byte(bytes[extended - 1]) || bytes[extended - 1] == b'=')
        {
            extended -= 1;
        }
        if source.before(extended) == Some(b'@') {
            return None;
        }
        if extended < start - 1 {
            return Some(extended);
        }
    }
    Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(text: &str, field: Field) -> Vec<(String, bool)> {
        let mut source = Source::new(text, field);
        let mut out = Vec::new();
        scan(&mut source, &InternalScope::default(), &mut out);
        out.into_iter()
            .map(|sighting| (sighting.value, sighting.defanged))
            .collect()
    }

    fn plain(value: &str) -> Vec<(String, bool)> {
        vec![(value.to_string(), false)]
    }

    #[test]
    fn addresses_are_found_with_lowercase_domains() {
        let cases = [
            (
                "Reply-To: solutionteamrecognizd03@gmail.com",
                "solutionteamrecognizd03@gmail.com",
            ),
            (
                "From: team <no-reply@access-accsecurity.com>",
                "no-reply@access-accsecurity.com",
            ),
            (
                "X-SID-PRA: NO-REPLY@ACCESS-ACCSECURITY.COM",
                "NO-REPLY@access-accsecurity.com",
            ),
            ("user=alice@example.com;", "alice@example.com"),
            (
                "mailto:first.last+tag@sub.example.co.uk.",
                "first.last+tag@sub.example.co.uk",
            ),
            ("\"body\":\"hi\\nbob@example.com\"", "bob@example.com"),
            ("cron mail to root@localhost failed", "root@localhost"),
        ];
        for (text, expected) in cases {
            assert_eq!(
                addresses(text, Field::Plain),
                plain(expected),
                "text {text:?}"
            );
        }
    }

    #[test]
    fn bounce_addresses_keep_their_encoded_part() {
        let text =
            "Sender: postmaster=relay-smtp-us.writershomestead.com@relay-us.calibrate.studio";
        assert_eq!(
            addresses(text, Field::Plain),
            plain("postmaster=relay-smtp-us.writershomestead.com@relay-us.calibrate.studio")
        );
    }

    #[test]
    fn defanged_addresses_are_flagged() {
        let cases = [
            (
                "contact feodotracker [at] abuse.ch",
                "feodotracker@abuse.ch",
            ),
            ("bob[@]evil[.]com", "bob@evil.com"),
        ];
        for (text, expected) in cases {
            assert_eq!(
                addresses(text, Field::Plain),
                vec![(expected.to_string(), true)],
                "text {text:?}"
            );
        }
    }

    #[test]
    fn message_ids_and_bad_shapes_are_skipped() {
        let cases = [
            "Message-ID:\n <f5280de2-8a70-46fb-97f9-57e505b436a8@DB3EUR04FT026.eop-eur04.prod.protection.outlook.com>",
            "Message-Id: <20230725200047.ea3eb838f72e2cc6@relay-us.calibrate.studio>",
            "To: phishing@pot",
            "a..b@example.com",
            "trailing.@example.com",
            "@example.com",
            "user@example.exe",
            "bounce+d245a1.492ae5-phishing@pot=hotmail.com@relay-us.calibrate.studio",
            "a@b@example.com",
        ];
        for text in cases {
            assert_eq!(addresses(text, Field::Plain), Vec::new(), "text {text:?}");
        }
        assert!(addresses("<a1b2@mail.example.com>", Field::MessageId).is_empty());
    }
}

//! URLs with an `http`, `https`, `ftp` or `ftps` scheme.
//!
//! The authority (`user@host:port`) ends at the first byte that cannot be
//! part of one; a path, query or fragment must follow it directly. The URL
//! then ends at whitespace, a quote, `<`, `>`, `|`, a backslash, a brace,
//! a non-ASCII character or an HTML-escaped quote, and then loses trailing
//! punctuation (`.,;:!?*`) and closing brackets that have no opening
//! partner inside it. `&amp;` in the path and query becomes `&`, because a
//! URL copied out of HTML or XML carries it escaped. The scheme and host are
//! lowercased and the rest is kept as written, query string included.
//!
//! The host must be an IP literal, `localhost`, or a name that passes
//! `domain::normalize_name`. URLs on XML namespace and schema hosts such as
//! `www.w3.org` are identifiers, not locations, so they are claimed and
//! dropped. A URL nested in another one's path or query (a redirect target)
//! is reported on its own as well, up to four per outer URL. Hosts and
//! addresses inside a URL are not reported again as domains or IPs.

use std::net::Ipv6Addr;

use crate::domain::normalize_name;
use crate::extract::{Kind, Sighting};
use crate::internal::InternalScope;
use crate::ip::parse_ipv4;
use crate::source::Source;

const SCHEMES: &[&str] = &["http", "https", "ftp", "ftps"];

/// Hosts whose URLs name XML namespaces and schemas.
const SCHEMA_HOSTS: &[&str] = &[
    "json-schema.org",
    "ns.adobe.com",
    "purl.org",
    "schema.org",
    "schemas.android.com",
    "schemas.microsoft.com",
    "schemas.openxmlformats.org",
    "schemas.xmlsoap.org",
    "w3.org",
    "www.w3.org",
    "xmlns.com",
];

/// HTML escapes of quotes and angle brackets, which end a URL in markup.
const ESCAPED_DELIMITERS: &[&str] = &["&quot;", "&lt;", "&gt;", "&#34;", "&#39;", "&apos;"];

/// How many URLs nested inside one outer URL are read. Each nested URL runs
/// to the outer one's end, so the cap keeps a string of many nested schemes
/// from taking quadratic time and memory.
const MAX_NESTED_URLS: usize = 4;

/// Finds URLs in `source` and claims their bytes.
pub fn scan(source: &mut Source, scope: &InternalScope, out: &mut Vec<Sighting>) {
    let separators: Vec<usize> = source
        .text()
        .match_indices("://")
        .map(|(index, _)| index)
        .collect();
    let mut outer_end = 0;
    let mut nested_left = 0;
    for separator in separators {
        if separator < outer_end {
            if nested_left == 0 {
                continue;
            }
            nested_left -= 1;
        }
        let Some(found) = read_url(source, scope, separator) else {
            continue;
        };
        if found.end > outer_end {
            outer_end = found.end;
            nested_left = MAX_NESTED_URLS;
        }
        source.claim(found.start, found.end);
        if !found.is_schema {
            out.push(Sighting {
                kind: Kind::Url,
                value: found.value,
                host: Some(found.host),
                defanged: source.is_defanged(found.start, found.end),
            });
        }
    }
}

struct FoundUrl {
    start: usize,
    end: usize,
    value: String,
    host: String,
    is_schema: bool,
}

/// Reads the URL whose `://` is at `separator`.
fn read_url(source: &Source, scope: &InternalScope, separator: usize) -> Option<FoundUrl> {
    let bytes = source.bytes();
    let mut start = separator;
    while start > 0 && separator - start < 5 && bytes[start - 1].is_ascii_alphabetic() {
        start -= 1;
    }
    // In `\nhttps://` the scan stops one letter short of the escape.
    let mut scheme = source.text()[start..separator].to_ascii_lowercase();
    if !SCHEMES.contains(&scheme.as_str()) && source.is_escape_letter(start) {
        start += 1;
        scheme.remove(0);
    }
    if !SCHEMES.contains(&scheme.as_str()) || source.word_before(start) {
        return None;
    }

    // The host is checked before the path is read, so a run of invalid
    // candidates costs no more than their authorities.
    let authority_start = separator + 3;
    let mut authority_end = authority_end(source, authority_start);
    while authority_end > authority_start && matches!(bytes[authority_end - 1], b'.' | b':') {
        authority_end -= 1;
    }
    let authority = &source.text()[authority_start..authority_end];
    let (userinfo, host, port) = split_authority(authority)?;
    let host = normalize_host(host, scope)?;

    // A path, query or fragment must follow the authority directly, so in
    // `[https://a.example](...)` the URL ends at the `]`.
    let end = if matches!(source.at(authority_end), Some(b'/' | b'?' | b'#')) {
        trim_end(source, authority_end, stop_index(source, authority_end))
    } else {
        authority_end
    };

    let mut value = format!("{scheme}://");
    if let Some(userinfo) = userinfo {
        value.push_str(userinfo);
        value.push('@');
    }
    value.push_str(&host);
    if let Some(port) = port {
        value.push(':');
        value.push_str(port);
    }
    value.push_str(&source.text()[authority_end..end].replace("&amp;", "&"));

    let is_schema = SCHEMA_HOSTS.contains(&host.as_str());
    Some(FoundUrl {
        start,
        end,
        value,
        host,
        is_schema,
    })
}

/// Returns the end of the authority (`user@host:port`) that starts at
/// `from`. An IPv6 literal in brackets is taken whole.
fn authority_end(source: &Source, from: usize) -> usize {
    let bytes = source.bytes();
    let mut end = from;
    let mut in_literal = false;
    while let Some(&byte) = bytes.get(end) {
        let fits = match byte {
            b'[' => end == from || bytes[end - 1] == b'@',
            b']' => in_literal,
            _ => {
                byte.is_ascii_alphanumeric()
                    || matches!(byte, b'.' | b'-' | b'_' | b'~' | b'%' | b':' | b'@' | b'+')
            }
        };
        if !fits {
            break;
        }
        in_literal = match byte {
            b'[' => true,
            b']' => false,
            _ => in_literal,
        };
        end += 1;
    }
    end
}

/// Returns the index of the first byte at or after `from` that cannot be
/// part of a URL.
fn stop_index(source: &Source, from: usize) -> usize {
    let bytes = source.bytes();
    let text = source.text();
    let mut end = from;
    while end < bytes.len() && is_url_byte(bytes[end]) {
        let escaped = bytes[end] == b'&'
            && ESCAPED_DELIMITERS
                .iter()
                .any(|escape| text[end..].starts_with(escape));
        if escaped {
            break;
        }
        end += 1;
    }
    end
}

fn is_trailing_byte(byte: u8) -> bool {
    matches!(byte, b'.' | b',' | b';' | b':' | b'!' | b'?' | b'*')
}

/// Drops trailing punctuation from the path `from..end`, and closing
/// brackets that have no opening partner inside it.
fn trim_end(source: &Source, from: usize, mut end: usize) -> usize {
    let bytes = source.bytes();
    let span = &bytes[from..end];
    let mut round_balance = count(span, b'(') as isize - count(span, b')') as isize;
    let mut square_balance = count(span, b'[') as isize - count(span, b']') as isize;
    while end > from {
        let last = bytes[end - 1];
        let strip = match last {
            b')' => round_balance < 0,
            b']' => square_balance < 0,
            _ => is_trailing_byte(last),
        };
        if !strip {
            break;
        }
        match last {
            b')' => round_balance += 1,
            b']' => square_balance += 1,
            _ => {}
        }
        end -= 1;
    }
    end
}

fn count(bytes: &[u8], target: u8) -> usize {
    bytes.iter().filter(|byte| **byte == target).count()
}

fn is_url_byte(byte: u8) -> bool {
    byte.is_ascii_graphic()
        && !matches!(
            byte,
            b'"' | b'\'' | b'<' | b'>' | b'`' | b'|' | b'\\' | b'^' | b'{' | b'}'
        )
}

/// Splits `user@host:port` into its parts. The port, when present, must be
/// 1 to 5 digits.
fn split_authority(authority: &str) -> Option<(Option<&str>, &str, Option<&str>)> {
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((userinfo, rest)) => (Some(userinfo), rest),
        None => (None, authority),
    };
    let (host, port) = if host_port.starts_with('[') {
        let close = host_port.find(']')?;
        let rest = &host_port[close + 1..];
        let port = match rest.strip_prefix(':') {
            Some(port) => Some(port),
            None if rest.is_empty() => None,
            None => return None,
        };
        (&host_port[..=close], port)
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    let port_valid = port.is_none_or(|port| {
        (1..=5).contains(&port.len()) && port.bytes().all(|byte| byte.is_ascii_digit())
    });
    port_valid.then_some((userinfo, host, port))
}

/// Validates a URL host and returns it in its normal form.
fn normalize_host(host: &str, scope: &InternalScope) -> Option<String> {
    if let Some(literal) = host
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    {
        let address: Ipv6Addr = literal.parse().ok()?;
        return Some(format!("[{address}]"));
    }
    if let Some(address) = parse_ipv4(host) {
        return Some(address.to_string());
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Some("localhost".to_string());
    }
    normalize_name(host, scope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Field;

    fn urls(text: &str) -> Vec<(String, bool)> {
        let mut source = Source::new(text, Field::Plain);
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
    fn urls_end_at_delimiters_and_trailing_punctuation() {
        let cases = [
            (
                "see https://a.example.com/x?y=1&z=2.",
                "https://a.example.com/x?y=1&z=2",
            ),
            ("(https://a.example.com/x)", "https://a.example.com/x"),
            (
                "https://en.wikipedia.org/wiki/A_(b)",
                "https://en.wikipedia.org/wiki/A_(b)",
            ),
            (
                "tmp|https://secure.eicar.org/eicar.com.txt|pid",
                "https://secure.eicar.org/eicar.com.txt",
            ),
            (
                "<img src=\"http://thebandalisty.com/track/o42\">",
                "http://thebandalisty.com/track/o42",
            ),
            (
                "url('https://amoj7eje.emltrk.com/v2/a?rd&i=[CONTACT-ID]&t=X');",
                "https://amoj7eje.emltrk.com/v2/a?rd&i=[CONTACT-ID]&t=X",
            ),
            (
                "HTTPS://WWW.Example.COM/Path",
                "https://www.example.com/Path",
            ),
            (
                "href=&quot;https://a.example.com/&quot;",
                "https://a.example.com/",
            ),
            ("go https://a.example.com", "https://a.example.com"),
            ("at https://a.example.com:, then", "https://a.example.com"),
            (
                "text\\nhttps://a.example.com/x\\r\\n",
                "https://a.example.com/x",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(urls(text), plain(expected), "text {text:?}");
        }
    }

    #[test]
    fn markdown_links_split_at_the_bracket() {
        assert_eq!(
            urls("[https://a.example.org](https://b.example.org)"),
            vec![
                ("https://a.example.org".to_string(), false),
                ("https://b.example.org".to_string(), false),
            ]
        );
    }

    #[test]
    fn escaped_ampersands_are_decoded() {
        let text =
            "https://go.microsoft.com/fwlink/?linkid=37020&amp;name=Virus:DOS/EICAR_Test_File";
        assert_eq!(
            urls(text),
            plain("https://go.microsoft.com/fwlink/?linkid=37020&name=Virus:DOS/EICAR_Test_File")
        );
    }

    #[test]
    fn hosts_can_be_literals_with_ports_and_userinfo() {
        let cases = [
            ("http://10.0.0.5:8080/a", "http://10.0.0.5:8080/a"),
            ("http://[2001:DB8::1]:443/", "http://[2001:db8::1]:443/"),
            (
                "ftp://user:pw@files.example.net/f",
                "ftp://user:pw@files.example.net/f",
            ),
            ("http://localhost:9200/_cat", "http://localhost:9200/_cat"),
        ];
        for (text, expected) in cases {
            assert_eq!(urls(text), plain(expected), "text {text:?}");
        }
    }

    #[test]
    fn defanged_urls_are_refanged_and_flagged() {
        let cases = [
            ("hxxp://evil[.]com/a", "http://evil.com/a"),
            ("hxxps[:]//evil[.]com/a", "https://evil.com/a"),
            ("http[s]://evil.com", "https://evil.com"),
            ("fxp://files[.]evil.com/x", "ftp://files.evil.com/x"),
        ];
        for (text, expected) in cases {
            assert_eq!(
                urls(text),
                vec![(expected.to_string(), true)],
                "text {text:?}"
            );
        }
    }

    #[test]
    fn invalid_or_schema_urls_are_dropped() {
        let cases = [
            "http://www.w3.org/1999/xhtml",
            "http://schemas.microsoft.com/win/2004/08/events/event",
            "https://json-schema.org/draft/2020-12/schema",
            "http://purl.org/dc/elements/1.1/",
            "http://intranet/page",
            "http://example.exe/a",
            "http://a.example.com:port/",
            "file:///etc/passwd",
            "xhttp://a.example.com",
        ];
        for text in cases {
            assert_eq!(urls(text), Vec::new(), "text {text:?}");
        }
    }

    #[test]
    fn nested_urls_are_capped_per_outer_url() {
        let text = "http://a.example.com/".repeat(50);
        assert_eq!(urls(&text).len(), 1 + MAX_NESTED_URLS);
    }

    #[test]
    fn nested_redirect_targets_are_reported() {
        let found = urls("https://web.archive.org/web/2020/http://evil.example.com/x");
        assert_eq!(
            found,
            vec![
                (
                    "https://web.archive.org/web/2020/http://evil.example.com/x".to_string(),
                    false
                ),
                ("http://evil.example.com/x".to_string(), false),
            ]
        );
    }
}

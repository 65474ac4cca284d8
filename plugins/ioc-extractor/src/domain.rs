//! Domain names: validation shared with URLs and emails, and the scanner for
//! bare mentions.
//!
//! A bare dotted word is a domain only when it has the shape of a host name
//! and ends with a known TLD (see `tld`). On top of that the scanner drops the
//! usual look-alikes in alerts:
//!
//! - path components (`/media/user/eicar.com`);
//! - file names with a TLD-like extension (`setup.py`, `invoice.zip`) or a
//!   double extension (`invoice.pdf.zip`);
//! - method calls and config keys (`obj.info(`, `smtp.host=`);
//! - reverse-DNS package names (`com.example.app`);
//! - .NET-style namespaces (`System.Net`, `System.IO`).
//!
//! NOTE: in text that carries literal `\n` escapes (JSON pasted unparsed),
//! a name glued to the escape (`\nexample.com`) reads like the Windows path
//! component `\nexample.com` and is skipped. Passing such JSON as
//! `document` avoids the problem.

use crate::extract::{Kind, Sighting};
use crate::internal::InternalScope;
use crate::source::{Field, Source};
use crate::tld::is_known_tld;

/// TLDs that end more two-label file names and field names than domains:
/// `setup.py`, `install.sh`, `invoice.zip`, `main.tf`, `rule.id`. Names
/// with more labels (`www.example.pl`) are still domains.
const AMBIGUOUS_TLDS: &[&str] = &[
    "app", "gs", "id", "md", "mk", "mov", "pl", "pm", "ps", "py", "rs", "sh", "so", "tf", "zip",
];

/// File extensions that, just before a TLD-like last label, mark a double
/// extension such as `invoice.pdf.zip` or `setup.exe.com`.
const FILE_EXTENSIONS: &[&str] = &[
    "bat", "cmd", "dll", "doc", "docm", "docx", "exe", "gif", "hta", "htm", "html", "img", "iso",
    "jpeg", "jpg", "js", "lnk", "msi", "pdf", "png", "ppt", "pptx", "ps1", "rar", "rtf", "scr",
    "txt", "vbs", "xls", "xlsm", "xlsx",
];

/// First labels that mark a reverse-DNS identifier such as a Java package
/// or an Android application id rather than a host name.
const REVERSE_DNS_ROOTS: &[&str] = &["com", "org", "net", "edu", "gov", "mil", "int", "io"];

/// Validates a host name and returns it in lowercase without a trailing dot.
///
/// Labels are 1 to 63 letters, digits and hyphens and do not start or end
/// with a hyphen. A label may start with an underscore, as service labels
/// such as `_dmarc.example.com` do, except in the last two labels. The name
/// must end with a known TLD, or with a suffix `scope` accepts as internal
/// (`.local`, a caller's own domain).
pub fn normalize_name(raw: &str, scope: &InternalScope) -> Option<String> {
    let name = raw.strip_suffix('.').unwrap_or(raw).to_ascii_lowercase();
    if name.len() > 253 {
        return None;
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 || !labels.iter().all(|label| is_valid_label(label)) {
        return None;
    }
    let registrable = &labels[labels.len() - 2..];
    if registrable.iter().any(|label| label.contains('_')) {
        return None;
    }
    let tld = labels[labels.len() - 1];
    (is_known_tld(tld) || scope.accepts_unlisted_tld(&name)).then_some(name)
}

fn is_valid_label(label: &str) -> bool {
    let body = label.strip_prefix('_').unwrap_or(label);
    (1..=63).contains(&label.len())
        && !body.is_empty()
        && !body.starts_with('-')
        && !body.ends_with('-')
        && body
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
}

fn is_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'_')
}

/// Finds bare domain names in the unclaimed parts of `source`.
pub fn scan(source: &mut Source, scope: &InternalScope, out: &mut Vec<Sighting>) {
    let length = source.bytes().len();
    let mut index = 0;
    while index < length {
        if source.is_claimed(index) || !is_name_byte(source.bytes()[index]) {
            index += 1;
            continue;
        }
        let start = index;
        while index < length && !source.is_claimed(index) && is_name_byte(source.bytes()[index]) {
            index += 1;
        }
        if let Some(sighting) = read_candidate(source, scope, start, index) {
            out.push(sighting);
        }
    }
}

/// Reads the run of name bytes `start..end` as a domain, or returns None.
fn read_candidate(
    source: &mut Source,
    scope: &InternalScope,
    start: usize,
    end: usize,
) -> Option<Sighting> {
    let bytes = source.bytes();
    let mut first = start;
    while first < end && matches!(bytes[first], b'.' | b'-') {
        first += 1;
    }
    let mut last = end;
    while last > first && matches!(bytes[last - 1], b'.' | b'-' | b'_') {
        last -= 1;
    }
    let candidate = &source.text()[first..last];
    if !candidate.contains('.') || !has_name_boundaries(source, start, end) {
        return None;
    }
    let name = normalize_name(candidate, scope)?;
    if looks_like_code_or_file(source, candidate, &name) {
        return None;
    }
    let defanged = source.is_defanged(first, last);
    source.claim(first, last);
    Some(Sighting {
        kind: Kind::Domain,
        host: Some(name.clone()),
        value: name,
        defanged,
    })
}

/// Checks the bytes around the run `start..end`: a run inside a path, or
/// one followed by `(`, `[`, `@` or a single `=`, is not a host name.
fn has_name_boundaries(source: &Source, start: usize, end: usize) -> bool {
    let path_component = matches!(source.before(start), Some(b'/' | b'\\'))
        && !follows_authority_marker(source, start);
    let next_is_code = match source.at(end) {
        Some(b'(' | b'[' | b'@') => true,
        Some(b'=') => source.at(end + 1) != Some(b'='),
        _ => false,
    };
    !path_component && !next_is_code
}

/// Returns true when `start` follows `//` after a scheme colon (a
/// scheme-relative or unrecognised URL) or `\\` opening a UNC path, where a
/// host name comes next.
fn follows_authority_marker(source: &Source, start: usize) -> bool {
    let Some(marker_start) = start.checked_sub(2) else {
        return false;
    };
    let marker = &source.bytes()[marker_start..start];
    let opens = match source.before(marker_start) {
        None => true,
        Some(byte) => {
            byte.is_ascii_whitespace() || matches!(byte, b'"' | b'\'' | b'(' | b'<' | b'=')
        }
    };
    match marker {
        b"//" => opens || source.before(marker_start) == Some(b':'),
        b"\\\\" => opens,
        _ => false,
    }
}

/// Returns true for dotted words that are code identifiers or file names.
fn looks_like_code_or_file(source: &Source, candidate: &str, name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    let tld = labels[labels.len() - 1];

    // `System.Net`, `System.IO`, `Microsoft.AspNetCore.App`: written names
    // keep a TLD in one case with the rest, while namespaces capitalise it.
    let (head, original_tld) = candidate.rsplit_once('.').unwrap_or_default();
    let tld_has_upper = original_tld.bytes().any(|byte| byte.is_ascii_uppercase());
    let tld_has_lower = original_tld.bytes().any(|byte| byte.is_ascii_lowercase());
    let head_has_lower = head.bytes().any(|byte| byte.is_ascii_lowercase());
    if tld_has_upper && (tld_has_lower || head_has_lower) {
        return true;
    }

    if labels.len() >= 3 && REVERSE_DNS_ROOTS.contains(&labels[0]) {
        return true;
    }
    if labels.len() == 2 && AMBIGUOUS_TLDS.contains(&tld) {
        return true;
    }
    let second_level = labels[labels.len() - 2];
    let extension_like_tld = tld == "com" || AMBIGUOUS_TLDS.contains(&tld);
    if extension_like_tld && FILE_EXTENSIONS.contains(&second_level) {
        return true;
    }

    // A file-name field holding just `eicar.com` names a DOS executable.
    source.field == Field::File
        && labels.len() == 2
        && (tld == "com" || AMBIGUOUS_TLDS.contains(&tld))
        && source.text().trim() == candidate
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bare_domains(text: &str, field: Field) -> Vec<String> {
        let mut source = Source::new(text, field);
        let mut out = Vec::new();
        scan(&mut source, &InternalScope::default(), &mut out);
        out.into_iter().map(|sighting| sighting.value).collect()
    }

    #[test]
    fn names_are_validated_and_lowercased() {
        let scope = InternalScope::default();
        let cases = [
            ("Example.COM", Some("example.com")),
            ("p33-btmmdns.icloud.com.", Some("p33-btmmdns.icloud.com")),
            ("_dmarc.example.com", Some("_dmarc.example.com")),
            ("xn--80ak6aa92e.xn--p1ai", Some("xn--80ak6aa92e.xn--p1ai")),
            ("localhost.localdomain", Some("localhost.localdomain")),
            ("foo_bar.com", None),
            ("my_host.example.com", None),
            (
                "s1._domainkey.example.com",
                Some("s1._domainkey.example.com"),
            ),
            ("-bad.com", None),
            ("example.exe", None),
            ("164.312.c.1", None),
            ("1.2.3.4.in-addr.arpa", None),
            ("com", None),
            ("a..com", None),
        ];
        for (raw, expected) in cases {
            assert_eq!(
                normalize_name(raw, &scope).as_deref(),
                expected,
                "name {raw:?}"
            );
        }
    }

    #[test]
    fn caller_domains_accept_unlisted_tlds() {
        let scope = InternalScope::new(Vec::new(), vec!["corp".to_string()]);
        assert_eq!(
            normalize_name("wiki.corp", &scope).as_deref(),
            Some("wiki.corp")
        );
        assert_eq!(normalize_name("wiki.corp", &InternalScope::default()), None);
    }

    #[test]
    fn bare_mentions_are_found() {
        let cases = [
            ("resolve clients.l.google.com now", "clients.l.google.com"),
            ("sni=l2.io;", "l2.io"),
            ("(mail from inventorecfety.co.uk)", "inventorecfety.co.uk"),
            ("CN=*.icloud.com, O=Apple", "icloud.com"),
            ("visit evil[.]com today", "evil.com"),
            (
                "\\\\fileserver.example.com\\share",
                "fileserver.example.com",
            ),
            ("see //cdn.example.net/lib", "cdn.example.net"),
            ("host WWW.EXAMPLE.ORG.", "www.example.org"),
            ("visit PayPal.com now", "paypal.com"),
            ("mirror www.onet.pl", "www.onet.pl"),
        ];
        for (text, expected) in cases {
            assert_eq!(
                bare_domains(text, Field::Plain),
                vec![expected],
                "text {text:?}"
            );
        }
    }

    #[test]
    fn look_alikes_are_not_domains() {
        let cases = [
            "/media/user/software/eicar.com",
            "C:\\Users\\win11\\Downloads\\eicar.com",
            "VirusTotal: Alert - /media/user/software/eicar.com - 66 engines",
            "suspicious-file.exe",
            "OpenSSH_7.6 libssh_0.7.0",
            "hipaa 164.312.c.1 tsc PI1.4 pci 10.6.1 gpg 4.11",
            "run setup.py then install.sh and open invoice.zip",
            "window.open(url) and obj.info()",
            "smtp.host=mail",
            "import org.apache.commons.io",
            "New-Object System.Net.WebClient; [System.Net]",
            "using System.IO; Microsoft.AspNetCore.App",
            "1.2.3.4.5",
            ".es-button td.es-desk-hidden a.es-button",
            "first_seen.txt II_5.1.f",
            "36f9c971-77e5-4f5e-bbef-f7162522dee1.tmp",
            "Invoice_2023.pdf.zip and setup.exe.com",
            "filter rule.id: 554 or users.id",
            "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run\\evil.com",
        ];
        for text in cases {
            assert_eq!(
                bare_domains(text, Field::Plain),
                Vec::<String>::new(),
                "text {text:?}"
            );
        }
    }

    #[test]
    fn file_fields_holding_a_name_are_files() {
        assert!(bare_domains("eicar.com", Field::File).is_empty());
        assert_eq!(bare_domains("eicar.com", Field::Plain), vec!["eicar.com"]);
        assert_eq!(
            bare_domains("downloaded from eicar.org", Field::File),
            vec!["eicar.org"]
        );
    }
}

//! One string being scanned, with what the scanners share about it.
//!
//! Scanners run in a fixed order (URLs, emails, IPv6, IPv4, domains) and
//! each claims the bytes of what it found, so a later scanner does not report
//! a URL's host as a bare domain or an email's domain twice. Hashes ignore
//! claims: a hash inside a URL path is a sighting of that hash.

use crate::refang::{Normalized, normalize};

/// Context of a string, taken from its document key, which changes how some
/// candidates are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Free text, or a document value whose key matches no other variant.
    Plain,
    /// A value whose key names a version, so dotted quads are not addresses.
    Version,
    /// A value whose key names a file or path, so `name.com` is a file.
    File,
    /// A value whose key names a mail message id, which looks like an email.
    MessageId,
}

impl Field {
    /// Classifies a JSON object key such as `product Version` or `filename`.
    pub fn from_key(key: &str) -> Field {
        let folded: String = key
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if folded.contains("version") {
            Field::Version
        } else if folded.ends_with("messageid") || folded == "inreplyto" || folded == "references" {
            Field::MessageId
        } else if [
            "file",
            "path",
            "image",
            "attachment",
            "executable",
            "binary",
            "module",
        ]
        .iter()
        .any(|name| folded.contains(name))
        {
            Field::File
        } else {
            Field::Plain
        }
    }
}

/// A normalised string with per-byte claims and mail-header context.
pub struct Source {
    normalized: Normalized,
    pub field: Field,
    claimed: Vec<bool>,
    /// Start offset of each line and the lowercase name of the mail header
    /// that line belongs to, if any.
    headers: Vec<(usize, Option<String>)>,
}

impl Source {
    pub fn new(text: &str, field: Field) -> Source {
        let normalized = normalize(text);
        let claimed = vec![false; normalized.text.len()];
        let headers = header_lines(&normalized.text);
        Source {
            normalized,
            field,
            claimed,
            headers,
        }
    }

    pub fn text(&self) -> &str {
        &self.normalized.text
    }

    pub fn bytes(&self) -> &[u8] {
        self.normalized.text.as_bytes()
    }

    pub fn is_claimed(&self, index: usize) -> bool {
        self.claimed[index]
    }

    pub fn claim(&mut self, start: usize, end: usize) {
        self.claimed[start..end].fill(true);
    }

    pub fn is_defanged(&self, start: usize, end: usize) -> bool {
        self.normalized.is_defanged(start, end)
    }

    /// Returns the byte before `index`, if any.
    pub fn before(&self, index: usize) -> Option<u8> {
        index.checked_sub(1).map(|previous| self.bytes()[previous])
    }

    /// Returns true when byte `index` is the letter of a `\n`, `\r` or `\t`
    /// escape, as in JSON or log text pasted unparsed. An even run of
    /// backslashes before the letter escapes itself, so it does not count.
    pub fn is_escape_letter(&self, index: usize) -> bool {
        let bytes = self.bytes();
        if !matches!(bytes.get(index), Some(b'n' | b'r' | b't')) {
            return false;
        }
        let backslashes = bytes[..index]
            .iter()
            .rev()
            .take_while(|byte| **byte == b'\\')
            .count();
        backslashes % 2 == 1
    }

    /// Returns true when the byte before `index` is a word byte that is not
    /// the letter of an escape sequence.
    pub fn word_before(&self, index: usize) -> bool {
        self.before(index).is_some_and(is_word_byte) && !self.is_escape_letter(index - 1)
    }

    /// Returns the byte at `index`, if any.
    pub fn at(&self, index: usize) -> Option<u8> {
        self.bytes().get(index).copied()
    }

    /// Returns the lowercase name of the mail header whose value contains
    /// byte `index`, counting folded continuation lines.
    pub fn header_at(&self, index: usize) -> Option<&str> {
        let line = self
            .headers
            .partition_point(|(start, _)| *start <= index)
            .checked_sub(1)?;
        self.headers[line].1.as_deref()
    }
}

/// Maps every line to the mail header it belongs to. A line that starts
/// with `Name:` opens a header, a line that starts with a space or tab
/// continues the open one, and any other line closes it.
fn header_lines(text: &str) -> Vec<(usize, Option<String>)> {
    let mut lines = Vec::new();
    let mut current: Option<String> = None;
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        if line.starts_with([' ', '\t']) {
            // A folded line keeps the header that is open.
        } else {
            current = header_name(line);
        }
        lines.push((start, current.clone()));
        start += line.len();
    }
    lines
}

/// Returns the lowercase field name when `line` starts like `Name: value`.
fn header_name(line: &str) -> Option<String> {
    let (name, _) = line.split_once(':')?;
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-');
    valid.then(|| name.to_ascii_lowercase())
}

/// Byte classes shared by the scanners.
pub fn is_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_select_field_kinds() {
        let cases = [
            ("product Version", Field::Version),
            ("sw_version", Field::Version),
            ("Message-ID", Field::MessageId),
            ("in_reply_to", Field::MessageId),
            ("external_references", Field::Plain),
            ("filename", Field::File),
            ("process_executable", Field::File),
            ("TargetImage", Field::File),
            ("hostname", Field::Plain),
            ("url", Field::Plain),
        ];
        for (key, expected) in cases {
            assert_eq!(Field::from_key(key), expected, "key {key:?}");
        }
    }

    #[test]
    fn escape_letters_need_an_odd_backslash_run() {
        let source = Source::new(r"a\n1 b\\n2 c\\\t3 dn4", Field::Plain);
        let text = source.text().to_string();
        let letter_before = |digit: char| text.find(digit).unwrap() - 1;
        assert!(source.is_escape_letter(letter_before('1')));
        assert!(!source.is_escape_letter(letter_before('2')));
        assert!(source.is_escape_letter(letter_before('3')));
        assert!(!source.is_escape_letter(letter_before('4')));
        assert!(!source.word_before(letter_before('1') + 1));
        assert!(source.word_before(letter_before('4') + 1));
    }

    #[test]
    fn folded_header_lines_keep_their_header() {
        let text = "Subject: hi\nMessage-ID:\n <a@b.example>\nbody line\n";
        let source = Source::new(text, Field::Plain);
        let inside = text.find("<a@").unwrap();
        assert_eq!(source.header_at(inside), Some("message-id"));
        assert_eq!(source.header_at(2), Some("subject"));
        assert_eq!(source.header_at(text.find("body").unwrap()), None);
    }
}

//! Undoes the encodings that hide observables from the scanners.
//!
//! Analysts and vendors defang indicators (`hxxp://evil[.]com`) so that mail
//! clients do not turn them into links. This module rewrites the usual forms
//! back and remembers which output bytes came from a rewrite, so every
//! observable can report whether any of its sightings was defanged. It also
//! joins quoted-printable soft line breaks in raw mail bodies and JSON `\/`
//! escapes in JSON pasted as text. It does not decode base64 MIME parts or
//! HTML entities other than in URLs (see `url`).

/// Text ready for scanning, with one flag per byte.
pub struct Normalized {
    pub text: String,
    /// True for each byte of `text` that a refang rewrite produced.
    pub defanged: Vec<bool>,
}

impl Normalized {
    /// Returns true when any byte in `start..end` came from a rewrite.
    pub fn is_defanged(&self, start: usize, end: usize) -> bool {
        self.defanged[start..end].iter().any(|flag| *flag)
    }
}

/// Normalises `input`: quoted-printable decoding first, then defanging.
///
/// When `input` starts with mail headers, only the part after the first
/// blank line is decoded, because header values such as `client-ip=143...`
/// are not encoded and would be corrupted.
pub fn normalize(input: &str) -> Normalized {
    let body_start = mail_body_start(input);
    let (headers, body) = input.split_at(body_start);
    if looks_quoted_printable(body) {
        let decoded = format!("{headers}{}", decode_quoted_printable(body));
        refang(&decoded)
    } else {
        refang(input)
    }
}

/// Returns the offset of the body when `input` starts with a mail header
/// line and has a blank line, or 0.
fn mail_body_start(input: &str) -> usize {
    let first_line = input.lines().next().unwrap_or_default();
    let starts_with_header = first_line.split_once(':').is_some_and(|(name, _)| {
        !name.is_empty()
            && name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
    });
    if !starts_with_header {
        return 0;
    }
    ["\r\n\r\n", "\n\n"]
        .iter()
        .filter_map(|separator| input.find(separator).map(|index| index + separator.len()))
        .min()
        .unwrap_or(0)
}

/// Returns true for text that carries quoted-printable soft line breaks and
/// `=3D` escapes, the shape of a raw mail body in that encoding. Both are
/// required because either alone shows up in ordinary text and URLs.
fn looks_quoted_printable(input: &str) -> bool {
    input.contains("=3D") && (input.contains("=\n") || input.contains("=\r\n"))
}

/// Decodes quoted-printable: drops soft line breaks and turns `=XX` into the
/// byte XX. Invalid UTF-8 in the result becomes U+FFFD.
fn decode_quoted_printable(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] != b'=' {
            out.push(bytes[index]);
            index += 1;
            continue;
        }
        let rest = &bytes[index + 1..];
        if rest.starts_with(b"\r\n") {
            index += 3;
        } else if rest.starts_with(b"\n") {
            index += 2;
        } else if let Some(value) = rest.get(..2).and_then(parse_hex_pair) {
            out.push(value);
            index += 3;
        } else {
            out.push(b'=');
            index += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_hex_pair(pair: &[u8]) -> Option<u8> {
    let high = (pair[0] as char).to_digit(16)?;
    let low = (pair[1] as char).to_digit(16)?;
    // Quoted-printable writes hex digits in upper case, and accepting lower
    // case would rewrite ordinary text such as `=ab`.
    if pair.iter().any(u8::is_ascii_lowercase) {
        return None;
    }
    u8::try_from(high * 16 + low).ok()
}

/// Builds the output of `refang`.
struct Writer {
    text: Vec<u8>,
    defanged: Vec<bool>,
}

impl Writer {
    fn push(&mut self, byte: u8, defanged: bool) {
        self.text.push(byte);
        self.defanged.push(defanged);
    }

    fn push_rewrite(&mut self, replacement: &str) {
        for byte in replacement.bytes() {
            self.push(byte, true);
        }
    }

    /// Drops one trailing space written after a byte accepted by `fits`, for
    /// spaced forms such as `bob [at] example.com`. Returns true when it did.
    fn drop_space_after(&mut self, fits: fn(u8) -> bool) -> bool {
        let length = self.text.len();
        if length >= 2 && self.text[length - 1] == b' ' && fits(self.text[length - 2]) {
            self.text.pop();
            self.defanged.pop();
            return true;
        }
        false
    }
}

fn is_label_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
}

fn is_local_part_byte(byte: u8) -> bool {
    is_label_byte(byte) || matches!(byte, b'.' | b'+' | b'%')
}

/// Bracketed stand-ins for a dot.
const DOT_FORMS: &[&str] = &["[.]", "(.)", "{.}", "[dot]", "(dot)", "{dot}"];
/// Bracketed stand-ins for `@`.
const AT_FORMS: &[&str] = &["[@]", "(@)", "{@}", "[at]", "(at)", "{at}"];
/// Defanged schemes and their real names. `http[s]` means "http or https"
/// and is read as `https`.
const SCHEME_FORMS: &[(&str, &str)] = &[
    ("hxxp[s]", "https"),
    ("hxxp(s)", "https"),
    ("http[s]", "https"),
    ("http(s)", "https"),
    ("hxxps", "https"),
    ("hxxp", "http"),
    ("fxp", "ftp"),
];

/// Rewrites defanged forms to their plain characters.
///
/// A bracketed dot is rewritten only directly between label characters, and
/// a bracketed `@` only before a dotted name (one space allowed on each
/// side), so prose such as `meet (at) noon` or `use [.] in` stays as
/// written. `[:]` is rewritten only before `/` or a digit, which covers
/// `hxxp[:]//` and `1.2.3.4[:]80` and leaves `a[:]` slices alone.
fn refang(input: &str) -> Normalized {
    let bytes = input.as_bytes();
    let mut out = Writer {
        text: Vec::with_capacity(bytes.len()),
        defanged: Vec::with_capacity(bytes.len()),
    };
    let mut index = 0;
    while index < bytes.len() {
        let consumed = rewrite_at(bytes, index, &mut out);
        if consumed == 0 {
            out.push(bytes[index], false);
            index += 1;
        } else {
            index += consumed;
        }
    }
    // Rewrites replace or drop ASCII bytes only, so multi-byte characters are
    // copied whole and the lossy branch is not expected to run. If it did,
    // the flags would no longer line up with the bytes and are reset.
    match String::from_utf8(out.text) {
        Ok(text) => Normalized {
            text,
            defanged: out.defanged,
        },
        Err(error) => {
            let text = String::from_utf8_lossy(error.as_bytes()).into_owned();
            let defanged = vec![false; text.len()];
            Normalized { text, defanged }
        }
    }
}

/// Tries every rewrite at `index` and returns the number of input bytes it
/// consumed, or 0 when none applies.
fn rewrite_at(bytes: &[u8], index: usize, out: &mut Writer) -> usize {
    match bytes[index] {
        b'[' | b'(' | b'{' => rewrite_bracket(bytes, index, out),
        b'h' | b'H' | b'f' | b'F' => rewrite_scheme(bytes, index, out),
        b'\\' if bytes.get(index + 1) == Some(&b'/') => {
            out.push(b'/', false);
            2
        }
        _ => 0,
    }
}

fn rewrite_scheme(bytes: &[u8], index: usize, out: &mut Writer) -> usize {
    if index > 0 && bytes[index - 1].is_ascii_alphanumeric() {
        return 0;
    }
    for (form, scheme) in SCHEME_FORMS {
        let end = index + form.len();
        let matches = bytes
            .get(index..end)
            .is_some_and(|candidate| candidate.eq_ignore_ascii_case(form.as_bytes()));
        let separator_follows = matches!(bytes.get(end), Some(b':' | b'[' | b'('));
        if matches && separator_follows {
            out.push_rewrite(scheme);
            return form.len();
        }
    }
    0
}

fn rewrite_bracket(bytes: &[u8], index: usize, out: &mut Writer) -> usize {
    for (form, replacement) in [("[://]", "://"), ("[/]", "/"), ("[//]", "//")] {
        if bytes[index..].starts_with(form.as_bytes()) {
            out.push_rewrite(replacement);
            return form.len();
        }
    }
    for form in ["[:]", "(:)"] {
        let end = index + form.len();
        let next_fits =
            matches!(bytes.get(end), Some(byte) if *byte == b'/' || byte.is_ascii_digit());
        if bytes[index..].starts_with(form.as_bytes()) && next_fits {
            out.push_rewrite(":");
            return form.len();
        }
    }
    if let Some(length) = match_form(bytes, index, DOT_FORMS) {
        let tight = out.text.last().is_some_and(|byte| is_label_byte(*byte))
            && bytes
                .get(index + length)
                .is_some_and(|byte| byte.is_ascii_alphanumeric());
        if tight {
            out.push(b'.', true);
            return length;
        }
        return 0;
    }
    if let Some(length) = match_form(bytes, index, AT_FORMS) {
        return rewrite_at_sign(bytes, index + length, out, length);
    }
    0
}

/// Writes `@` for a bracketed form of `length` bytes that ends at `end`,
/// when a local-part byte sits on its left and a dotted name on its right,
/// each optionally across one space. Returns the bytes consumed, or 0.
fn rewrite_at_sign(bytes: &[u8], end: usize, out: &mut Writer, length: usize) -> usize {
    if !dotted_name_follows(bytes, end) {
        return 0;
    }
    let left_fits = out
        .text
        .last()
        .is_some_and(|byte| is_local_part_byte(*byte))
        || out.drop_space_after(is_local_part_byte);
    if !left_fits {
        return 0;
    }
    out.push(b'@', true);
    length + usize::from(bytes.get(end) == Some(&b' '))
}

/// Returns true when the word after `index`, past one optional space,
/// contains a dot, as the domain of an address does. This keeps prose such
/// as `meet (at) noon` as written.
fn dotted_name_follows(bytes: &[u8], index: usize) -> bool {
    let start = if bytes.get(index) == Some(&b' ') {
        index + 1
    } else {
        index
    };
    let rest = bytes.get(start..).unwrap_or_default();
    let word_length = rest
        .iter()
        .position(|byte| {
            !(byte.is_ascii_alphanumeric()
                || matches!(byte, b'.' | b'-' | b'[' | b']' | b'(' | b')'))
        })
        .unwrap_or(rest.len());
    let word = &rest[..word_length];
    if !word.first().is_some_and(u8::is_ascii_alphanumeric) {
        return false;
    }
    word.contains(&b'.')
        || word
            .windows(3)
            .any(|window| window.eq_ignore_ascii_case(b"dot"))
}

fn match_form(bytes: &[u8], index: usize, forms: &[&str]) -> Option<usize> {
    forms
        .iter()
        .find(|form| {
            bytes
                .get(index..index + form.len())
                .is_some_and(|candidate| candidate.eq_ignore_ascii_case(form.as_bytes()))
        })
        .map(|form| form.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refanged(input: &str) -> String {
        normalize(input).text
    }

    #[test]
    fn bracketed_dots_are_rewritten() {
        let cases = [
            ("evil[.]com", "evil.com"),
            ("evil(.)com", "evil.com"),
            ("evil{.}com", "evil.com"),
            ("evil[dot]com", "evil.com"),
            ("evil(DOT)com", "evil.com"),
            ("10[.]0[.]0[.]1", "10.0.0.1"),
        ];
        for (input, expected) in cases {
            assert_eq!(refanged(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn schemes_and_separators_are_rewritten() {
        let cases = [
            ("hxxp://a.com", "http://a.com"),
            ("hXXps://a.com", "https://a.com"),
            ("fxp://a.com", "ftp://a.com"),
            ("http[s]://a.com", "https://a.com"),
            ("hxxps[:]//a.com", "https://a.com"),
            ("hxxp[://]a.com", "http://a.com"),
            ("1.2.3.4[:]80", "1.2.3.4:80"),
        ];
        for (input, expected) in cases {
            assert_eq!(refanged(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn at_forms_are_rewritten() {
        let cases = [
            ("bob[@]evil.com", "bob@evil.com"),
            ("bob[at]evil.com", "bob@evil.com"),
            ("bob (at) evil.com", "bob@evil.com"),
            ("feodotracker [at] abuse.ch", "feodotracker@abuse.ch"),
        ];
        for (input, expected) in cases {
            assert_eq!(refanged(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn prose_and_code_are_left_alone() {
        let cases = [
            "see (at) the end",
            "regex [.] matches",
            "use [.] in",
            "slice a[:]",
            "the http server",
            "whttp://x",
            "sentence (.) end",
        ];
        for input in cases {
            assert_eq!(refanged(input), input, "input {input:?}");
        }
    }

    #[test]
    fn rewritten_bytes_are_flagged() {
        let normalized = normalize("a evil[.]com b");
        let start = normalized.text.find("evil").unwrap();
        assert!(normalized.is_defanged(start, start + "evil.com".len()));
        assert!(!normalized.is_defanged(0, 1));
    }

    #[test]
    fn quoted_printable_body_is_decoded() {
        let body = "<a href=3D\"https://example.com/a?b=3Dc&d=\n=3De\">";
        assert_eq!(refanged(body), "<a href=\"https://example.com/a?b=c&d=e\">");
    }

    #[test]
    fn equals_sign_alone_does_not_trigger_decoding() {
        assert_eq!(refanged("x=3D only"), "x=3D only");
        assert_eq!(refanged("soft=\nbreak only"), "soft=\nbreak only");
        assert_eq!(refanged("x=3D and y=\nz"), "x= and yz");
    }

    #[test]
    fn mail_headers_are_not_decoded() {
        let mail = "Received-SPF: Pass client-ip=143.55.232.11;\n\n<a href=3D\"x\">=\nend";
        assert_eq!(
            refanged(mail),
            "Received-SPF: Pass client-ip=143.55.232.11;\n\n<a href=\"x\">end"
        );
    }

    #[test]
    fn json_escaped_slashes_are_joined() {
        assert_eq!(refanged(r"https:\/\/a.com\/x"), "https://a.com/x");
    }
}

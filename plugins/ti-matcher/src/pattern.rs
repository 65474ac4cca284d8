//! A parser for STIX 2.1 patterning, reduced to what indicator matching
//! needs: the list of comparison expressions in a pattern.
//!
//! The parser accepts the whole grammar (observation expressions joined by
//! `AND`, `OR` and `FOLLOWEDBY`, parentheses, the `WITHIN`, `REPEATS` and
//! `START … STOP` qualifiers, and comparisons with every STIX operator) and
//! returns the comparisons in source order. It does not evaluate the
//! pattern's logic. The caller decides which comparisons become indicator
//! values, so `[a = 'x' AND b = 'y']` yields two independent values.

use std::fmt;

/// One comparison expression, such as `ipv4-addr:value = '10.0.0.0/8'`.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// Object type before the colon, such as `file`.
    pub object_type: String,
    /// Property path after the colon, one entry per step, with quotes
    /// removed: `hashes.'SHA-256'` becomes `["hashes", "SHA-256"]`.
    pub property: Vec<String>,
    /// Whether the operator is preceded by `NOT`.
    pub negated: bool,
    /// Operator as written: `=`, `!=`, `<`, `LIKE`, `EXISTS` and so on.
    pub operator: String,
    pub value: Literal,
}

/// The right-hand side of a comparison.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    String(String),
    /// Integer or floating-point number, kept as written.
    Number(String),
    Boolean(bool),
    /// A prefixed literal: `t` for timestamps, `h` for hex, `b` for base64.
    Prefixed(char, String),
    /// A parenthesised list, used with `IN`.
    Set(Vec<Literal>),
    /// No value, as after `EXISTS`.
    None,
}

impl fmt::Display for Literal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::String(text) => write!(formatter, "'{}'", escape(text)),
            Literal::Number(text) => formatter.write_str(text),
            Literal::Boolean(value) => write!(formatter, "{value}"),
            Literal::Prefixed(prefix, text) => write!(formatter, "{prefix}'{}'", escape(text)),
            Literal::Set(items) => {
                let parts: Vec<String> = items.iter().map(ToString::to_string).collect();
                write!(formatter, "({})", parts.join(", "))
            }
            Literal::None => Ok(()),
        }
    }
}

impl Comparison {
    /// Returns the object path as written, such as `file:hashes.'SHA-256'`.
    pub fn path(&self) -> String {
        let steps: Vec<String> = self
            .property
            .iter()
            .map(|step| {
                let plain = step
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '*')
                    || step.starts_with('[');
                if plain {
                    step.clone()
                } else {
                    format!("'{}'", escape(step))
                }
            })
            .collect();
        format!("{}:{}", self.object_type, steps.join("."))
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.operator == "EXISTS" {
            return write!(formatter, "EXISTS {}", self.path());
        }
        let not = if self.negated { "NOT " } else { "" };
        write!(
            formatter,
            "{} {not}{} {}",
            self.path(),
            self.operator,
            self.value
        )
    }
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\'', "\\'")
}

/// Parses `pattern` and returns its comparison expressions in order.
///
/// # Errors
///
/// Returns a message naming the first syntax error, with its byte offset
/// when the error is at a token.
pub fn parse(pattern: &str) -> Result<Vec<Comparison>, String> {
    let tokens = tokenize(pattern)?;
    let mut parser = Parser {
        tokens,
        position: 0,
        comparisons: Vec::new(),
    };
    parser.observation_expression()?;
    match parser.peek() {
        None => Ok(parser.comparisons),
        Some(token) => Err(format!(
            "unexpected {} at offset {}",
            token.kind, token.offset
        )),
    }
}

#[derive(Clone, Debug, PartialEq)]
enum TokenKind {
    LeftBracket,
    RightBracket,
    LeftParen,
    RightParen,
    Comma,
    /// `=`, `!=`, `<`, `<=`, `>` or `>=`.
    Operator(String),
    /// An object path: `type:step.step`, quoted steps already unquoted.
    Path(String, Vec<String>),
    /// A keyword or bare word, such as `AND` or `SECONDS`.
    Word(String),
    String(String),
    Prefixed(char, String),
    Number(String),
}

impl fmt::Display for TokenKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenKind::LeftBracket => formatter.write_str("`[`"),
            TokenKind::RightBracket => formatter.write_str("`]`"),
            TokenKind::LeftParen => formatter.write_str("`(`"),
            TokenKind::RightParen => formatter.write_str("`)`"),
            TokenKind::Comma => formatter.write_str("`,`"),
            TokenKind::Operator(operator) => write!(formatter, "operator `{operator}`"),
            TokenKind::Path(object_type, _) => write!(formatter, "object path `{object_type}:…`"),
            TokenKind::Word(word) => write!(formatter, "`{word}`"),
            TokenKind::String(text) => write!(formatter, "string '{text}'"),
            TokenKind::Prefixed(prefix, text) => write!(formatter, "literal {prefix}'{text}'"),
            TokenKind::Number(number) => write!(formatter, "number {number}"),
        }
    }
}

#[derive(Clone, Debug)]
struct Token {
    kind: TokenKind,
    offset: usize,
}

fn tokenize(pattern: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<(usize, char)> = pattern.char_indices().collect();
    let mut tokens = Vec::new();
    let mut index = 0;
    while let Some(&(offset, c)) = chars.get(index) {
        let next = chars.get(index + 1).map(|&(_, c)| c);
        let kind = match c {
            _ if c.is_whitespace() => {
                index += 1;
                continue;
            }
            '[' => single(&mut index, TokenKind::LeftBracket),
            ']' => single(&mut index, TokenKind::RightBracket),
            '(' => single(&mut index, TokenKind::LeftParen),
            ')' => single(&mut index, TokenKind::RightParen),
            ',' => single(&mut index, TokenKind::Comma),
            '=' => single(&mut index, TokenKind::Operator("=".to_string())),
            '!' | '<' | '>' => {
                let with_equals = next == Some('=');
                if c == '!' && !with_equals {
                    return Err(format!("expected `!=` at offset {offset}"));
                }
                index += if with_equals { 2 } else { 1 };
                let operator = if with_equals {
                    format!("{c}=")
                } else {
                    c.to_string()
                };
                TokenKind::Operator(operator)
            }
            '\'' => {
                index += 1;
                TokenKind::String(read_quoted(&chars, &mut index, offset)?)
            }
            't' | 'h' | 'b' if next == Some('\'') => {
                index += 2;
                TokenKind::Prefixed(c, read_quoted(&chars, &mut index, offset)?)
            }
            '-' | '+' | '0'..='9' => TokenKind::Number(read_number(&chars, &mut index)),
            _ if c.is_ascii_alphabetic() || c == '_' => read_word_or_path(&chars, &mut index)?,
            _ => return Err(format!("unexpected character {c:?} at offset {offset}")),
        };
        tokens.push(Token { kind, offset });
    }
    Ok(tokens)
}

fn single(index: &mut usize, kind: TokenKind) -> TokenKind {
    *index += 1;
    kind
}

/// Reads a quoted string whose opening quote is already consumed. STIX
/// allows only `\'` and `\\` as escapes.
fn read_quoted(chars: &[(usize, char)], index: &mut usize, start: usize) -> Result<String, String> {
    let mut text = String::new();
    loop {
        let Some(&(offset, c)) = chars.get(*index) else {
            return Err(format!("unterminated string starting at offset {start}"));
        };
        *index += 1;
        match c {
            '\'' => return Ok(text),
            '\\' => match chars.get(*index) {
                Some(&(_, escaped @ ('\'' | '\\'))) => {
                    text.push(escaped);
                    *index += 1;
                }
                _ => return Err(format!("invalid escape at offset {offset}")),
            },
            _ => text.push(c),
        }
    }
}

fn read_number(chars: &[(usize, char)], index: &mut usize) -> String {
    let mut text = String::new();
    while let Some(&(_, c)) = chars.get(*index) {
        let sign_allowed = text.is_empty() && (c == '-' || c == '+');
        if c.is_ascii_digit() || c == '.' || sign_allowed {
            text.push(c);
            *index += 1;
        } else {
            break;
        }
    }
    text
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Reads a keyword, or an object path when a colon follows the first word.
fn read_word_or_path(chars: &[(usize, char)], index: &mut usize) -> Result<TokenKind, String> {
    let word = read_while(chars, index, is_word_char);
    if chars.get(*index).map(|&(_, c)| c) != Some(':') {
        return Ok(TokenKind::Word(word));
    }
    *index += 1;

    let mut steps = Vec::new();
    loop {
        let Some(&(offset, c)) = chars.get(*index) else {
            return Err("object path ends after `:` or `.`".to_string());
        };
        if c == '\'' {
            *index += 1;
            steps.push(read_quoted(chars, index, offset)?);
        } else if is_word_char(c) {
            steps.push(read_while(chars, index, is_word_char));
        } else {
            return Err(format!("invalid object path step at offset {offset}"));
        }

        // A list index such as `[*]` or `[0]` directly follows its step.
        if let Some(list_index) = read_list_index(chars, index) {
            steps.push(list_index);
        }
        if chars.get(*index).map(|&(_, c)| c) == Some('.') {
            *index += 1;
        } else {
            return Ok(TokenKind::Path(word, steps));
        }
    }
}

fn read_list_index(chars: &[(usize, char)], index: &mut usize) -> Option<String> {
    if chars.get(*index).map(|&(_, c)| c) != Some('[') {
        return None;
    }
    let mut end = *index + 1;
    while chars
        .get(end)
        .is_some_and(|&(_, c)| c.is_ascii_digit() || c == '*')
    {
        end += 1;
    }
    if end == *index + 1 || chars.get(end).map(|&(_, c)| c) != Some(']') {
        return None;
    }
    let text: String = chars[*index..=end].iter().map(|&(_, c)| c).collect();
    *index = end + 1;
    Some(text)
}

fn read_while(chars: &[(usize, char)], index: &mut usize, accept: fn(char) -> bool) -> String {
    let mut text = String::new();
    while let Some(&(_, c)) = chars.get(*index) {
        if !accept(c) {
            break;
        }
        text.push(c);
        *index += 1;
    }
    text
}

struct Parser {
    tokens: Vec<Token>,
    position: usize,
    comparisons: Vec<Comparison>,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position)
    }

    fn advance(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.position).cloned();
        self.position += 1;
        token
    }

    fn peek_word(&self, words: &[&str]) -> bool {
        matches!(self.peek(), Some(Token { kind: TokenKind::Word(word), .. })
            if words.iter().any(|candidate| word.eq_ignore_ascii_case(candidate)))
    }

    fn expect(&mut self, expected: &TokenKind) -> Result<(), String> {
        match self.advance() {
            Some(token) if &token.kind == expected => Ok(()),
            Some(token) => Err(format!(
                "expected {expected}, found {} at offset {}",
                token.kind, token.offset
            )),
            None => Err(format!("expected {expected}, found end of pattern")),
        }
    }

    fn expect_word(&mut self, word: &str) -> Result<(), String> {
        if self.peek_word(&[word]) {
            self.position += 1;
            Ok(())
        } else {
            Err(self.unexpected(&format!("`{word}`")))
        }
    }

    fn unexpected(&self, expected: &str) -> String {
        match self.peek() {
            Some(token) => format!(
                "expected {expected}, found {} at offset {}",
                token.kind, token.offset
            ),
            None => format!("expected {expected}, found end of pattern"),
        }
    }

    /// Parses observations joined by `AND`, `OR` or `FOLLOWEDBY`. The
    /// operators are not distinguished because only the comparisons matter.
    fn observation_expression(&mut self) -> Result<(), String> {
        self.observation()?;
        while self.peek_word(&["AND", "OR", "FOLLOWEDBY"]) {
            self.position += 1;
            self.observation()?;
        }
        Ok(())
    }

    fn observation(&mut self) -> Result<(), String> {
        match self.peek().map(|token| &token.kind) {
            Some(TokenKind::LeftBracket) => {
                self.position += 1;
                self.comparison_expression()?;
                self.expect(&TokenKind::RightBracket)?;
            }
            Some(TokenKind::LeftParen) => {
                self.position += 1;
                self.observation_expression()?;
                self.expect(&TokenKind::RightParen)?;
            }
            _ => return Err(self.unexpected("`[` or `(`")),
        }
        self.qualifiers()
    }

    fn qualifiers(&mut self) -> Result<(), String> {
        loop {
            if self.peek_word(&["WITHIN"]) {
                self.position += 1;
                self.number()?;
                self.expect_word("SECONDS")?;
            } else if self.peek_word(&["REPEATS"]) {
                self.position += 1;
                self.number()?;
                self.expect_word("TIMES")?;
            } else if self.peek_word(&["START"]) {
                self.position += 1;
                self.timestamp()?;
                self.expect_word("STOP")?;
                self.timestamp()?;
            } else {
                return Ok(());
            }
        }
    }

    fn number(&mut self) -> Result<(), String> {
        match self.peek().map(|token| &token.kind) {
            Some(TokenKind::Number(_)) => {
                self.position += 1;
                Ok(())
            }
            _ => Err(self.unexpected("a number")),
        }
    }

    fn timestamp(&mut self) -> Result<(), String> {
        match self.peek().map(|token| &token.kind) {
            Some(TokenKind::Prefixed('t', _)) => {
                self.position += 1;
                Ok(())
            }
            _ => Err(self.unexpected("a timestamp literal t'…'")),
        }
    }

    /// Parses comparisons joined by `AND` or `OR` inside one `[...]`.
    fn comparison_expression(&mut self) -> Result<(), String> {
        self.comparison_term()?;
        while self.peek_word(&["AND", "OR"]) {
            self.position += 1;
            self.comparison_term()?;
        }
        Ok(())
    }

    fn comparison_term(&mut self) -> Result<(), String> {
        if matches!(
            self.peek().map(|token| &token.kind),
            Some(TokenKind::LeftParen)
        ) {
            self.position += 1;
            self.comparison_expression()?;
            return self.expect(&TokenKind::RightParen);
        }

        if self.peek_word(&["EXISTS"]) {
            self.position += 1;
            let (object_type, property) = self.path()?;
            self.comparisons.push(Comparison {
                object_type,
                property,
                negated: false,
                operator: "EXISTS".to_string(),
                value: Literal::None,
            });
            return Ok(());
        }

        let (object_type, property) = self.path()?;
        let negated = self.peek_word(&["NOT"]);
        if negated {
            self.position += 1;
        }
        let operator = self.operator()?;
        let value = self.literal()?;
        self.comparisons.push(Comparison {
            object_type,
            property,
            negated,
            operator,
            value,
        });
        Ok(())
    }

    fn path(&mut self) -> Result<(String, Vec<String>), String> {
        match self.peek().map(|token| token.kind.clone()) {
            Some(TokenKind::Path(object_type, property)) => {
                self.position += 1;
                Ok((object_type, property))
            }
            _ => Err(self.unexpected("an object path")),
        }
    }

    fn operator(&mut self) -> Result<String, String> {
        const WORD_OPERATORS: [&str; 5] = ["IN", "LIKE", "MATCHES", "ISSUBSET", "ISSUPERSET"];
        match self.peek().map(|token| token.kind.clone()) {
            Some(TokenKind::Operator(operator)) => {
                self.position += 1;
                Ok(operator)
            }
            Some(TokenKind::Word(word))
                if WORD_OPERATORS.contains(&word.to_uppercase().as_str()) =>
            {
                self.position += 1;
                Ok(word.to_uppercase())
            }
            _ => Err(self.unexpected("a comparison operator")),
        }
    }

    fn literal(&mut self) -> Result<Literal, String> {
        let Some(token) = self.advance() else {
            return Err("expected a value, found end of pattern".to_string());
        };
        match token.kind {
            TokenKind::String(text) => Ok(Literal::String(text)),
            TokenKind::Number(text) => Ok(Literal::Number(text)),
            TokenKind::Prefixed(prefix, text) => Ok(Literal::Prefixed(prefix, text)),
            TokenKind::Word(word) if word == "true" || word == "false" => {
                Ok(Literal::Boolean(word == "true"))
            }
            TokenKind::LeftParen => self.set(),
            other => Err(format!(
                "expected a value, found {other} at offset {}",
                token.offset
            )),
        }
    }

    /// Parses the rest of a set literal after its `(`.
    fn set(&mut self) -> Result<Literal, String> {
        let mut items = vec![self.literal()?];
        loop {
            match self.advance().map(|token| token.kind) {
                Some(TokenKind::Comma) => items.push(self.literal()?),
                Some(TokenKind::RightParen) => return Ok(Literal::Set(items)),
                _ => return Err("set literal is not closed with `)`".to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(pattern: &str) -> Vec<String> {
        parse(pattern)
            .unwrap_or_else(|error| panic!("{pattern:?} did not parse: {error}"))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn single_ipv4_comparison() {
        let comparisons = parse("[ipv4-addr:value = '10.0.0.0']").unwrap();
        assert_eq!(comparisons.len(), 1);
        assert_eq!(comparisons[0].object_type, "ipv4-addr");
        assert_eq!(comparisons[0].property, vec!["value"]);
        assert_eq!(comparisons[0].operator, "=");
        assert!(!comparisons[0].negated);
        assert_eq!(
            comparisons[0].value,
            Literal::String("10.0.0.0".to_string())
        );
    }

    #[test]
    fn quoted_hash_name_is_unquoted() {
        let comparisons = parse("[file:hashes.'SHA-256' = 'ef53']").unwrap();
        assert_eq!(comparisons[0].property, vec!["hashes", "SHA-256"]);
        assert_eq!(comparisons[0].to_string(), "file:hashes.'SHA-256' = 'ef53'");
    }

    #[test]
    fn or_and_inside_brackets_yield_every_comparison() {
        assert_eq!(
            rendered(
                "[domain-name:value = 'a.example' OR (url:value = 'http://b/' AND file:hashes.MD5 = 'c')]"
            ),
            vec![
                "domain-name:value = 'a.example'",
                "url:value = 'http://b/'",
                "file:hashes.MD5 = 'c'",
            ]
        );
    }

    #[test]
    fn groups_joined_with_qualifiers() {
        let pattern = "([ipv4-addr:value = '198.51.100.1'] AND [ipv4-addr:value = '198.51.100.2']) \
                       REPEATS 5 TIMES WITHIN 300 SECONDS \
                       OR [email-addr:value = 'x@evil.example'] START t'2016-06-01T00:00:00Z' STOP t'2016-07-01T00:00:00Z' \
                       FOLLOWEDBY [ipv6-addr:value = '2001:db8::1']";
        assert_eq!(
            rendered(pattern),
            vec![
                "ipv4-addr:value = '198.51.100.1'",
                "ipv4-addr:value = '198.51.100.2'",
                "email-addr:value = 'x@evil.example'",
                "ipv6-addr:value = '2001:db8::1'",
            ]
        );
    }

    #[test]
    fn other_operators_are_kept_for_reporting() {
        let comparisons = parse(
            "[ipv4-addr:value != '10.0.0.1' AND file:size > 1000 AND file:name NOT LIKE 'a%' \
             AND ipv4-addr:value IN ('10.0.0.1', '10.0.0.2') AND EXISTS file:hashes.MD5 \
             AND file:name MATCHES '^x' AND ipv4-addr:value ISSUBSET '10.0.0.0/8']",
        )
        .unwrap();
        let operators: Vec<(&str, bool)> = comparisons
            .iter()
            .map(|comparison| (comparison.operator.as_str(), comparison.negated))
            .collect();
        assert_eq!(
            operators,
            vec![
                ("!=", false),
                (">", false),
                ("LIKE", true),
                ("IN", false),
                ("EXISTS", false),
                ("MATCHES", false),
                ("ISSUBSET", false),
            ]
        );
        assert_eq!(
            comparisons[3].to_string(),
            "ipv4-addr:value IN ('10.0.0.1', '10.0.0.2')"
        );
    }

    #[test]
    fn escapes_in_strings() {
        let comparisons = parse(r"[file:name = 'it\'s a \\ path']").unwrap();
        assert_eq!(
            comparisons[0].value,
            Literal::String(r"it's a \ path".to_string())
        );
    }

    #[test]
    fn list_index_steps_are_kept() {
        let comparisons = parse("[email-message:to_refs[*].value = 'victim@example.org']").unwrap();
        assert_eq!(comparisons[0].property, vec!["to_refs", "[*]", "value"]);
    }

    #[test]
    fn prefixed_and_boolean_literals() {
        let comparisons = parse(
            "[file:created = t'2014-01-13T07:03:17Z' AND file:magic = h'ffd8' AND file:is_encrypted = true]",
        )
        .unwrap();
        assert_eq!(
            comparisons[0].value,
            Literal::Prefixed('t', "2014-01-13T07:03:17Z".to_string())
        );
        assert_eq!(
            comparisons[1].value,
            Literal::Prefixed('h', "ffd8".to_string())
        );
        assert_eq!(comparisons[2].value, Literal::Boolean(true));
    }

    #[test]
    fn syntax_errors_name_the_offset() {
        let cases = [
            ("ipv4-addr:value = '1.2.3.4'", "expected `[` or `(`"),
            ("[ipv4-addr:value = '1.2.3.4'", "expected `]`"),
            ("[ipv4-addr:value = '1.2.3.4]", "unterminated string"),
            (
                "[ipv4-addr:value '1.2.3.4']",
                "expected a comparison operator",
            ),
            (
                "[ipv4-addr:value = '1.2.3.4'] WITHIN x SECONDS",
                "expected a number",
            ),
            (
                "[ipv4-addr:value = '1.2.3.4'] [url:value = 'x']",
                "unexpected `[`",
            ),
            ("[value = '1.2.3.4']", "expected an object path"),
            ("[ipv4-addr:value = '1.2.3.4' ! 'x']", "expected `!=`"),
        ];
        for (pattern, expected) in cases {
            let error = parse(pattern).expect_err(pattern);
            assert!(
                error.contains(expected),
                "{pattern:?} gave {error:?}, expected it to contain {expected:?}"
            );
        }
    }
}

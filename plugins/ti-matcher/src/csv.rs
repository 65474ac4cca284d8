//! Reading IOC block lists in CSV form, such as the abuse.ch feeds.
//!
//! The layout these feeds share: comment lines start with `#`, a header row
//! names the columns, and every field may be quoted with `"` (a doubled
//! `""` is a literal quote). Some feeds put the header in the last comment
//! line before the data instead, so when the first row names no usable
//! column, that comment is tried as the header.

use std::collections::BTreeMap;

use crate::observable::{IndicatorValue, ObservableType, infer_type, normalize};
use crate::store::{IndicatorRecord, ParsedIndicator, Skipped};

/// Header names that contain the indicator, in order of preference. The match
/// ignores case.
pub const INDICATOR_COLUMNS: [&str; 12] = [
    "dst_ip",
    "ip",
    "ip_address",
    "indicator",
    "ioc",
    "value",
    "url",
    "domain",
    "md5",
    "sha1",
    "sha256",
    "sha256_hash",
];

/// Header names whose value is a malware family name.
const MALWARE_COLUMNS: [&str; 4] = [
    "malware",
    "malware_printable",
    "malware_family",
    "signature",
];

/// Placeholder values that feeds write for an unknown malware family.
const NO_MALWARE: [&str; 4] = ["", "n/a", "none", "unknown"];

/// Options for reading one feed.
#[derive(Debug)]
pub struct FeedOptions<'a> {
    pub source: &'a str,
    /// Header name of the indicator column. When absent, the first of
    /// [`INDICATOR_COLUMNS`] in the header is used.
    pub column: Option<&'a str>,
    /// Type of every value. When absent, each value's type is inferred.
    pub kind: Option<ObservableType>,
    pub indicator_types: Vec<String>,
}

/// Indicators read from a feed, and the rows left out.
#[derive(Debug, Default)]
pub struct FeedContents {
    pub indicators: Vec<ParsedIndicator>,
    pub skipped: Vec<Skipped>,
    /// Header name of the column the indicators came from.
    pub column: String,
}

/// One line of CSV text: a comment or a record of fields.
#[derive(Debug, PartialEq)]
enum Line {
    Comment(String),
    Record(Vec<String>),
}

/// A line together with its 1-based line number in the text.
#[derive(Debug)]
struct NumberedLine {
    number: usize,
    line: Line,
}

/// Reads every indicator of the feed `text`.
///
/// Rows are identified by line number in `skipped`, as `line 12`. The
/// indicator id of a row is `<source>:<type>:<value>`, so loading the same
/// feed again replaces its indicators instead of adding copies.
///
/// # Errors
///
/// Returns a message when the text has no header row or no indicator column.
pub fn read_feed(text: &str, options: &FeedOptions) -> Result<FeedContents, String> {
    let lines = split_lines(text)?;
    let (header, column_index, data_start) = find_header(&lines, options.column)?;

    let mut contents = FeedContents {
        column: header[column_index].clone(),
        ..FeedContents::default()
    };
    for numbered in &lines[data_start..] {
        let Line::Record(fields) = &numbered.line else {
            continue;
        };
        let line_id = format!("line {}", numbered.number);
        match read_row(&header, column_index, fields, options) {
            Ok(indicator) => contents.indicators.push(indicator),
            Err(reason) => contents.skipped.push(Skipped::new(&line_id, &reason)),
        }
    }
    Ok(contents)
}

fn read_row(
    header: &[String],
    column_index: usize,
    fields: &[String],
    options: &FeedOptions,
) -> Result<ParsedIndicator, String> {
    let raw = fields
        .get(column_index)
        .map(|field| field.trim())
        .filter(|field| !field.is_empty())
        .ok_or_else(|| format!("row has no value in column `{}`", header[column_index]))?;
    let kind = match options.kind {
        Some(kind) => kind,
        None => infer_type(raw).ok_or_else(|| format!("cannot infer the type of {raw:?}"))?,
    };
    let value = normalize(kind, raw)?;

    let mut attributes = BTreeMap::new();
    let mut malware = Vec::new();
    for (index, (name, field)) in header.iter().zip(fields).enumerate() {
        let field = field.trim();
        if index == column_index || field.is_empty() {
            continue;
        }
        let is_malware_column = MALWARE_COLUMNS.contains(&name.to_ascii_lowercase().as_str());
        if is_malware_column && !NO_MALWARE.contains(&field.to_ascii_lowercase().as_str()) {
            malware.push(field.to_string());
        }
        attributes.insert(name.clone(), field.to_string());
    }

    let key_text = match &value {
        IndicatorValue::Exact(_, text) => text.clone(),
        IndicatorValue::Network(network) => network.to_string(),
    };
    let record = IndicatorRecord {
        id: format!("{}:{kind}:{key_text}", options.source),
        name: None,
        description: None,
        indicator_types: options.indicator_types.clone(),
        valid_from: None,
        valid_until: None,
        valid_until_ms: None,
        source: options.source.to_string(),
        malware,
        pattern: None,
        attributes,
    };
    Ok(ParsedIndicator {
        record,
        values: vec![value],
    })
}

/// Finds the header and the indicator column. Returns the header's fields,
/// the column's index and the index in `lines` of the first data line.
fn find_header(
    lines: &[NumberedLine],
    column: Option<&str>,
) -> Result<(Vec<String>, usize, usize), String> {
    let first_record = lines
        .iter()
        .position(|numbered| matches!(numbered.line, Line::Record(_)))
        .ok_or("the CSV has no header row")?;
    let Line::Record(fields) = &lines[first_record].line else {
        return Err("the CSV has no header row".to_string());
    };
    if let Some(index) = indicator_column(fields, column) {
        return Ok((clean_header(fields), index, first_record + 1));
    }

    // Fall back to a header written as the last comment before the data.
    let comment_header = lines[..first_record]
        .iter()
        .rev()
        .find_map(|numbered| match &numbered.line {
            Line::Comment(text) => Some(text),
            Line::Record(_) => None,
        })
        .and_then(|text| parse_record(text).ok())
        .and_then(|fields| {
            indicator_column(&fields, column).map(|index| (clean_header(&fields), index))
        });
    if let Some((header, index)) = comment_header {
        return Ok((header, index, first_record));
    }

    let header = clean_header(fields).join(", ");
    Err(match column {
        Some(name) => format!("the CSV header [{header}] has no column `{name}`"),
        None => format!(
            "the CSV header [{header}] contains none of the indicator columns {}; name one with `column`",
            INDICATOR_COLUMNS.join(", ")
        ),
    })
}

fn clean_header(fields: &[String]) -> Vec<String> {
    fields
        .iter()
        .map(|field| field.trim().to_string())
        .collect()
}

fn indicator_column(fields: &[String], column: Option<&str>) -> Option<usize> {
    let position = |name: &str| {
        fields
            .iter()
            .position(|field| field.trim().eq_ignore_ascii_case(name))
    };
    match column {
        Some(name) => position(name),
        None => INDICATOR_COLUMNS.iter().find_map(|name| position(name)),
    }
}

/// Splits CSV text into comments and records. A quoted field may span
/// lines, and blank lines are dropped.
fn split_lines(text: &str) -> Result<Vec<NumberedLine>, String> {
    let mut lines = Vec::new();
    let mut number = 1;
    let mut rest = text;
    while !rest.is_empty() {
        let start_number = number;
        if let Some(comment) = rest.strip_prefix('#') {
            let (line, remainder) = comment.split_once('\n').unwrap_or((comment, ""));
            let text = line.trim_end_matches('\r').trim_start_matches('#').trim();
            lines.push(NumberedLine {
                number: start_number,
                line: Line::Comment(text.to_string()),
            });
            number += 1;
            rest = remainder;
            continue;
        }

        let (record_text, remainder) = split_record(rest);
        number += record_text.matches('\n').count() + 1;
        rest = remainder;
        let record_text = record_text.trim_end_matches('\r');
        if record_text.trim().is_empty() {
            continue;
        }
        let fields = parse_record(record_text)
            .map_err(|error| format!("invalid CSV on line {start_number}: {error}"))?;
        lines.push(NumberedLine {
            number: start_number,
            line: Line::Record(fields),
        });
    }
    Ok(lines)
}

/// Splits off one record: text up to the first line break outside quotes.
fn split_record(text: &str) -> (&str, &str) {
    let mut quoted = false;
    for (index, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '\n' if !quoted => return (&text[..index], &text[index + 1..]),
            _ => {}
        }
    }
    (text, "")
}

/// Parses the fields of one record.
fn parse_record(text: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        // Leading spaces before a quoted field are allowed.
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("a quoted field is not closed".to_string()),
                }
            }
            while chars.peek().is_some_and(|c| *c == ' ' || *c == '\r') {
                chars.next();
            }
            match chars.peek() {
                None | Some(',') => {}
                Some(c) => return Err(format!("unexpected {c:?} after a quoted field")),
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                field.push(c);
                chars.next();
            }
        }
        fields.push(field);
        if chars.next().is_none() {
            return Ok(fields);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FEODO_LAYOUT: &str = include_str!("../testdata/c2-blocklist.csv");

    fn options(source: &str) -> FeedOptions<'_> {
        FeedOptions {
            source,
            column: None,
            kind: None,
            indicator_types: vec!["malicious-activity".to_string()],
        }
    }

    #[test]
    fn fields_with_quotes_and_commas() {
        assert_eq!(
            parse_record(r#""a,b","say ""hi""",plain, "spaced" ,"#).unwrap(),
            vec!["a,b", r#"say "hi""#, "plain", "spaced", ""]
        );
        assert!(parse_record(r#""open"#).is_err());
        assert!(parse_record(r#""a"b"#).is_err());
    }

    #[test]
    fn comments_blank_lines_and_numbers() {
        let lines =
            split_lines("# one\r\n\r\n\"a\",\"b\"\r\n\"multi\nline\",\"x\"\n# END\n").unwrap();
        let numbers: Vec<usize> = lines.iter().map(|numbered| numbered.number).collect();
        assert_eq!(numbers, vec![1, 3, 4, 6]);
        assert_eq!(lines[0].line, Line::Comment("one".to_string()));
        assert_eq!(
            lines[1].line,
            Line::Record(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(
            lines[2].line,
            Line::Record(vec!["multi\nline".to_string(), "x".to_string()])
        );
        assert_eq!(lines[3].line, Line::Comment("END".to_string()));
    }

    #[test]
    fn feodo_layout_fixture() {
        let contents = read_feed(FEODO_LAYOUT, &options("c2-test")).unwrap();
        assert_eq!(contents.column, "dst_ip");
        assert_eq!(contents.indicators.len(), 3);
        let first = &contents.indicators[0];
        assert_eq!(first.record.id, "c2-test:ipv4:192.0.2.10");
        assert_eq!(first.record.malware, vec!["Dridex"]);
        assert_eq!(first.record.attributes["dst_port"], "443");
        assert_eq!(first.record.attributes["c2_status"], "online");
        assert!(!first.record.attributes.contains_key("dst_ip"));
        assert_eq!(first.record.indicator_types, vec!["malicious-activity"]);
        assert_eq!(
            contents.indicators[2].record.malware,
            vec!["QakBot"],
            "third row"
        );

        let reasons: Vec<(&str, &str)> = contents
            .skipped
            .iter()
            .map(|skipped| (skipped.id.as_str(), skipped.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("line 13", "invalid ipv4 address \"192.0.2.300\""),
                ("line 14", "row has no value in column `dst_ip`"),
            ]
        );
    }

    #[test]
    fn feodo_feed_from_shared_data() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/data/threat_intel/ioc_lists/feodotracker_ipblocklist_intelmq_feodoips.csv"
        );
        let Ok(text) = std::fs::read_to_string(path) else {
            eprintln!("skipped: {path} is not present");
            return;
        };
        let contents = read_feed(&text, &options("feodo")).unwrap();
        assert!(contents.skipped.is_empty(), "{:?}", contents.skipped);
        let ids: Vec<&str> = contents
            .indicators
            .iter()
            .map(|indicator| indicator.record.id.as_str())
            .collect();
        assert_eq!(
            ids,
            vec!["feodo:ipv4:10.213.75.205", "feodo:ipv4:192.16.238.101"]
        );
        for indicator in &contents.indicators {
            assert_eq!(indicator.record.malware, vec!["Dridex"]);
        }
    }

    #[test]
    fn header_in_last_comment_line() {
        let text = "# MalwareBazaar-style export\n\
                    # \"first_seen_utc\",\"sha256_hash\",\"md5_hash\",\"signature\"\n\
                    \"2024-01-01 00:00:00\",\"E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855\",\"d41d8cd98f00b204e9800998ecf8427e\",\"n/a\"\n";
        let contents = read_feed(text, &options("bazaar")).unwrap();
        assert_eq!(contents.column, "sha256_hash");
        assert_eq!(contents.indicators.len(), 1);
        let indicator = &contents.indicators[0];
        assert_eq!(
            indicator.values,
            vec![IndicatorValue::Exact(
                ObservableType::Sha256,
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".to_string()
            )]
        );
        assert!(
            indicator.record.malware.is_empty(),
            "n/a is no malware name"
        );
    }

    #[test]
    fn explicit_column_and_type() {
        let text = "\"host\",\"tag\"\n\"Evil.Example\",\"phishing\"\n\"10.0.0.1\",\"x\"\n";
        let feed_options = FeedOptions {
            column: Some("HOST"),
            kind: Some(ObservableType::Domain),
            ..options("custom")
        };
        let contents = read_feed(text, &feed_options).unwrap();
        assert_eq!(contents.indicators.len(), 2);
        assert_eq!(
            contents.indicators[0].record.id,
            "custom:domain:evil.example"
        );
        assert_eq!(
            contents.indicators[1].record.id, "custom:domain:10.0.0.1",
            "a forced type is not second-guessed"
        );
    }

    #[test]
    fn inferred_types_per_row() {
        let text = "indicator\n198.51.100.0/24\nhttp://evil.example/x\nbad value\n";
        let contents = read_feed(text, &options("mixed")).unwrap();
        let ids: Vec<&str> = contents
            .indicators
            .iter()
            .map(|indicator| indicator.record.id.as_str())
            .collect();
        assert_eq!(
            ids,
            vec![
                "mixed:ipv4:198.51.100.0/24",
                "mixed:url:http://evil.example/x"
            ]
        );
        assert_eq!(contents.skipped[0].id, "line 4");
        assert_eq!(
            contents.skipped[0].reason,
            "cannot infer the type of \"bad value\""
        );
    }

    #[test]
    fn missing_indicator_column_names_header() {
        let error = read_feed("\"a\",\"b\"\n\"1\",\"2\"\n", &options("x")).unwrap_err();
        assert!(error.contains("[a, b]"), "{error}");
        assert!(error.contains("dst_ip"), "{error}");

        let feed_options = FeedOptions {
            column: Some("ioc_value"),
            ..options("x")
        };
        let error = read_feed("\"a\"\n\"1\"\n", &feed_options).unwrap_err();
        assert!(error.contains("column `ioc_value`"), "{error}");

        let error = read_feed("# only comments\n", &options("x")).unwrap_err();
        assert_eq!(error, "the CSV has no header row");
    }
}

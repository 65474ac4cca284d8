//! Parsing alert input: a JSON document, a JSON array of alerts, JSON lines,
//! or Suricata EVE lines (which are JSON lines).

use serde_json::Value;

use crate::alert::Alert;

/// One input record that could not become an alert.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct InputError {
    /// 1-based line where the record starts.
    pub line: usize,
    pub message: String,
}

/// Maximum nesting of arrays and objects in an alert. Stored records wrap
/// the alert in a few more levels, and serde_json refuses to read documents
/// nested deeper than 128, so a deeper alert could be stored but never read
/// back.
pub const MAX_ALERT_DEPTH: usize = 64;

/// Parses every alert in `bytes`, which may carry a UTF-8 byte-order mark.
/// Invalid UTF-8 sequences are replaced with U+FFFD, so one bad byte spoils
/// one field rather than the whole input.
pub fn parse_alert_bytes(bytes: &[u8]) -> Vec<Result<Alert, InputError>> {
    let text = String::from_utf8_lossy(bytes);
    parse_alerts(&text)
}

/// Parses every alert in `text`. Records that fail are reported with their
/// line and do not stop the others.
pub fn parse_alerts(text: &str) -> Vec<Result<Alert, InputError>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        return parse_array(text);
    }
    let mut documents = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    loop {
        let offset = stream.byte_offset();
        match stream.next() {
            None => break,
            Some(Ok(value)) => documents.push((line_of(text, offset), value)),
            // A broken record spoils the stream, so fall back to reading one
            // record per line, which reports each bad line and keeps the rest.
            Some(Err(_)) => return parse_lines(text),
        }
    }
    documents
        .into_iter()
        .map(|(line, value)| normalise(line, value))
        .collect()
}

fn parse_array(text: &str) -> Vec<Result<Alert, InputError>> {
    match serde_json::from_str::<Vec<Value>>(text) {
        Ok(values) => values
            .into_iter()
            .enumerate()
            .map(|(index, value)| {
                normalise(1, value).map_err(|error| InputError {
                    line: error.line,
                    message: format!("array element {index}: {}", error.message),
                })
            })
            .collect(),
        Err(error) => vec![Err(InputError {
            line: error.line(),
            message: format!("invalid JSON array: {error}"),
        })],
    }
}

fn parse_lines(text: &str) -> Vec<Result<Alert, InputError>> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| match serde_json::from_str::<Value>(line) {
            Ok(value) => normalise(index + 1, value),
            Err(error) => Err(InputError {
                line: index + 1,
                message: format!(
                    "invalid JSON at column {}: {error}; each line must hold one JSON alert",
                    error.column()
                ),
            }),
        })
        .collect()
}

fn normalise(line: usize, value: Value) -> Result<Alert, InputError> {
    if !value.is_object() {
        return Err(InputError {
            line,
            message: format!("expected a JSON object, found {}", json_kind(&value)),
        });
    }
    if depth(&value) > MAX_ALERT_DEPTH {
        return Err(InputError {
            line,
            message: format!(
                "alert is nested deeper than {MAX_ALERT_DEPTH} levels of arrays and objects; flatten it before sending"
            ),
        });
    }
    Alert::from_raw(value).map_err(|error| InputError {
        line,
        message: error.to_string(),
    })
}

/// Nesting depth of `value`: 0 for a scalar, 1 for a flat array or object.
fn depth(value: &Value) -> usize {
    // An explicit stack, so a hostile document cannot overflow the call
    // stack here. serde_json has already refused anything past depth 128.
    let mut deepest = 0;
    let mut pending = vec![(value, 0)];
    while let Some((value, level)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        deepest = deepest.max(level + 1);
        pending.extend(children.map(|child| (child, level + 1)));
    }
    deepest
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// 1-based line number of byte `offset`, skipping the whitespace before the
/// record so the line is where the record itself starts.
fn line_of(text: &str, offset: usize) -> usize {
    let rest = &text[offset..];
    let start = offset + (rest.len() - rest.trim_start().len());
    text[..start].bytes().filter(|&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAZUH: &str = r#"{"timestamp":"2022-11-17T19:17:42.694+0200","rule":{"level":5,"id":"554","description":"File added"},"agent":{"name":"Ubuntu","ip":"10.0.2.15"}}"#;
    const EVE: &str = r#"{"timestamp":"2021-01-27T01:28:11.488362+0100","event_type":"alert","src_ip":"175.16.199.1","dest_ip":"10.31.64.240","alert":{"signature_id":2100498,"signature":"GPL","severity":2}}"#;

    #[test]
    fn json_lines_and_eve_lines() {
        let text = format!("{WAZUH}\n\n{EVE}\n");
        let alerts = parse_alerts(&text);
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0].as_ref().unwrap().source, "wazuh");
        assert_eq!(alerts[1].as_ref().unwrap().source, "suricata");
    }

    #[test]
    fn pretty_printed_document() {
        let value: Value = serde_json::from_str(WAZUH).unwrap();
        let text = serde_json::to_string_pretty(&value).unwrap();
        let alerts = parse_alerts(&text);
        assert_eq!(alerts.len(), 1);
        assert!(alerts[0].is_ok());
    }

    #[test]
    fn array_of_alerts() {
        let text = format!("[{WAZUH}, {EVE}]");
        let alerts = parse_alerts(&text);
        assert_eq!(alerts.len(), 2);
        assert!(alerts.iter().all(Result::is_ok));
    }

    #[test]
    fn bad_line_is_reported_and_others_kept() {
        let text = format!("{WAZUH}\n{{not json\n{EVE}\n[1]\n");
        let alerts = parse_alerts(&text);
        assert_eq!(alerts.len(), 4);
        assert!(alerts[0].is_ok());
        let bad = alerts[1].as_ref().unwrap_err();
        assert_eq!(bad.line, 2);
        assert!(bad.message.contains("invalid JSON"), "{}", bad.message);
        assert!(alerts[2].is_ok());
        let not_object = alerts[3].as_ref().unwrap_err();
        assert_eq!(not_object.line, 4);
        assert!(
            not_object.message.contains("an array"),
            "{}",
            not_object.message
        );
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let mut nested = String::from("\"x\"");
        for _ in 0..MAX_ALERT_DEPTH {
            nested = format!("[{nested}]");
        }
        let text = WAZUH.replacen('{', &format!("{{\"deep\": {nested}, "), 1);
        let alerts = parse_alerts(&text);
        let error = alerts[0].as_ref().unwrap_err();
        assert!(error.message.contains("nested deeper"), "{}", error.message);
    }

    #[test]
    fn byte_order_mark_and_bad_bytes_are_tolerated() {
        let mut bytes = "\u{feff}".as_bytes().to_vec();
        bytes.extend_from_slice(WAZUH.as_bytes());
        bytes.push(b'\n');
        let broken = WAZUH.replace("File added", "File \u{1}added");
        let mut broken = broken.into_bytes();
        let position = broken.iter().position(|&b| b == 1).unwrap();
        broken[position] = 0xff;
        bytes.extend_from_slice(&broken);
        let alerts = parse_alert_bytes(&bytes);
        assert_eq!(alerts.len(), 2);
        assert!(alerts[0].is_ok(), "{:?}", alerts[0]);
        let second = alerts[1].as_ref().unwrap();
        assert!(
            second.rule.name.contains('\u{fffd}'),
            "{}",
            second.rule.name
        );
    }

    #[test]
    fn wazuh_level_above_fifteen_is_rejected() {
        let text = WAZUH.replace("\"level\":5", "\"level\":99");
        let error = parse_alerts(&text).pop().unwrap().unwrap_err();
        assert!(error.message.contains("rule.level"), "{}", error.message);
    }

    #[test]
    fn line_numbers_point_at_the_record() {
        let text = format!("\n\n{WAZUH}\n{{\"x\": 1}}\n");
        let alerts = parse_alerts(&text);
        assert_eq!(alerts[1].as_ref().unwrap_err().line, 4);
    }
}

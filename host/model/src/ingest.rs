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

/// Parses every alert in `text`. Records that fail are reported with their
/// line and do not stop the others.
pub fn parse_alerts(text: &str) -> Vec<Result<Alert, InputError>> {
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
    Alert::from_raw(value).map_err(|error| InputError {
        line,
        message: error.to_string(),
    })
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
    fn line_numbers_point_at_the_record() {
        let text = format!("\n\n{WAZUH}\n{{\"x\": 1}}\n");
        let alerts = parse_alerts(&text);
        assert_eq!(alerts[1].as_ref().unwrap_err().line, 4);
    }
}

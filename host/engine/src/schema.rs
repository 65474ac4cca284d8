//! JSON Schema validation of the values people and playbooks supply, such
//! as the answer to an approval's form, with boon (drafts 4 to 2020-12).
//!
//! A schema may not load any other document: `$ref` to a URL or file is an
//! error, so a playbook cannot make the host read files or fetch URLs.

use serde_json::Value;

/// Location the schema is registered under. Nothing is read from it.
const SCHEMA_LOCATION: &str = "file:///palisade/schema.json";

struct NoLoading;

impl boon::UrlLoader for NoLoading {
    fn load(&self, url: &str) -> Result<Value, Box<dyn std::error::Error>> {
        Err(format!("{url} is not loaded: a schema may refer only to itself").into())
    }
}

/// A compiled schema.
pub struct Schema {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

impl Schema {
    /// Compiles `schema`. The error describes what is wrong with it.
    pub fn compile(schema: &Value) -> Result<Self, String> {
        let mut schemas = boon::Schemas::new();
        let mut compiler = boon::Compiler::new();
        compiler.use_loader(Box::new(NoLoading));
        compiler
            .add_resource(SCHEMA_LOCATION, schema.clone())
            .map_err(|error| format!("invalid JSON Schema: {error}"))?;
        let index = compiler
            .compile(SCHEMA_LOCATION, &mut schemas)
            .map_err(|error| format!("invalid JSON Schema: {error:#}"))?;
        Ok(Self { schemas, index })
    }

    /// Checks `value` against the schema. The error names the first
    /// failing location and why.
    pub fn validate(&self, value: &Value) -> Result<(), String> {
        self.schemas.validate(value, self.index).map_err(|error| {
            // boon writes a header line, then one `- at 'PATH': REASON` line
            // per failure; keep the failures.
            let text = error.to_string();
            let failures: Vec<String> = text
                .lines()
                .skip(1)
                .map(|line| {
                    let line = line.trim().trim_start_matches("- ");
                    match line.strip_prefix("at '': ") {
                        Some(reason) => reason.to_string(),
                        None => line.to_string(),
                    }
                })
                .collect();
            if failures.is_empty() {
                text.replace(SCHEMA_LOCATION, "schema")
            } else {
                failures.join("; ")
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn values_are_checked() {
        let schema = Schema::compile(&json!({
            "type": "object",
            "required": ["reason"],
            "properties": {"reason": {"type": "string", "minLength": 3}}
        }))
        .unwrap();
        assert!(
            schema
                .validate(&json!({"reason": "confirmed phishing"}))
                .is_ok()
        );
        let error = schema.validate(&json!({"reason": 7})).unwrap_err();
        assert!(error.contains("reason"), "{error}");
        assert!(schema.validate(&json!({})).is_err());
    }

    #[test]
    fn invalid_schemas_and_references_are_rejected() {
        assert!(Schema::compile(&json!({"type": "colour"})).is_err());
        let error = Schema::compile(&json!({"$ref": "file:///etc/passwd"}))
            .err()
            .unwrap();
        assert!(error.contains("invalid JSON Schema"), "{error}");
        assert!(Schema::compile(&json!({"$ref": "https://example.com/s.json"})).is_err());
    }
}

//! Expressions and templates in playbooks, evaluated by minijinja.
//!
//! minijinja has no access to files, the environment or the network, and
//! every evaluation runs with a fuel limit, so a playbook expression cannot
//! loop without end. Undefined values are chainable: `steps.x.y` on a step
//! that did not run is undefined, which becomes JSON `null`.

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// Fuel for one evaluation: minijinja instructions, enough for any sensible
/// expression over an alert.
const FUEL: u64 = 100_000;

/// Maximum size of one rendered template string, in bytes.
const MAX_RENDERED_BYTES: usize = 1 << 20;

/// The expression environment shared by all playbooks.
pub struct Templates {
    env: Environment<'static>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(50);
        Self { env }
    }

    /// Checks the syntax of an expression, and that every variable it reads
    /// is one a playbook can use.
    pub fn check_expression(&self, expression: &str) -> Result<(), String> {
        let compiled = self
            .env
            .compile_expression(expression)
            .map_err(|error| describe(&error))?;
        check_variables(compiled.undeclared_variables(false))
    }

    /// Checks the syntax of every string in a templated value.
    pub fn check_value(&self, value: &Value) -> Result<(), String> {
        match value {
            Value::String(text) => match sole_expression(text) {
                Some(expression) => self.check_expression(expression),
                None if text.contains("{{") || text.contains("{%") => {
                    let template = self
                        .env
                        .template_from_str(text)
                        .map_err(|error| describe(&error))?;
                    check_variables(template.undeclared_variables(false))
                }
                None => Ok(()),
            },
            Value::Array(items) => items.iter().try_for_each(|item| self.check_value(item)),
            Value::Object(map) => map.values().try_for_each(|item| self.check_value(item)),
            _ => Ok(()),
        }
    }

    /// Evaluates an expression to a JSON value.
    pub fn eval(&self, expression: &str, context: &minijinja::Value) -> Result<Value, String> {
        let compiled = self
            .env
            .compile_expression(expression)
            .map_err(|error| describe(&error))?;
        let result = compiled
            .eval(context.clone())
            .map_err(|error| describe(&error))?;
        let json = to_json(&result)?;
        let size = serde_json::to_vec(&json).map_or(0, |bytes| bytes.len());
        if size > MAX_RENDERED_BYTES {
            return Err(format!(
                "expression produced {size} bytes, over the limit of {MAX_RENDERED_BYTES}"
            ));
        }
        Ok(json)
    }

    /// Evaluates an expression as a condition, using Jinja truthiness.
    pub fn is_true(&self, expression: &str, context: &minijinja::Value) -> Result<bool, String> {
        let compiled = self
            .env
            .compile_expression(expression)
            .map_err(|error| describe(&error))?;
        compiled
            .eval(context.clone())
            .map(|value| value.is_true())
            .map_err(|error| describe(&error))
    }

    /// Resolves every string in `value` against `context`.
    pub fn render(&self, value: &Value, context: &minijinja::Value) -> Result<Value, String> {
        match value {
            Value::String(text) => {
                if let Some(expression) = sole_expression(text) {
                    return self.eval(expression, context);
                }
                if !text.contains("{{") && !text.contains("{%") {
                    return Ok(value.clone());
                }
                let rendered = self
                    .env
                    .render_str(text, context.clone())
                    .map_err(|error| describe(&error))?;
                if rendered.len() > MAX_RENDERED_BYTES {
                    return Err(format!(
                        "template rendered {} bytes, over the limit of {MAX_RENDERED_BYTES}",
                        rendered.len()
                    ));
                }
                Ok(Value::String(rendered))
            }
            Value::Array(items) => items
                .iter()
                .map(|item| self.render(item, context))
                .collect::<Result<_, _>>()
                .map(Value::Array),
            Value::Object(map) => map
                .iter()
                .map(|(key, item)| Ok((key.clone(), self.render(item, context)?)))
                .collect::<Result<_, String>>()
                .map(Value::Object),
            _ => Ok(value.clone()),
        }
    }
}

/// Variables a playbook expression may read. `item` is set only in a
/// `for_each` step and `error` only in a handler; elsewhere they are
/// undefined.
const CONTEXT_VARIABLES: [&str; 6] = ["alert", "case", "steps", "inputs", "item", "error"];

/// Global functions minijinja defines.
const GLOBAL_FUNCTIONS: [&str; 3] = ["range", "dict", "namespace"];

/// Rejects a variable that is not in the run context, such as a typo like
/// `alrt`, which would otherwise always be undefined.
fn check_variables(names: std::collections::HashSet<String>) -> Result<(), String> {
    let mut unknown: Vec<String> = names
        .into_iter()
        .filter(|name| {
            !CONTEXT_VARIABLES.contains(&name.as_str())
                && !GLOBAL_FUNCTIONS.contains(&name.as_str())
        })
        .collect();
    unknown.sort();
    match unknown.first() {
        None => Ok(()),
        Some(name) => Err(format!(
            "unknown variable `{name}`; expressions can read {}",
            CONTEXT_VARIABLES.join(", ")
        )),
    }
}

/// Returns the expression when `text` is exactly one `{{ ... }}`.
fn sole_expression(text: &str) -> Option<&str> {
    let inner = text.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.contains("{{") || inner.contains("}}") {
        return None;
    }
    Some(inner.trim())
}

fn to_json(value: &minijinja::Value) -> Result<Value, String> {
    if value.is_undefined() {
        return Ok(Value::Null);
    }
    serde_json::to_value(value).map_err(|error| format!("result is not JSON: {error}"))
}

fn describe(error: &minijinja::Error) -> String {
    let mut message = error.to_string();
    if let Some(detail) = error.detail()
        && !message.contains(detail)
    {
        message.push_str(": ");
        message.push_str(detail);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn to_context(value: Value) -> minijinja::Value {
        minijinja::Value::from_serialize(value)
    }

    #[test]
    fn sole_expression_keeps_json_type() {
        let templates = Templates::new();
        let context = to_context(json!({"steps": {"a": {"items": [1, 2]}}}));
        let value = templates
            .render(&json!({"x": "{{ steps.a.items }}"}), &context)
            .unwrap();
        assert_eq!(value, json!({"x": [1, 2]}));
    }

    #[test]
    fn mixed_text_renders_to_string() {
        let templates = Templates::new();
        let context = to_context(json!({"alert": {"rule": {"id": "554"}}}));
        let value = templates
            .render(&json!("rule {{ alert.rule.id }}"), &context)
            .unwrap();
        assert_eq!(value, json!("rule 554"));
    }

    #[test]
    fn missing_step_output_is_null() {
        let templates = Templates::new();
        let value = templates
            .render(
                &json!("{{ steps.skipped.results }}"),
                &to_context(json!({"steps": {}})),
            )
            .unwrap();
        assert_eq!(value, Value::Null);
    }

    #[test]
    fn endless_loop_runs_out_of_fuel() {
        let templates = Templates::new();
        let text = json!(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
        );
        let error = templates.render(&text, &to_context(json!({}))).unwrap_err();
        assert!(error.contains("fuel"), "{error}");
    }

    #[test]
    fn unknown_variables_are_rejected() {
        let templates = Templates::new();
        let error = templates
            .check_expression("alrt.severity == 'high'")
            .unwrap_err();
        assert!(error.contains("`alrt`"), "{error}");
        assert!(
            templates
                .check_expression("alert.severity == 'high'")
                .is_ok()
        );
        assert!(templates.check_expression("range(3) | list").is_ok());
        let error = templates
            .check_value(&json!({"x": "id {{ nosuch.thing }}"}))
            .unwrap_err();
        assert!(error.contains("`nosuch`"), "{error}");
    }

    #[test]
    fn huge_expression_result_is_rejected() {
        let templates = Templates::new();
        let error = templates
            .render(&json!("{{ 'x' * 2000000 }}"), &to_context(json!({})))
            .unwrap_err();
        assert!(error.contains("over the limit"), "{error}");
    }

    #[test]
    fn conditions_use_truthiness() {
        let templates = Templates::new();
        let context = to_context(json!({"alert": {"severity": "high"}, "list": []}));
        assert!(
            templates
                .is_true("alert.severity == 'high'", &context)
                .unwrap()
        );
        assert!(!templates.is_true("list", &context).unwrap());
    }
}

//! What a simulated model turn answers, decided from the request body like the Responses
//! backend would: a function call when the request offers function tools, the tool's output
//! quoted back after a `function_call_output`, and JSON text for `text.format`.
//!
//! Everything here is deterministic: arguments and structured replies are built from the JSON
//! schemas the request carries (required properties only; strings get a plausible value).

use serde_json::{json, Map, Value};

/// The answer of one turn.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// An assistant message with this text.
    Text(String),
    /// Function calls: `(name, arguments JSON)` in output order.
    Calls(Vec<(String, String)>),
}

/// How the knobs let a turn call tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolPolicy {
    /// Knob `tool_calls`: answer with function calls at all.
    pub enabled: bool,
    /// The request comes from the Codex CLI (`originator: codex_*`) and the knob
    /// `tool_calls_for_codex_cli` is off: answer with text.
    pub exempt_client: bool,
}

impl ToolPolicy {
    /// Calls allowed for every client.
    pub const ON: ToolPolicy = ToolPolicy {
        enabled: true,
        exempt_client: false,
    };
}

/// Whether an `originator` header names the Codex CLI (`codex_exec`, `codex_cli_rs`, ...).
pub fn is_codex_cli_originator(originator: Option<&str>) -> bool {
    originator.is_some_and(|o| o.trim().to_ascii_lowercase().starts_with("codex_"))
}

/// The reply to a request `body` (a Responses request or a WebSocket `response.create`):
/// - last input item a `function_call_output` → text `The tool said: <output>`;
/// - else function tools offered, `tool_choice` not `"none"` (and the policy allows) → calls:
///   the tool `tool_choice` names, else the first function tool, plus the second one when
///   `parallel_tool_calls` is true and `tool_choice` names none;
/// - else `text`.
///
/// Text is then shaped by `text.format`: `json_schema` → a document of the schema,
/// `json_object` → `{"reply": text}`.
pub fn decide(body: &Map<String, Value>, text: String, policy: ToolPolicy) -> Reply {
    let text = match last_function_output(body) {
        Some(output) => format!("The tool said: {output}"),
        None => {
            if policy.enabled && !policy.exempt_client {
                if let Some(calls) = plan_calls(body) {
                    return Reply::Calls(calls);
                }
            }
            text
        }
    };
    Reply::Text(shape_text(body, text))
}

/// The `output` of the last input item when it is a `function_call_output`, as text.
fn last_function_output(body: &Map<String, Value>) -> Option<String> {
    let last = body.get("input")?.as_array()?.last()?;
    if last.get("type").and_then(Value::as_str) != Some("function_call_output") {
        return None;
    }
    Some(match last.get("output") {
        Some(Value::String(s)) => s.clone(),
        // A list of content parts (`input_text`, ...): their text.
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    })
}

/// The function tools of a request: `(name, parameters)`.
fn function_tools(body: &Map<String, Value>) -> Vec<(&str, Option<&Value>)> {
    body.get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| t.get("type").and_then(Value::as_str) == Some("function"))
        .filter_map(|t| {
            let name = t.get("name").and_then(Value::as_str)?;
            Some((name, t.get("parameters")))
        })
        .collect()
}

/// Which calls to make, or `None` for a text answer.
fn plan_calls(body: &Map<String, Value>) -> Option<Vec<(String, String)>> {
    let tools = function_tools(body);
    if tools.is_empty() {
        return None;
    }
    let choice = body.get("tool_choice");
    // The function `tool_choice` names, or the allowed tools it restricts to.
    let mut named: Option<&str> = None;
    let mut allowed: Option<Vec<&str>> = None;
    match choice {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => match s.as_str() {
            "none" => return None,
            "auto" | "required" => {}
            _ => return None,
        },
        Some(Value::Object(o)) => match o.get("type").and_then(Value::as_str) {
            Some("function") => named = o.get("name").and_then(Value::as_str),
            Some("allowed_tools") => {
                if o.get("mode").and_then(Value::as_str) == Some("none") {
                    return None;
                }
                allowed = Some(
                    o.get("tools")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter(|t| t.get("type").and_then(Value::as_str) == Some("function"))
                        .filter_map(|t| t.get("name").and_then(Value::as_str))
                        .collect(),
                );
            }
            // A hosted or custom tool is forced: no function call.
            _ => return None,
        },
        Some(_) => return None,
    }
    if let Some(name) = named {
        let params = tools.iter().find(|(n, _)| *n == name).and_then(|t| t.1);
        return Some(vec![(name.to_string(), arguments(params))]);
    }
    let candidates: Vec<(&str, Option<&Value>)> = match &allowed {
        Some(names) => tools
            .into_iter()
            .filter(|(n, _)| names.contains(n))
            .collect(),
        None => tools,
    };
    let parallel = body
        .get("parallel_tool_calls")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let take = if parallel { 2 } else { 1 };
    let calls: Vec<(String, String)> = candidates
        .into_iter()
        .take(take)
        .map(|(name, params)| (name.to_string(), arguments(params)))
        .collect();
    (!calls.is_empty()).then_some(calls)
}

/// The arguments of a call to a tool with these `parameters`: a JSON object string.
pub fn arguments(parameters: Option<&Value>) -> String {
    let value = match parameters {
        Some(schema) => instance(schema, schema, "", 0),
        None => json!({}),
    };
    let value = if value.is_object() { value } else { json!({}) };
    value.to_string()
}

/// Shape reply text by `text.format` (`json_schema`, `json_object`; `text` or none: as is).
pub fn shape_text(body: &Map<String, Value>, text: String) -> String {
    let Some(format) = body.get("text").and_then(|t| t.get("format")) else {
        return text;
    };
    match format.get("type").and_then(Value::as_str) {
        Some("json_schema") => {
            let schema = format.get("schema").unwrap_or(&Value::Null);
            instance(schema, schema, "", 0).to_string()
        }
        Some("json_object") => json!({ "reply": text }).to_string(),
        _ => text,
    }
}

/// How deep schemas are followed (nesting and `$ref`s).
const MAX_DEPTH: usize = 12;

/// A value conforming to `schema` (a JSON schema; `root` for `$ref`s), for a property `name`.
fn instance(schema: &Value, root: &Value, name: &str, depth: usize) -> Value {
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    let Some(s) = schema.as_object() else {
        // `true` or a missing schema: anything goes.
        return Value::Null;
    };
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        return match resolve(root, r) {
            Some(target) => instance(target, root, name, depth + 1),
            None => Value::Null,
        };
    }
    if let Some(c) = s.get("const") {
        return c.clone();
    }
    if let Some(first) = s
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(branches) = s.get(key).and_then(Value::as_array) {
            let branch = branches
                .iter()
                .find(|b| b.get("type").and_then(Value::as_str) != Some("null"))
                .or_else(|| branches.first());
            if let Some(b) = branch {
                return instance(b, root, name, depth + 1);
            }
        }
    }
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        // Merge the objects the branches describe.
        let mut out = Map::new();
        for b in all {
            match instance(b, root, name, depth + 1) {
                Value::Object(m) => out.extend(m),
                other if out.is_empty() => return other,
                _ => {}
            }
        }
        return Value::Object(out);
    }
    let kind = match s.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if s.contains_key("properties") => "object",
        _ if s.contains_key("items") => "array",
        _ => "string",
    };
    match kind {
        "object" => {
            let props = s.get("properties").and_then(Value::as_object);
            let mut out = Map::new();
            for req in s
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                let prop = props.and_then(|p| p.get(req)).unwrap_or(&Value::Null);
                out.insert(req.to_string(), instance(prop, root, req, depth + 1));
            }
            Value::Object(out)
        }
        "array" => {
            let min = s.get("minItems").and_then(Value::as_u64).unwrap_or(1);
            let max = s
                .get("maxItems")
                .and_then(Value::as_u64)
                .unwrap_or(u64::MAX);
            let n = min.max(1).min(max).min(8);
            let items = s.get("items").unwrap_or(&Value::Null);
            Value::Array(
                (0..n)
                    .map(|_| instance(items, root, name, depth + 1))
                    .collect(),
            )
        }
        "integer" => json!(bounded(s, 1.0).ceil() as i64),
        "number" => {
            let v = bounded(s, 1.0);
            if v.fract() == 0.0 && v.abs() < 1e15 {
                json!(v as i64)
            } else {
                json!(v)
            }
        }
        "boolean" => json!(true),
        "null" => Value::Null,
        _ => Value::String(plausible_string(s, name)),
    }
}

/// `preferred`, moved into `minimum`/`maximum` if the schema bounds it.
fn bounded(s: &Map<String, Value>, preferred: f64) -> f64 {
    let mut v = preferred;
    if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
        v = v.max(min);
    }
    if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
        v = v.min(max);
    }
    v
}

/// A string for a property named `name`.
fn plausible_string(s: &Map<String, Value>, name: &str) -> String {
    let by_format = match s.get("format").and_then(Value::as_str) {
        Some("date-time") => Some("2026-01-01T00:00:00Z"),
        Some("date") => Some("2026-01-01"),
        Some("time") => Some("12:00:00"),
        Some("email") => Some("user@example.com"),
        Some("uri" | "url") => Some("https://example.com/"),
        Some("uuid") => Some("00000000-0000-4000-8000-000000000000"),
        _ => None,
    };
    let lower = name.to_ascii_lowercase();
    let by_name = match lower.as_str() {
        "city" | "location" | "place" | "town" => "Paris",
        "country" => "France",
        "email" => "user@example.com",
        _ => "example",
    };
    let mut out = by_format.unwrap_or(by_name).to_string();
    if let Some(min) = s.get("minLength").and_then(Value::as_u64) {
        while (out.chars().count() as u64) < min {
            out.push('x');
        }
    }
    if let Some(max) = s.get("maxLength").and_then(Value::as_u64) {
        out = out.chars().take(max as usize).collect();
    }
    out
}

/// A local `$ref` (`#/$defs/X`, `#/definitions/X`, any JSON pointer into the root).
fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    root.pointer(pointer)
}

/// What the request log keeps of a turn's request: tool names (a tool without a name by its
/// type), `tool_choice` (a string, or an object's `type`/`name`/`mode`), `text.format.type`.
pub fn logged_fields(
    body: &Map<String, Value>,
) -> (Option<Vec<String>>, Option<Value>, Option<String>) {
    let tools = body.get("tools").and_then(Value::as_array).map(|tools| {
        tools
            .iter()
            .filter_map(|t| {
                t.get("name")
                    .or_else(|| t.get("type"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect()
    });
    let tool_choice = match body.get("tool_choice") {
        Some(Value::String(s)) => Some(Value::String(s.clone())),
        Some(Value::Object(o)) => Some(Value::Object(
            ["type", "name", "mode"]
                .iter()
                .filter_map(|k| Some((k.to_string(), o.get(*k)?.clone())))
                .collect(),
        )),
        _ => None,
    };
    let text_format = body
        .get("text")
        .and_then(|t| t.get("format"))
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
        .map(str::to_string);
    (tools, tool_choice, text_format)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn weather() -> Value {
        json!({
            "type": "function",
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer"},
                    "detailed": {"type": "boolean"},
                    "note": {"type": "string"}
                },
                "required": ["city", "unit", "days", "detailed"],
                "additionalProperties": false
            },
            "strict": true
        })
    }

    fn time_tool() -> Value {
        json!({"type": "function", "name": "get_time", "parameters": {
            "type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}})
    }

    fn user(text: &str) -> Value {
        json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
    }

    #[test]
    fn calls_the_first_tool_with_arguments_from_its_schema() {
        let body = obj(
            json!({"tools": [weather(), time_tool()], "tool_choice": "auto",
                              "input": [user("weather?")]}),
        );
        let Reply::Calls(calls) = decide(&body, "hi".into(), ToolPolicy::ON) else {
            panic!("expected a call");
        };
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, "get_weather");
        let args: Value = serde_json::from_str(&calls[0].1).unwrap();
        assert_eq!(
            args,
            json!({"city": "Paris", "unit": "celsius", "days": 1, "detailed": true})
        );
    }

    #[test]
    fn tool_choice_and_parallel_calls() {
        let tools = json!([weather(), time_tool()]);
        let named = obj(json!({"tools": tools, "parallel_tool_calls": true,
                               "tool_choice": {"type": "function", "name": "get_time"}}));
        assert_eq!(
            decide(&named, String::new(), ToolPolicy::ON),
            Reply::Calls(vec![("get_time".into(), r#"{"zone":"example"}"#.into())])
        );
        let parallel = obj(json!({"tools": tools, "parallel_tool_calls": true}));
        let Reply::Calls(calls) = decide(&parallel, String::new(), ToolPolicy::ON) else {
            panic!()
        };
        assert_eq!(
            calls.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
            ["get_weather", "get_time"]
        );
        let allowed = obj(
            json!({"tools": tools, "tool_choice": {"type": "allowed_tools",
            "mode": "required", "tools": [{"type": "function", "name": "get_time"}]}}),
        );
        let Reply::Calls(calls) = decide(&allowed, String::new(), ToolPolicy::ON) else {
            panic!()
        };
        assert_eq!(calls[0].0, "get_time");
        for choice in [json!("none"), json!({"type": "web_search"})] {
            let b = obj(json!({"tools": tools, "tool_choice": choice}));
            assert_eq!(
                decide(&b, "t".into(), ToolPolicy::ON),
                Reply::Text("t".into())
            );
        }
        // Only function tools count.
        let hosted = obj(json!({"tools": [{"type": "web_search"}], "tool_choice": "auto"}));
        assert_eq!(
            decide(&hosted, "t".into(), ToolPolicy::ON),
            Reply::Text("t".into())
        );
    }

    #[test]
    fn policy_can_turn_calls_off() {
        let body = obj(json!({"tools": [weather()]}));
        for policy in [
            ToolPolicy {
                enabled: false,
                exempt_client: false,
            },
            ToolPolicy {
                enabled: true,
                exempt_client: true,
            },
        ] {
            assert_eq!(decide(&body, "t".into(), policy), Reply::Text("t".into()));
        }
        assert!(is_codex_cli_originator(Some("codex_exec")));
        assert!(is_codex_cli_originator(Some("codex_cli_rs")));
        assert!(!is_codex_cli_originator(Some("openai-python")));
        assert!(!is_codex_cli_originator(None));
    }

    #[test]
    fn function_output_is_quoted_back() {
        let body = obj(json!({"tools": [weather()], "input": [
            user("weather?"),
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "22 C and sunny"}
        ]}));
        assert_eq!(
            decide(&body, "t".into(), ToolPolicy::ON),
            Reply::Text("The tool said: 22 C and sunny".into())
        );
        let parts = obj(
            json!({"input": [{"type": "function_call_output", "call_id": "c",
            "output": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]}]}),
        );
        assert_eq!(
            decide(&parts, "t".into(), ToolPolicy::ON),
            Reply::Text("The tool said: ab".into())
        );
    }

    #[test]
    fn json_formats() {
        let schema = json!({
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "temperature": {"type": "number", "minimum": 5},
                "tags": {"type": "array", "items": {"type": "string"}},
                "when": {"type": "string", "format": "date"},
                "nested": {"$ref": "#/$defs/inner"},
                "maybe": {"anyOf": [{"type": "null"}, {"type": "integer"}]},
                "optional": {"type": "string"}
            },
            "required": ["location", "temperature", "tags", "when", "nested", "maybe"],
            "$defs": {"inner": {"type": "object", "properties": {"ok": {"type": "boolean"}},
                                "required": ["ok"]}}
        });
        let body = obj(
            json!({"text": {"format": {"type": "json_schema", "name": "w",
                                                  "schema": schema, "strict": true}}}),
        );
        let Reply::Text(t) = decide(&body, "ignored".into(), ToolPolicy::ON) else {
            panic!()
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(
            v,
            json!({"location": "Paris", "temperature": 5, "tags": ["example"],
                   "when": "2026-01-01", "nested": {"ok": true}, "maybe": 1})
        );
        let body = obj(json!({"text": {"format": {"type": "json_object"}}}));
        let Reply::Text(t) = decide(&body, "say \"hi\"".into(), ToolPolicy::ON) else {
            panic!()
        };
        assert_eq!(
            serde_json::from_str::<Value>(&t).unwrap(),
            json!({"reply": "say \"hi\""})
        );
        let body = obj(json!({"text": {"format": {"type": "text"}, "verbosity": "low"}}));
        assert_eq!(
            decide(&body, "plain".into(), ToolPolicy::ON),
            Reply::Text("plain".into())
        );
        // Self-referencing schemas end.
        let body = obj(json!({"text": {"format": {"type": "json_schema", "schema":
            {"type": "object", "properties": {"next": {"$ref": "#"}}, "required": ["next"]}}}}));
        let Reply::Text(t) = decide(&body, String::new(), ToolPolicy::ON) else {
            panic!()
        };
        assert!(serde_json::from_str::<Value>(&t).is_ok());
    }

    #[test]
    fn logged_request_fields() {
        let body = obj(json!({"tools": [weather(), {"type": "web_search"}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "text": {"format": {"type": "json_schema", "schema": {}}}}));
        let (tools, choice, format) = logged_fields(&body);
        assert_eq!(tools.unwrap(), ["get_weather", "web_search"]);
        assert_eq!(
            choice.unwrap(),
            json!({"type": "function", "name": "get_weather"})
        );
        assert_eq!(format.as_deref(), Some("json_schema"));
        assert_eq!(logged_fields(&obj(json!({}))), (None, None, None));
    }
}

//! Building the Responses API events of a simulated model turn and framing them as SSE.

use serde_json::{json, Value};

/// What one turn answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// `resp_...`
    pub response_id: String,
    /// `msg_...`
    pub item_id: String,
    /// Model slug echoed back.
    pub model: String,
    /// Full reply text.
    pub text: String,
    /// How many delta events to split the text into.
    pub delta_count: usize,
    /// Simulated unix seconds.
    pub created_at: i64,
    /// Input tokens reported.
    pub input_tokens: i64,
    /// Function calls answered instead of the text (when not empty).
    pub calls: Vec<FunctionCall>,
}

/// One `function_call` output item.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionCall {
    /// `fc_...`
    pub item_id: String,
    /// `call_...` (what the client's `function_call_output` names).
    pub call_id: String,
    /// The function's name.
    pub name: String,
    /// The arguments, a JSON object as a string.
    pub arguments: String,
}

impl FunctionCall {
    /// The item; `arguments` empty while `in_progress`.
    pub fn item(&self, done: bool) -> Value {
        json!({
            "id": self.item_id,
            "type": "function_call",
            "status": if done { "completed" } else { "in_progress" },
            "call_id": self.call_id,
            "name": self.name,
            "arguments": if done { self.arguments.as_str() } else { "" },
        })
    }

    /// `response.function_call_arguments.delta` events for output item `index`.
    fn delta_events(&self, index: usize, pieces: usize) -> Vec<Value> {
        split_text(&self.arguments, pieces)
            .into_iter()
            .map(|delta| {
                json!({
                    "type": "response.function_call_arguments.delta",
                    "item_id": self.item_id,
                    "output_index": index,
                    "delta": delta,
                })
            })
            .collect()
    }

    /// Everything about output item `index`: added, the argument deltas, arguments done,
    /// item done.
    fn events(&self, index: usize, pieces: usize) -> Vec<Value> {
        let mut events = vec![json!({
            "type": "response.output_item.added",
            "output_index": index,
            "item": self.item(false),
        })];
        events.extend(self.delta_events(index, pieces));
        events.push(json!({
            "type": "response.function_call_arguments.done",
            "item_id": self.item_id,
            "output_index": index,
            "name": self.name,
            "arguments": self.arguments,
        }));
        events.push(json!({
            "type": "response.output_item.done",
            "output_index": index,
            "item": self.item(true),
        }));
        events
    }
}

impl Turn {
    fn output_tokens(&self) -> i64 {
        if self.calls.is_empty() {
            (self.text.split_whitespace().count() as i64).max(1)
        } else {
            let chars: usize = self
                .calls
                .iter()
                .map(|c| c.name.len() + c.arguments.len())
                .sum();
            (chars as i64 / 4).max(1)
        }
    }

    /// The finished output items: the function calls, or the assistant message.
    pub fn output_items(&self) -> Vec<Value> {
        if self.calls.is_empty() {
            vec![self.message_item()]
        } else {
            self.calls.iter().map(|c| c.item(true)).collect()
        }
    }

    /// The `usage` object of `response.completed`.
    pub fn usage(&self) -> Value {
        let out = self.output_tokens();
        json!({
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.input_tokens + out,
        })
    }

    /// The finished assistant message.
    pub fn message_item(&self) -> Value {
        json!({
            "id": self.item_id,
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": self.text, "annotations": []}],
        })
    }

    fn response_object(&self, status: &str, output: Value, usage: Option<Value>) -> Value {
        let mut r = json!({
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "model": self.model,
            "output": output,
        });
        if let (Some(u), Some(obj)) = (usage, r.as_object_mut()) {
            obj.insert("usage".into(), u);
        }
        r
    }

    /// The non-streamed answer (`stream: false`).
    pub fn response_json(&self) -> Value {
        self.response_object(
            "completed",
            Value::Array(self.output_items()),
            Some(self.usage()),
        )
    }

    /// `response.created`.
    pub fn created_event(&self) -> Value {
        json!({
            "type": "response.created",
            "response": self.response_object("in_progress", json!([]), None),
        })
    }

    /// The events of a whole successful turn, in order: created, output_item.added,
    /// content_part.added, the deltas, output_text.done, content_part.done, output_item.done,
    /// completed. A function-call turn has, per call,
    /// output_item.added, function_call_arguments.delta ×n, function_call_arguments.done,
    /// output_item.done.
    pub fn events(&self) -> Vec<Value> {
        let mut events = vec![self.created_event()];
        if !self.calls.is_empty() {
            for (i, call) in self.calls.iter().enumerate() {
                events.extend(call.events(i, self.delta_count));
            }
            events.push(self.completed_event());
            return number(events);
        }
        events.push(json!({
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {
                "id": self.item_id,
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            },
        }));
        // As the Responses API streams a message: the part opens, its text arrives in
        // deltas, the part closes, then the item (the SDKs' stream helpers index into the
        // part they were told about).
        events.push(json!({
            "type": "response.content_part.added",
            "item_id": self.item_id,
            "output_index": 0,
            "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []},
        }));
        events.extend(self.delta_events());
        events.push(json!({
            "type": "response.output_text.done",
            "item_id": self.item_id,
            "output_index": 0,
            "content_index": 0,
            "text": self.text,
        }));
        events.push(json!({
            "type": "response.content_part.done",
            "item_id": self.item_id,
            "output_index": 0,
            "content_index": 0,
            "part": {"type": "output_text", "text": self.text, "annotations": []},
        }));
        events.push(json!({
            "type": "response.output_item.done",
            "output_index": 0,
            "item": self.message_item(),
        }));
        events.push(self.completed_event());
        number(events)
    }

    fn completed_event(&self) -> Value {
        json!({
            "type": "response.completed",
            "response": self.response_json(),
        })
    }

    /// The delta events alone (of a function-call turn: the first call's added event and
    /// argument deltas).
    pub fn delta_events(&self) -> Vec<Value> {
        if let Some(call) = self.calls.first() {
            let mut events = vec![json!({
                "type": "response.output_item.added",
                "output_index": 0,
                "item": call.item(false),
            })];
            events.extend(call.delta_events(0, self.delta_count));
            return events;
        }
        split_text(&self.text, self.delta_count)
            .into_iter()
            .map(|delta| {
                json!({
                    "type": "response.output_text.delta",
                    "item_id": self.item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": delta,
                })
            })
            .collect()
    }

    /// created, output_item.added, the deltas, then `response.failed` with `error`.
    pub fn failed_events(&self, error: Value) -> Vec<Value> {
        let mut events = vec![self.created_event()];
        events.extend(self.delta_events());
        let mut resp = self.response_object("failed", json!([]), None);
        if let Some(obj) = resp.as_object_mut() {
            obj.insert("error".into(), error);
        }
        events.push(json!({"type": "response.failed", "response": resp}));
        number(events)
    }

    /// A warm-up answer (`generate: false` on a WebSocket): created, then completed with no
    /// output and no usage.
    pub fn warmup_events(&self) -> Vec<Value> {
        number(vec![
            self.created_event(),
            json!({
                "type": "response.completed",
                "response": self.response_object("completed", json!([]), None),
            }),
        ])
    }

    /// created and the deltas, nothing that ends the turn.
    pub fn truncated_events(&self) -> Vec<Value> {
        let mut events = vec![self.created_event()];
        events.extend(self.delta_events());
        number(events)
    }
}

fn number(mut events: Vec<Value>) -> Vec<Value> {
    for (i, e) in events.iter_mut().enumerate() {
        if let Some(obj) = e.as_object_mut() {
            obj.insert("sequence_number".into(), json!(i));
        }
    }
    events
}

/// Split `text` into `n` non-empty pieces of about equal length (fewer if the text is short;
/// none if `n` is 0 or the text is empty). Concatenated, they give back `text`.
pub fn split_text(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if n == 0 || chars.is_empty() {
        return Vec::new();
    }
    let n = n.min(chars.len());
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    for i in 0..n {
        let end = chars.len() * (i + 1) / n;
        out.push(chars[start..end].iter().collect());
        start = end;
    }
    out
}

/// Frame one event: `event: <type>\ndata: <json>\n\n`.
pub fn frame(event: &Value) -> String {
    let kind = event
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    format!("event: {kind}\ndata: {event}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn() -> Turn {
        Turn {
            response_id: "resp_1".into(),
            item_id: "msg_1".into(),
            model: "gpt-5.1-codex".into(),
            text: "Hello there world".into(),
            delta_count: 3,
            created_at: 42,
            input_tokens: 10,
            calls: Vec::new(),
        }
    }

    #[test]
    fn split_keeps_text() {
        assert_eq!(split_text("abcdefg", 3), vec!["ab", "cd", "efg"]);
        assert_eq!(split_text("ab", 5), vec!["a", "b"]);
        assert!(split_text("abc", 0).is_empty());
        assert!(split_text("", 3).is_empty());
        assert_eq!(split_text("héllo", 2).concat(), "héllo");
    }

    #[test]
    fn event_order_and_content() {
        let events = turn().events();
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            vec![
                "response.created",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let text: String = events
            .iter()
            .filter(|e| e["type"] == "response.output_text.delta")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(text, "Hello there world");
        assert_eq!(events[0]["response"]["id"], "resp_1");
        let done = &events[8]["item"];
        assert_eq!(done["role"], "assistant");
        assert_eq!(done["content"][0]["type"], "output_text");
        assert_eq!(events[6]["text"], "Hello there world");
        let completed = &events[9]["response"];
        assert_eq!(completed["id"], "resp_1");
        assert_eq!(completed["usage"]["input_tokens"], 10);
        assert_eq!(completed["usage"]["output_tokens"], 3);
        assert_eq!(completed["usage"]["total_tokens"], 13);
        assert_eq!(
            completed["usage"]["input_tokens_details"]["cached_tokens"],
            0
        );
        assert_eq!(
            completed["usage"]["output_tokens_details"]["reasoning_tokens"],
            0
        );
        assert_eq!(events[9]["sequence_number"], 9);
    }

    #[test]
    fn function_call_events() {
        let mut t = turn();
        t.delta_count = 3;
        t.calls = vec![
            FunctionCall {
                item_id: "fc_1".into(),
                call_id: "call_1".into(),
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris"}"#.into(),
            },
            FunctionCall {
                item_id: "fc_2".into(),
                call_id: "call_2".into(),
                name: "get_time".into(),
                arguments: "{}".into(),
            },
        ];
        let events = t.events();
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        let per_call = |n: usize| {
            let mut v = vec!["response.output_item.added"];
            v.extend(std::iter::repeat_n(
                "response.function_call_arguments.delta",
                n,
            ));
            v.extend([
                "response.function_call_arguments.done",
                "response.output_item.done",
            ]);
            v
        };
        let mut want = vec!["response.created"];
        want.extend(per_call(3));
        want.extend(per_call(2));
        want.push("response.completed");
        assert_eq!(kinds, want);
        assert_eq!(
            events[1]["item"],
            json!({"id": "fc_1", "type": "function_call", "status": "in_progress",
                   "call_id": "call_1", "name": "get_weather", "arguments": ""})
        );
        let args: String = events
            .iter()
            .filter(|e| {
                e["type"] == "response.function_call_arguments.delta" && e["output_index"] == 0
            })
            .map(|e| {
                assert_eq!(e["item_id"], "fc_1");
                e["delta"].as_str().unwrap()
            })
            .collect();
        assert_eq!(args, r#"{"city":"Paris"}"#);
        assert_eq!(events[5]["arguments"], r#"{"city":"Paris"}"#);
        assert_eq!(events[6]["item"]["status"], "completed");
        assert_eq!(events[7]["output_index"], 1);
        let completed = events.last().unwrap();
        let output = completed["response"]["output"].as_array().unwrap();
        assert_eq!(output.len(), 2);
        assert_eq!(output[0], events[6]["item"]);
        assert_eq!(output[1]["call_id"], "call_2");
        assert!(
            completed["response"]["usage"]["output_tokens"]
                .as_i64()
                .unwrap()
                >= 1
        );
        assert_eq!(t.response_json()["output"], completed["response"]["output"]);
        let partial = t.truncated_events();
        assert_eq!(partial[1]["type"], "response.output_item.added");
        assert!(partial.iter().all(|e| e["type"] != "response.completed"));
    }

    #[test]
    fn framing() {
        let f = frame(&json!({"type": "response.created", "a": 1}));
        assert!(f.starts_with("event: response.created\ndata: {"));
        assert!(f.ends_with("}\n\n"));
        assert_eq!(f.matches('\n').count(), 3);
    }

    #[test]
    fn failure_shapes() {
        let ev = turn().failed_events(json!({"code": "server_error", "message": "x"}));
        let last = ev.last().unwrap();
        assert_eq!(last["type"], "response.failed");
        assert_eq!(last["response"]["error"]["code"], "server_error");
        let ev = turn().truncated_events();
        assert!(ev.iter().all(|e| e["type"] != "response.completed"));
        let ev = turn().warmup_events();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[1]["type"], "response.completed");
        assert_eq!(ev[1]["response"]["id"], "resp_1");
        assert_eq!(ev[1]["response"]["output"], json!([]));
        assert!(ev[1]["response"].get("usage").is_none());
    }
}

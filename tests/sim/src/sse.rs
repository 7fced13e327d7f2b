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
}

impl Turn {
    fn output_tokens(&self) -> i64 {
        (self.text.split_whitespace().count() as i64).max(1)
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
            json!([self.message_item()]),
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

    /// The events of a whole successful turn, in order: created, output_item.added, the
    /// deltas, output_item.done, completed.
    pub fn events(&self) -> Vec<Value> {
        let mut events = vec![self.created_event()];
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
        events.extend(self.delta_events());
        events.push(json!({
            "type": "response.output_item.done",
            "output_index": 0,
            "item": self.message_item(),
        }));
        events.push(json!({
            "type": "response.completed",
            "response": self.response_object(
                "completed",
                json!([self.message_item()]),
                Some(self.usage()),
            ),
        }));
        number(events)
    }

    /// The delta events alone.
    pub fn delta_events(&self) -> Vec<Value> {
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
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
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
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.delta",
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
        let done = &events[5]["item"];
        assert_eq!(done["role"], "assistant");
        assert_eq!(done["content"][0]["type"], "output_text");
        let completed = &events[6]["response"];
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
        assert_eq!(events[6]["sequence_number"], 6);
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

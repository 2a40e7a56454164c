//! Tool calling (OpenAI's `tools`, `tool_choice`, `parallel_tool_calls`) in the format of
//! Llama 3.x's chat templates: the template shows the model the function definitions and asks
//! for `{"name": function name, "parameters": dictionary of arguments}` as the whole reply.
//!
//! - The calls' grammar ([`Tools::grammar`], Lark for llguidance): each call is that JSON
//!   object, its `parameters` valid against the function's JSON schema; parallel calls are
//!   separated by `"; "` (vLLM's `llama3_json` parser reads the same). `required` and a named
//!   function constrain from the first token. `auto` lets the model write text or calls: a
//!   reply that begins with `{` must be calls (llama.cpp triggers its lazy grammar on that
//!   opening too), any other is free text.
//! - The reading ([`CallParser`]): generated text into content or calls, as it streams (the
//!   name once known, then the arguments piece by piece) or whole ([`parse_reply`]). It also
//!   takes what the grammar does not produce but Llama models write: `"arguments"` for
//!   `"parameters"`, a leading `"type": "function"`, free whitespace.
//!
//! `tool_choice: "none"` never gets here: the request parser drops the tools (none may be
//! called, so none is shown).

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::sampler::random_seed;

/// Why `tools` or `tool_choice` was refused; [`ToolError::field`] names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// A tool definition is malformed.
    #[error("tool {index}: {message}")]
    Tool {
        /// Its position in `tools`.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// `tool_choice` is malformed or names no offered function.
    #[error("{0}")]
    Choice(String),
}

impl ToolError {
    /// The request field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            ToolError::Tool { .. } => "tools",
            ToolError::Choice(_) => "tool_choice",
        }
    }
}

/// Which calls the reply may or must make (`tool_choice`; `"none"` drops the tools before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// Text or calls, as the model chooses.
    Auto,
    /// One or more calls, of any offered function.
    Required,
    /// Calls of this function only.
    Function(String),
}

impl ToolChoice {
    /// Reads OpenAI's `tool_choice`: `"auto"`, `"required"`, `{"type": "function",
    /// "function": {"name": …}}`, or the Responses API's flat `{"type": "function", "name":
    /// …}`. `"none"` is for the caller (it drops the tools); `None` here is `auto`.
    pub fn from_json(v: Option<&Value>) -> Result<ToolChoice, ToolError> {
        const EXPECTED: &str = "`tool_choice` must be \"none\", \"auto\", \"required\" or \
                                {\"type\": \"function\", \"function\": {\"name\": …}}";
        let v = match v {
            None | Some(Value::Null) => return Ok(ToolChoice::Auto),
            Some(v) => v,
        };
        match v {
            Value::String(s) if s == "auto" => Ok(ToolChoice::Auto),
            Value::String(s) if s == "required" => Ok(ToolChoice::Required),
            Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
                let name = o
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .or_else(|| o.get("name"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| ToolError::Choice(EXPECTED.to_string()))?;
                Ok(ToolChoice::Function(name.to_string()))
            }
            _ => Err(ToolError::Choice(EXPECTED.to_string())),
        }
    }
}

/// One offered function.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    /// Its name.
    pub name: String,
    /// The JSON schema its arguments must follow (as the grammar uses it).
    pub parameters: Value,
}

/// A request's tools: the definitions the template shows, and how calls are constrained and
/// read.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    definitions: Value,
    tools: Vec<Tool>,
    choice: ToolChoice,
    parallel: bool,
}

impl Tools {
    /// Reads OpenAI's `tools` (a list of `{"type": "function", "function": {"name", …,
    /// "parameters"}}`), `tool_choice` and `parallel_tool_calls` (true unless false).
    pub fn new(
        definitions: &Value,
        choice: Option<&Value>,
        parallel: bool,
    ) -> Result<Tools, ToolError> {
        let list = definitions.as_array().ok_or(ToolError::Tool {
            index: 0,
            message: "`tools` must be a list".to_string(),
        })?;
        let mut tools: Vec<Tool> = Vec::with_capacity(list.len());
        for (index, t) in list.iter().enumerate() {
            let fail = |message: &str| ToolError::Tool {
                index,
                message: message.to_string(),
            };
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(fail("only `\"type\": \"function\"` tools are supported"));
            }
            let f = t
                .get("function")
                .and_then(Value::as_object)
                .ok_or_else(|| fail("`function` must be an object with a `name`"))?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| fail("`function.name` must be a non-empty string"))?;
            if tools.iter().any(|t| t.name == name) {
                return Err(fail(&format!("the function name `{name}` is given twice")));
            }
            let parameters = match f.get("parameters") {
                // OpenAI: no parameters is a function of no arguments.
                None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
                Some(p @ Value::Object(_)) => p.clone(),
                Some(_) => return Err(fail("`function.parameters` must be a JSON schema")),
            };
            tools.push(Tool {
                name: name.to_string(),
                parameters: closed(parameters),
            });
        }
        let choice = ToolChoice::from_json(choice)?;
        if let ToolChoice::Function(name) = &choice {
            if !tools.iter().any(|t| &t.name == name) {
                return Err(ToolError::Choice(format!(
                    "`tool_choice` names the function `{name}`, which is not among `tools`"
                )));
            }
        }
        Ok(Tools {
            definitions: definitions.clone(),
            tools,
            choice,
            parallel,
        })
    }

    /// The definitions as the request gave them (what the chat template renders).
    pub fn definitions(&self) -> &Value {
        &self.definitions
    }

    /// The offered functions.
    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }

    /// The request's `tool_choice`.
    pub fn choice(&self) -> &ToolChoice {
        &self.choice
    }

    /// The Lark grammar (llguidance's dialect) the reply must follow.
    pub fn grammar(&self) -> String {
        let callable: Vec<&Tool> = match &self.choice {
            ToolChoice::Function(name) => self.tools.iter().filter(|t| &t.name == name).collect(),
            _ => self.tools.iter().collect(),
        };
        let mut g = String::new();
        let calls = if self.parallel {
            "call (\"; \" call)*"
        } else {
            "call"
        };
        match self.choice {
            // Free text may not begin with `{`: there a call begins.
            ToolChoice::Auto => {
                let _ = writeln!(g, "start: calls | text\ntext: \"\" | /[^{{](?s:.)*/");
            }
            _ => g.push_str("start: calls\n"),
        }
        let _ = writeln!(g, "calls: {calls}");
        let alternatives: Vec<String> = (0..callable.len()).map(|i| format!("call_{i}")).collect();
        let _ = writeln!(g, "call: {}", alternatives.join(" | "));
        for (i, t) in callable.iter().enumerate() {
            // The layout the template writes calls back in: `{"name": "f", "parameters": `.
            let head = format!(
                "{{\"name\": {}, \"parameters\": ",
                Value::String(t.name.clone())
            );
            let mut schema = t.parameters.clone();
            if let Value::Object(o) = &mut schema {
                // Python's json.dumps layout; no free whitespace (a small model given the
                // choice may write it forever).
                o.insert(
                    "x-guidance".into(),
                    json!({"whitespace_flexible": false, "item_separator": ", ",
                           "key_separator": ": "}),
                );
            }
            let _ = writeln!(
                g,
                "call_{i}: {} args_{i} \"}}\"\nargs_{i}: %json {}",
                Value::String(head),
                schema
            );
        }
        g
    }
}

/// `additionalProperties: false` wherever an object schema lists `properties` and says
/// nothing about others (llama.cpp's reading of tool schemas too): a constrained model would
/// otherwise be free to invent arguments without end.
fn closed(mut schema: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(o) => {
                if o.contains_key("properties") && !o.contains_key("additionalProperties") {
                    o.insert("additionalProperties".into(), Value::Bool(false));
                }
                for (_, child) in o.iter_mut() {
                    walk(child);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut schema);
    schema
}

/// One call of the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// `call_…`, unique per call.
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments, JSON text as generated.
    pub arguments: String,
}

impl ToolCall {
    /// As OpenAI writes it in `message.tool_calls`.
    pub fn to_openai(&self) -> Value {
        json!({"id": self.id, "type": "function",
               "function": {"name": self.name, "arguments": self.arguments}})
    }
}

/// A fresh call id, as OpenAI's (`call_` and 24 characters).
fn call_id() -> String {
    format!(
        "call_{:012x}{:012x}",
        random_seed() >> 16,
        random_seed() >> 16
    )
}

/// What a piece of generated text adds to the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    /// Text of the message's content.
    Content(String),
    /// Call `index` begins: its id and the function's name.
    CallStart {
        /// Its position among the reply's calls.
        index: usize,
        /// Its id.
        id: String,
        /// The function.
        name: String,
    },
    /// More of call `index`'s arguments.
    Arguments {
        /// Its position among the reply's calls.
        index: usize,
        /// The next piece of the arguments' JSON text.
        text: String,
    },
}

/// A finished reply: its content (when it is text) and its calls.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reply {
    /// The text, unless the reply is calls.
    pub content: Option<String>,
    /// The calls, in order.
    pub calls: Vec<ToolCall>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Nothing but whitespace yet (auto): text or calls?
    Undecided,
    Content,
    Calls,
}

/// Reads generated text as it arrives into content or calls.
#[derive(Debug)]
pub struct CallParser {
    mode: Mode,
    text: String,
    calls: Vec<ToolCall>,
}

impl CallParser {
    /// A parser for a reply to `tools` (with `auto`, the reply may be text).
    pub fn new(tools: &Tools) -> CallParser {
        CallParser {
            mode: match tools.choice {
                ToolChoice::Auto => Mode::Undecided,
                _ => Mode::Calls,
            },
            text: String::new(),
            calls: Vec::new(),
        }
    }

    /// Takes the next piece of generated text; returns what it adds.
    pub fn push(&mut self, piece: &str) -> Vec<Delta> {
        if self.mode == Mode::Content {
            return if piece.is_empty() {
                Vec::new()
            } else {
                vec![Delta::Content(piece.to_string())]
            };
        }
        self.text.push_str(piece);
        if self.mode == Mode::Undecided {
            match self.text.trim_start().chars().next() {
                None => return Vec::new(),
                Some('{') => self.mode = Mode::Calls,
                Some(_) => {
                    self.mode = Mode::Content;
                    return vec![Delta::Content(std::mem::take(&mut self.text))];
                }
            }
        }
        self.scan()
    }

    /// Whether calls have begun.
    pub fn has_calls(&self) -> bool {
        !self.calls.is_empty()
    }

    /// Ends the reply, returning what was not given out yet: text that was never decided
    /// (only whitespace) is content, and so is a reply cut (by `max_tokens`) before its
    /// first call's name; calls cut later are kept as far as they go (as OpenAI's are, with
    /// `finish_reason: "length"`).
    pub fn finish(self) -> Reply {
        match self.mode {
            Mode::Content => Reply::default(),
            Mode::Undecided => Reply {
                content: Some(self.text),
                calls: Vec::new(),
            },
            // Every piece was scanned as it came.
            Mode::Calls if self.calls.is_empty() => Reply {
                content: Some(self.text),
                calls: Vec::new(),
            },
            Mode::Calls => Reply {
                content: None,
                calls: self.calls,
            },
        }
    }

    /// Gives out what the calls text so far adds beyond what was given.
    fn scan(&mut self) -> Vec<Delta> {
        let mut out = Vec::new();
        let Some(calls) = read_calls(&self.text) else {
            return out;
        };
        for (index, call) in calls.iter().enumerate() {
            let Some(name) = &call.name else { break };
            if index == self.calls.len() {
                let id = call_id();
                out.push(Delta::CallStart {
                    index,
                    id: id.clone(),
                    name: name.clone(),
                });
                self.calls.push(ToolCall {
                    id,
                    name: name.clone(),
                    arguments: String::new(),
                });
            }
            let Some((start, end)) = call.arguments else {
                continue;
            };
            // The arguments' text only grows: what was given out is its prefix.
            let args = &self.text[start..end];
            let given = &mut self.calls[index].arguments;
            if args.len() > given.len() {
                out.push(Delta::Arguments {
                    index,
                    text: args[given.len()..].to_string(),
                });
                *given = args.to_string();
            }
        }
        out
    }
}

/// Reads a whole reply to `tools`.
pub fn parse_reply(tools: &Tools, text: &str) -> Reply {
    let mut p = CallParser::new(tools);
    let mut content = String::new();
    for d in p.push(text) {
        if let Delta::Content(c) = d {
            content.push_str(&c);
        }
    }
    let mut reply = p.finish();
    if !content.is_empty() {
        reply.content = Some(content);
    }
    reply
}

/// One call as far as the text goes.
#[derive(Debug, Default)]
struct PartialCall {
    name: Option<String>,
    /// Byte range of the arguments' JSON text so far (to the end of the text while open).
    arguments: Option<(usize, usize)>,
}

/// Reads `{"name": …, "parameters": …}` objects separated by `;` as far as the text goes;
/// `None` when it is not that.
fn read_calls(text: &str) -> Option<Vec<PartialCall>> {
    let b = text.as_bytes();
    let mut calls = Vec::new();
    let mut i = skip_ws(b, 0);
    loop {
        if i == b.len() {
            // Nothing, or a separator without its call yet.
            return Some(calls);
        }
        if b[i] != b'{' {
            return None;
        }
        let (call, end) = read_call(text, i)?;
        calls.push(call);
        let Some(end) = end else {
            return Some(calls);
        };
        i = skip_ws(b, end);
        if i < b.len() {
            if b[i] != b';' {
                return None;
            }
            i = skip_ws(b, i + 1);
        }
    }
}

/// One call object from `at` (a `{`): what it holds so far, and the offset after its `}`
/// once closed. `None` when it is not a call.
fn read_call(text: &str, at: usize) -> Option<(PartialCall, Option<usize>)> {
    let b = text.as_bytes();
    let mut call = PartialCall::default();
    let mut i = skip_ws(b, at + 1);
    loop {
        if i == b.len() {
            return Some((call, None));
        }
        match b[i] {
            b'}' => return Some((call, Some(i + 1))),
            b',' => {
                i = skip_ws(b, i + 1);
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let Some(key_end) = value_end(b, i) else {
            return Some((call, None));
        };
        let key: String = serde_json::from_str(&text[i..key_end]).ok()?;
        i = skip_ws(b, key_end);
        if i == b.len() {
            return Some((call, None));
        }
        if b[i] != b':' {
            return None;
        }
        i = skip_ws(b, i + 1);
        if i == b.len() {
            return Some((call, None));
        }
        let end = value_end(b, i);
        match key.as_str() {
            "name" => {
                let Some(end) = end else {
                    return Some((call, None));
                };
                call.name = Some(serde_json::from_str(&text[i..end]).ok()?);
            }
            "parameters" | "arguments" => {
                if !matches!(b[i], b'{') {
                    return None;
                }
                call.arguments = Some((i, end.unwrap_or(b.len())));
                if end.is_none() {
                    return Some((call, None));
                }
            }
            "type" => {}
            _ => return None,
        }
        let Some(end) = end else {
            return Some((call, None));
        };
        i = skip_ws(b, end);
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Where the JSON value starting at `at` ends (exclusive), or `None` if the text ends first.
/// Tracks strings, escapes and nesting only: what is inside is checked by the grammar, and
/// by serde where it matters.
fn value_end(b: &[u8], at: usize) -> Option<usize> {
    if !matches!(b.get(at), Some(b'"' | b'{' | b'[')) {
        // A bare scalar (number, true, …) ends where a delimiter or whitespace begins.
        return b[at..]
            .iter()
            .position(|c| matches!(c, b',' | b'}' | b']' | b';') || c.is_ascii_whitespace())
            .map(|n| at + n);
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &c) in b.iter().enumerate().skip(at) {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => {
                    in_string = false;
                    if depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Value {
        json!([
            {"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"]}}},
            {"type": "function", "function": {"name": "clock"}}
        ])
    }

    fn tools(choice: Value) -> Tools {
        Tools::new(&weather(), Some(&choice), true).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn definitions_and_choices_are_checked() {
        let t = tools(json!("required"));
        assert_eq!(t.tools().len(), 2);
        assert_eq!(t.tools()[1].parameters["additionalProperties"], false);
        assert_eq!(t.tools()[0].parameters["additionalProperties"], false);
        let named = tools(json!({"type": "function", "function": {"name": "clock"}}));
        assert_eq!(named.choice(), &ToolChoice::Function("clock".into()));
        let flat = tools(json!({"type": "function", "name": "clock"}));
        assert_eq!(flat.choice(), named.choice());
        for (defs, choice, field, words) in [
            (
                weather(),
                json!({"type": "function", "function": {"name": "f"}}),
                "tool_choice",
                "not among",
            ),
            (weather(), json!("sometimes"), "tool_choice", "must be"),
            (
                json!([{"type": "function", "function": {}}]),
                json!("auto"),
                "tools",
                "name",
            ),
            (
                json!([{"type": "code_interpreter"}]),
                json!("auto"),
                "tools",
                "function",
            ),
            (
                json!([{"type": "function", "function": {"name": "f"}},
                    {"type": "function", "function": {"name": "f"}}]),
                json!("auto"),
                "tools",
                "twice",
            ),
            (
                json!([{"type": "function", "function": {"name": "f", "parameters": 3}}]),
                json!("auto"),
                "tools",
                "schema",
            ),
        ] {
            let e = Tools::new(&defs, Some(&choice), true).err();
            let e = e.unwrap_or_else(|| panic!("{defs} {choice} accepted"));
            assert_eq!(e.field(), field, "{e}");
            assert!(e.to_string().contains(words), "{e}");
        }
    }

    #[test]
    fn grammar_names_the_callable_functions() {
        let g = tools(json!("required")).grammar();
        assert!(g.starts_with("start: calls\n"), "{g}");
        assert!(
            g.contains(r#"call_0: "{\"name\": \"get_weather\", \"parameters\": ""#),
            "{g}"
        );
        assert!(g.contains("call_1"), "{g}");
        assert!(g.contains(r#"calls: call ("; " call)*"#), "{g}");
        let named = tools(json!({"type": "function", "function": {"name": "clock"}})).grammar();
        assert!(
            !named.contains("get_weather") && named.contains("clock"),
            "{named}"
        );
        let one = Tools::new(&weather(), None, false).unwrap_or_else(|e| panic!("{e}"));
        let g = one.grammar();
        assert!(g.contains("calls: call\n") && g.contains("text:"), "{g}");
    }

    #[test]
    fn whole_replies_become_calls_or_content() {
        let t = tools(json!("auto"));
        let r = parse_reply(
            &t,
            r#"{"name": "get_weather", "parameters": {"city": "Verona"}}"#,
        );
        assert_eq!(r.content, None);
        assert_eq!(r.calls.len(), 1);
        assert_eq!(r.calls[0].name, "get_weather");
        assert_eq!(r.calls[0].arguments, r#"{"city": "Verona"}"#);
        assert!(r.calls[0].id.starts_with("call_"));
        // Parallel calls, Llama's variants: `arguments`, a `type` key, free whitespace.
        let r = parse_reply(
            &t,
            " {\"type\": \"function\", \"name\": \"clock\", \"arguments\": {}} ;\n{\"name\":\"get_weather\",\"parameters\":{\"city\":\"a}\\\"b\"}}",
        );
        let names: Vec<&str> = r.calls.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["clock", "get_weather"]);
        assert_eq!(r.calls[1].arguments, r#"{"city":"a}\"b"}"#);
        assert_ne!(r.calls[0].id, r.calls[1].id);
        // Text, what is not a call, and a call cut before its name are content.
        for text in [
            "O Romeo",
            "",
            "{\"title\": 1}",
            "{\"name\": \"clo",
            "{\"name\": \"clock\"} x",
        ] {
            let r = parse_reply(&t, text);
            assert_eq!(r.content.as_deref(), Some(text));
            assert!(r.calls.is_empty(), "{text}");
        }
        // A call cut later is kept as far as it goes.
        let r = parse_reply(&t, "{\"name\": \"get_weather\", \"parameters\": {\"ci");
        assert_eq!(r.content, None);
        assert_eq!(r.calls[0].arguments, "{\"ci");
    }

    #[test]
    fn streamed_pieces_give_the_same_calls() {
        let t = tools(json!("required"));
        let text = r#"{"name": "get_weather", "parameters": {"city": "Mantua"}}; {"name": "clock", "parameters": {}}"#;
        let mut p = CallParser::new(&t);
        let mut deltas = Vec::new();
        // One byte at a time: names appear once whole, arguments grow.
        for ch in text.chars() {
            deltas.extend(p.push(&ch.to_string()));
        }
        let reply = p.finish();
        let mut args = [String::new(), String::new()];
        let mut starts = Vec::new();
        for d in &deltas {
            match d {
                Delta::CallStart { index, name, id } => {
                    starts.push((*index, name.clone(), id.clone()))
                }
                Delta::Arguments { index, text } => args[*index].push_str(text),
                Delta::Content(c) => panic!("content {c:?}"),
            }
        }
        assert_eq!(starts.len(), 2);
        assert_eq!((starts[0].0, starts[0].1.as_str()), (0, "get_weather"));
        assert_eq!((starts[1].0, starts[1].1.as_str()), (1, "clock"));
        assert_eq!(
            args,
            [r#"{"city": "Mantua"}"#.to_string(), "{}".to_string()]
        );
        assert!(
            deltas
                .iter()
                .filter(|d| matches!(d, Delta::Arguments { index: 0, .. }))
                .count()
                > 5
        );
        assert_eq!(reply.calls.len(), 2);
        assert_eq!(reply.calls[0].id, starts[0].2);
        assert_eq!(reply.calls[1].arguments, "{}");
        // Text in auto mode streams as content once its first character is seen.
        let mut p = CallParser::new(&tools(json!("auto")));
        assert_eq!(p.push("\n"), []);
        assert_eq!(p.push("O"), [Delta::Content("\nO".into())]);
        assert_eq!(p.push(" Romeo"), [Delta::Content(" Romeo".into())]);
        assert_eq!(p.finish(), Reply::default());
    }
}

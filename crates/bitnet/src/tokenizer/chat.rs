//! Chat templates: a file's Jinja `chat_template`, or BitNet b1.58 2B-4T's own format.
//!
//! Hugging Face renders `tokenizer_config.json`'s `chat_template` with Jinja2 (`trim_blocks`,
//! `lstrip_blocks`, the `loopcontrols` extension, `raise_exception`, `bos_token`,
//! `eos_token`); we do the same with minijinja, plus Python string methods (`.strip()`,
//! `.title()`, ...) from minijinja-contrib's pycompat.
//!
//! bitnet.cpp's converter overwrites `tokenizer.chat_template` with a marker template that
//! contains `BITNET` (it is not meant to be rendered; bitnet.cpp formats with a built-in rule).
//! For that marker, or when there is no template at all, we use the format of the model's own
//! Hugging Face template: `Role: content<|eot_id|>` per message, role capitalised and content
//! trimmed, then `Assistant: ` for the generation prompt.

use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use super::TokenizerError;

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (templates may know other roles, such as `tool`).
    pub role: String,
    /// The text.
    pub content: String,
    /// An assistant message's tool calls, as OpenAI writes them (templates that know tools
    /// render them; others see only the content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// A `tool` message's answer to a call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message of `role`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            tool_calls: None,
            tool_call_id: None,
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("assistant", content)
    }
}

/// The marker bitnet.cpp's converter writes in place of the real template.
const BITNET_MARKER: &str = "BITNET";
const TEMPLATE_NAME: &str = "chat_template";

/// How a conversation becomes prompt text.
pub struct ChatTemplate {
    kind: Kind,
    bos_token: String,
    eos_token: String,
    /// The text that ends each message in the built-in format.
    end_of_turn: String,
}

enum Kind {
    Jinja(Box<Environment<'static>>),
    Bitnet,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Jinja(_) => "jinja",
            Kind::Bitnet => "bitnet built-in",
        };
        f.debug_struct("ChatTemplate")
            .field("kind", &kind)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

impl ChatTemplate {
    /// Chooses the template for a file's `chat_template` text: `None` or bitnet.cpp's marker
    /// give the built-in BitNet format; anything else is compiled as Jinja.
    ///
    /// `bos_token`/`eos_token` are the texts the template sees; `end_of_turn` ends each
    /// message in the built-in format (`<|eot_id|>` for Llama 3 vocabularies).
    pub fn new(
        source: Option<&str>,
        bos_token: &str,
        eos_token: &str,
        end_of_turn: &str,
    ) -> Result<ChatTemplate, TokenizerError> {
        let kind = match source {
            None => Kind::Bitnet,
            Some(s) if s.contains(BITNET_MARKER) => Kind::Bitnet,
            Some(s) => Kind::Jinja(Box::new(jinja_environment(s.to_string())?)),
        };
        Ok(ChatTemplate {
            kind,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            end_of_turn: end_of_turn.to_string(),
        })
    }

    /// The built-in BitNet b1.58 2B-4T format.
    pub fn bitnet(bos_token: &str, eos_token: &str, end_of_turn: &str) -> ChatTemplate {
        ChatTemplate {
            kind: Kind::Bitnet,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            end_of_turn: end_of_turn.to_string(),
        }
    }

    /// True for the built-in format, false for a Jinja template from the file.
    pub fn is_builtin(&self) -> bool {
        matches!(self.kind, Kind::Bitnet)
    }

    /// The prompt text for `messages`; with `add_generation_prompt`, ending where the
    /// assistant's reply begins. Special tokens appear as text (encode with `parse_special`).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// Whether the template can show the model a list of tools (function definitions): a
    /// Jinja template that reads the `tools` variable, as Hugging Face's tool-aware
    /// templates do. The built-in BitNet format has no place for them.
    pub fn supports_tools(&self) -> bool {
        match &self.kind {
            Kind::Bitnet => false,
            Kind::Jinja(env) => env
                .get_template(TEMPLATE_NAME)
                .map(|t| t.undeclared_variables(false).contains("tools"))
                .unwrap_or(false),
        }
    }

    /// Whether the template asks for tool calls in Llama 3.x's format (a reply that is
    /// `{"name": …, "parameters": …}`, as Meta's Llama 3.1-3.3 templates write calls back),
    /// the one format [`crate::generate::tools`] constrains and reads. Templates with other
    /// formats (Qwen's and Hermes' `<tool_call>` tags, Mistral's `[TOOL_CALLS]`) say no.
    pub fn writes_llama_tool_calls(&self) -> bool {
        match &self.kind {
            Kind::Bitnet => false,
            Kind::Jinja(env) => env.get_template(TEMPLATE_NAME).is_ok_and(|t| {
                let src = t.source();
                self.supports_tools()
                    && src.contains("<|start_header_id|>")
                    && src.contains("\"parameters\"")
                    && !src.contains("<tool_call>")
            }),
        }
    }

    /// [`ChatTemplate::render`] with the request's tool definitions (OpenAI's `tools`), for
    /// templates that [support them](ChatTemplate::supports_tools).
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        match &self.kind {
            Kind::Bitnet => Ok(self.render_bitnet(messages, add_generation_prompt)),
            Kind::Jinja(env) => {
                let template = env.get_template(TEMPLATE_NAME).map_err(template_error)?;
                template
                    .render(context! {
                        messages => template_messages(messages),
                        tools => tools,
                        add_generation_prompt => add_generation_prompt,
                        bos_token => &self.bos_token,
                        eos_token => &self.eos_token,
                    })
                    .map_err(template_error)
            }
        }
    }

    fn render_bitnet(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> String {
        let mut out = String::new();
        for m in messages {
            out.push_str(&capitalize(&m.role));
            out.push_str(": ");
            out.push_str(m.content.trim());
            out.push_str(&self.end_of_turn);
        }
        if add_generation_prompt {
            out.push_str("Assistant: ");
        }
        out
    }
}

/// The messages as templates read them: OpenAI sends a call's `arguments` as JSON text, but
/// Hugging Face templates (Llama 3.x's `tool_call.arguments | tojson`, Qwen's) expect the
/// object, as transformers passes it; text that is not JSON stays text.
fn template_messages(messages: &[ChatMessage]) -> Vec<serde_json::Value> {
    messages
        .iter()
        .map(|m| {
            let mut v = serde_json::to_value(m).unwrap_or_default();
            let calls = v.get_mut("tool_calls").and_then(|c| c.as_array_mut());
            for call in calls.into_iter().flatten() {
                if let Some(args) = call.pointer_mut("/function/arguments") {
                    let parsed = args
                        .as_str()
                        .and_then(|a| serde_json::from_str::<serde_json::Value>(a).ok());
                    if let Some(parsed) = parsed {
                        *args = parsed;
                    }
                }
            }
            v
        })
        .collect()
}

/// Jinja's `capitalize`: first character upper case, the rest lower case.
fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.as_str().to_lowercase().chars())
            .collect(),
        None => String::new(),
    }
}

fn jinja_environment(source: String) -> Result<Environment<'static>, TokenizerError> {
    let mut env = Environment::new();
    // As transformers' ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    env.add_template_owned(TEMPLATE_NAME, source)
        .map_err(template_error)?;
    Ok(env)
}

fn template_error(e: Error) -> TokenizerError {
    // `{:#}` includes the template line the error points at.
    TokenizerError::ChatTemplate {
        message: format!("{e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capitalize_is_jinjas() {
        assert_eq!(capitalize("user"), "User");
        assert_eq!(capitalize("ASSISTANT"), "Assistant");
        assert_eq!(capitalize(""), "");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new(
            Some("{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}ok"),
            "<s>",
            "</s>",
            "</s>",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let err = t.render(&[ChatMessage::system("x")], false).err();
        assert!(err.is_some_and(|e| e.to_string().contains("user first")));
        assert_eq!(
            t.render(&[ChatMessage::user("x")], false).ok().as_deref(),
            Some("ok")
        );
    }

    #[test]
    fn call_arguments_reach_templates_as_objects() {
        let t = ChatTemplate::new(
            Some("{% for m in messages %}{% for c in m.tool_calls or [] %}{{ c.function.arguments.city }}|{{ c.function.arguments | tojson }}{% endfor %}{% endfor %}"),
            "", "", "",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut m = ChatMessage::assistant("");
        m.tool_calls = Some(serde_json::json!([
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"city\": \"Verona\"}"}}
        ]));
        assert_eq!(
            t.render(&[m], false).ok().as_deref(),
            Some(r#"Verona|{"city":"Verona"}"#)
        );
    }

    #[test]
    fn llamas_tool_format_is_recognised() {
        let llama = include_str!("../../../../testdata/templates/llama-3.1-instruct.jinja");
        let t = ChatTemplate::new(Some(llama), "<|begin_of_text|>", "", "<|eot_id|>")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(t.supports_tools() && t.writes_llama_tool_calls());
        // Qwen 2.5's way: tools known, calls in <tool_call> tags.
        let qwen = "{% if tools %}<tools>{{ tools | tojson }}</tools> reply with <tool_call>{\"name\": …, \"arguments\": …}</tool_call>{% endif %}";
        let t = ChatTemplate::new(Some(qwen), "", "", "").unwrap_or_else(|e| panic!("{e}"));
        assert!(t.supports_tools() && !t.writes_llama_tool_calls());
        assert!(!ChatTemplate::bitnet("", "", "").writes_llama_tool_calls());
    }

    #[test]
    fn syntax_errors_are_reported_at_load() {
        let err = ChatTemplate::new(Some("{% for %}"), "", "", "").err();
        assert!(matches!(err, Some(TokenizerError::ChatTemplate { .. })));
    }
}

//! llama.cpp's built-in chat formats by name (`--chat-template llama3`), as Jinja templates.
//!
//! llama.cpp formats a conversation for a known name with hand-written C++
//! (`llm_chat_apply_template` in `src/llama-chat.cpp`, the path llama-server takes for a name
//! without `--jinja`). Each template here renders the same text for any conversation:
//! roles it does not know are treated as that code treats them (dropped by some formats, taken
//! as the assistant's by others), and "trim" is C's `isspace` set (ASCII white space), not
//! Unicode's. As there, the text starts without BOS: the tokenizer adds it
//! ([`super::Tokenizer::encode_chat`]). Formats that have no generation prompt in llama.cpp
//! (the Llama 2 and Mistral families, Orion, MiniCPM, Hunyuan) ignore `add_generation_prompt`.
//!
//! The templates use no white space outside their tags, so Hugging Face's `trim_blocks` and
//! `lstrip_blocks` change nothing; every character of output is written by an expression.

use std::borrow::Cow;

use super::TokenizerError;

/// The names llama.cpp gives its built-in formats, and our template for each.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "chatml",
        concat!(
            "{% for m in messages %}",
            "{{ '<|im_start|>' ~ m.role ~ '\\n' ~ m.content ~ '<|im_end|>\\n' }}",
            "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
        ),
    ),
    // Llama 2: the first `[INST] ` is written before any message; a reply closes the turn
    // and the next message opens one. Without `<<SYS>>` support a system message is its text
    // and a newline.
    (
        "llama2",
        concat!(
            "{% set ns = namespace(inside=true) %}{{ '[INST] ' }}{% for m in messages %}",
            "{% if not ns.inside %}{% set ns.inside = true %}{{ '[INST] ' }}{% endif %}",
            "{% if m.role == 'system' %}{{ m.content ~ '\\n' }}",
            "{% elif m.role == 'user' %}{{ m.content ~ ' [/INST]' }}",
            "{% else %}{{ m.content ~ '</s>' }}{% set ns.inside = false %}{% endif %}",
            "{% endfor %}",
        ),
    ),
    (
        "llama2-sys",
        concat!(
            "{% set ns = namespace(inside=true) %}{{ '[INST] ' }}{% for m in messages %}",
            "{% if not ns.inside %}{% set ns.inside = true %}{{ '[INST] ' }}{% endif %}",
            "{% if m.role == 'system' %}{{ '<<SYS>>\\n' ~ m.content ~ '\\n<</SYS>>\\n\\n' }}",
            "{% elif m.role == 'user' %}{{ m.content ~ ' [/INST]' }}",
            "{% else %}{{ m.content ~ '</s>' }}{% set ns.inside = false %}{% endif %}",
            "{% endfor %}",
        ),
    ),
    (
        "llama2-sys-bos",
        concat!(
            "{% set ns = namespace(inside=true) %}{{ '[INST] ' }}{% for m in messages %}",
            "{% if not ns.inside %}{% set ns.inside = true %}{{ '<s>[INST] ' }}{% endif %}",
            "{% if m.role == 'system' %}{{ '<<SYS>>\\n' ~ m.content ~ '\\n<</SYS>>\\n\\n' }}",
            "{% elif m.role == 'user' %}{{ m.content ~ ' [/INST]' }}",
            "{% else %}{{ m.content ~ '</s>' }}{% set ns.inside = false %}{% endif %}",
            "{% endfor %}",
        ),
    ),
    (
        "llama2-sys-strip",
        concat!(
            "{% set ws = ' \\t\\n\\r\\x0b\\x0c' %}",
            "{% set ns = namespace(inside=true) %}{{ '[INST] ' }}{% for m in messages %}",
            "{% set c = m.content|trim(ws) %}",
            "{% if not ns.inside %}{% set ns.inside = true %}{{ '[INST] ' }}{% endif %}",
            "{% if m.role == 'system' %}{{ '<<SYS>>\\n' ~ c ~ '\\n<</SYS>>\\n\\n' }}",
            "{% elif m.role == 'user' %}{{ c ~ ' [/INST]' }}",
            "{% else %}{{ c ~ '</s>' }}{% set ns.inside = false %}{% endif %}",
            "{% endfor %}",
        ),
    ),
    // Mistral v1/v3/v3-tekken: a turn opens before the first message after a reply.
    (
        "mistral-v1",
        concat!(
            "{% set ns = namespace(inside=false) %}{% for m in messages %}",
            "{% if not ns.inside %}{{ ' [INST] ' }}{% set ns.inside = true %}{% endif %}",
            "{% if m.role == 'system' %}{{ m.content ~ '\\n\\n' }}",
            "{% elif m.role == 'user' %}{{ m.content ~ ' [/INST]' }}",
            "{% else %}{{ ' ' ~ m.content ~ '</s>' }}{% set ns.inside = false %}{% endif %}",
            "{% endfor %}",
        ),
    ),
    (
        "mistral-v3",
        concat!(
            "{% set ws = ' \\t\\n\\r\\x0b\\x0c' %}",
            "{% set ns = namespace(inside=false) %}{% for m in messages %}",
            "{% if not ns.inside %}{{ '[INST] ' }}{% set ns.inside = true %}{% endif %}",
            "{% if m.role == 'system' %}{{ m.content ~ '\\n\\n' }}",
            "{% elif m.role == 'user' %}{{ m.content ~ '[/INST]' }}",
            "{% else %}{{ ' ' ~ m.content|trim(ws) ~ '</s>' }}{% set ns.inside = false %}",
            "{% endif %}{% endfor %}",
        ),
    ),
    (
        "mistral-v3-tekken",
        concat!(
            "{% set ns = namespace(inside=false) %}{% for m in messages %}",
            "{% if not ns.inside %}{{ '[INST]' }}{% set ns.inside = true %}{% endif %}",
            "{% if m.role == 'system' %}{{ m.content ~ '\\n\\n' }}",
            "{% elif m.role == 'user' %}{{ m.content ~ '[/INST]' }}",
            "{% else %}{{ m.content ~ '</s>' }}{% set ns.inside = false %}{% endif %}",
            "{% endfor %}",
        ),
    ),
    (
        "mistral-v7",
        concat!(
            "{% for m in messages %}",
            "{% if m.role == 'system' %}{{ '[SYSTEM_PROMPT] ' ~ m.content ~ '[/SYSTEM_PROMPT]' }}",
            "{% elif m.role == 'user' %}{{ '[INST] ' ~ m.content ~ '[/INST]' }}",
            "{% else %}{{ ' ' ~ m.content ~ '</s>' }}{% endif %}{% endfor %}",
        ),
    ),
    (
        "mistral-v7-tekken",
        concat!(
            "{% for m in messages %}",
            "{% if m.role == 'system' %}{{ '[SYSTEM_PROMPT]' ~ m.content ~ '[/SYSTEM_PROMPT]' }}",
            "{% elif m.role == 'user' %}{{ '[INST]' ~ m.content ~ '[/INST]' }}",
            "{% else %}{{ m.content ~ '</s>' }}{% endif %}{% endfor %}",
        ),
    ),
    (
        "phi3",
        concat!(
            "{% for m in messages %}",
            "{{ '<|' ~ m.role ~ '|>\\n' ~ m.content ~ '<|end|>\\n' }}",
            "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
        ),
    ),
    (
        "phi4",
        concat!(
            "{% for m in messages %}",
            "{{ '<|im_start|>' ~ m.role ~ '<|im_sep|>' ~ m.content ~ '<|im_end|>' }}",
            "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}",
        ),
    ),
    (
        "falcon3",
        concat!(
            "{% for m in messages %}",
            "{{ '<|' ~ m.role ~ '|>\\n' ~ m.content ~ '\\n' }}",
            "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
        ),
    ),
    (
        "zephyr",
        concat!(
            "{% for m in messages %}",
            "{{ '<|' ~ m.role ~ '|>\\n' ~ m.content ~ '<|endoftext|>\\n' }}",
            "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
        ),
    ),
    (
        "monarch",
        concat!(
            "{% for m in messages %}",
            "{% if not loop.first %}{{ '<s>' }}{% endif %}{{ m.role ~ '\\n' ~ m.content ~ '</s>\\n' }}",
            "{% endfor %}{% if add_generation_prompt %}{{ '<s>assistant\\n' }}{% endif %}",
        ),
    ),
    // Gemma has no system role: system texts (trimmed, run together) go before the next
    // user turn's text; the assistant is `model`.
    (
        "gemma",
        concat!(
            "{% set ws = ' \\t\\n\\r\\x0b\\x0c' %}{% set ns = namespace(system='') %}",
            "{% for m in messages %}",
            "{% if m.role == 'system' %}{% set ns.system = ns.system ~ m.content|trim(ws) %}",
            "{% else %}{% set role = 'model' if m.role == 'assistant' else m.role %}",
            "{{ '<start_of_turn>' ~ role ~ '\\n' }}",
            "{% if ns.system and role != 'model' %}{{ ns.system ~ '\\n\\n' }}",
            "{% set ns.system = '' %}{% endif %}",
            "{{ m.content|trim(ws) ~ '<end_of_turn>\\n' }}{% endif %}",
            "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}",
        ),
    ),
    (
        "orion",
        concat!(
            "{% set ns = namespace(system='') %}{% for m in messages %}",
            "{% if m.role == 'system' %}{% set ns.system = ns.system ~ m.content %}",
            "{% elif m.role == 'user' %}{{ 'Human: ' }}",
            "{% if ns.system %}{{ ns.system ~ '\\n\\n' }}{% set ns.system = '' %}{% endif %}",
            "{{ m.content ~ '\\n\\nAssistant: </s>' }}",
            "{% else %}{{ m.content ~ '</s>' }}{% endif %}{% endfor %}",
        ),
    ),
    (
        "openchat",
        concat!(
            "{% for m in messages %}",
            "{% if m.role == 'system' %}{{ m.content ~ '<|end_of_turn|>' }}",
            "{% else %}{{ 'GPT4 Correct ' ~ m.role[:1]|upper ~ m.role[1:] ~ ': ' ~ m.content ",
            "~ '<|end_of_turn|>' }}{% endif %}",
            "{% endfor %}{% if add_generation_prompt %}{{ 'GPT4 Correct Assistant:' }}{% endif %}",
        ),
    ),
    (
        "vicuna",
        concat!(
            "{% for m in messages %}",
            "{% if m.role == 'system' %}{{ m.content ~ '\\n\\n' }}",
            "{% elif m.role == 'user' %}{{ 'USER: ' ~ m.content ~ '\\n' }}",
            "{% elif m.role == 'assistant' %}{{ 'ASSISTANT: ' ~ m.content ~ '</s>\\n' }}",
            "{% endif %}",
            "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}",
        ),
    ),
    (
        "vicuna-orca",
        concat!(
            "{% for m in messages %}",
            "{% if m.role == 'system' %}{{ 'SYSTEM: ' ~ m.content ~ '\\n' }}",
            "{% elif m.role == 'user' %}{{ 'USER: ' ~ m.content ~ '\\n' }}",
            "{% elif m.role == 'assistant' %}{{ 'ASSISTANT: ' ~ m.content ~ '</s>\\n' }}",
            "{% endif %}",
            "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}",
        ),
    ),
    (
        "deepseek",
        concat!(
            "{% for m in messages %}",
            "{% if m.role == 'system' %}{{ m.content }}",
            "{% elif m.role == 'user' %}{{ '### Instruction:\\n' ~ m.content ~ '\\n' }}",
            "{% elif m.role == 'assistant' %}",
            "{{ '### Response:\\n' ~ m.content ~ '\\n<|EOT|>\\n' }}{% endif %}",
            "{% endfor %}{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}",
        ),
    ),
    (
        "deepseek2",
        concat!(
            "{% for m in messages %}",
            "{% if m.role == 'system' %}{{ m.content ~ '\\n\\n' }}",
            "{% elif m.role == 'user' %}{{ 'User: ' ~ m.content ~ '\\n\\n' }}",
            "{% elif m.role == 'assistant' %}",
            "{{ 'Assistant: ' ~ m.content ~ '<｜end▁of▁sentence｜>' }}{% endif %}",
            "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}",
        ),
    ),
    (
        "deepseek3",
        concat!(
            "{% for m in messages %}",
            "{% if m.role == 'system' %}{{ m.content ~ '\\n\\n' }}",
            "{% elif m.role == 'user' %}{{ '<｜User｜>' ~ m.content }}",
            "{% elif m.role == 'assistant' %}",
            "{{ '<｜Assistant｜>' ~ m.content ~ '<｜end▁of▁sentence｜>' }}{% endif %}",
            "{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}",
        ),
    ),
    (
        "command-r",
        concat!(
            "{% set ws = ' \\t\\n\\r\\x0b\\x0c' %}",
            "{% for m in messages %}",
            "{% if m.role == 'system' %}{{ '<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>' ~ ",
            "m.content|trim(ws) ~ '<|END_OF_TURN_TOKEN|>' }}",
            "{% elif m.role == 'user' %}{{ '<|START_OF_TURN_TOKEN|><|USER_TOKEN|>' ~ ",
            "m.content|trim(ws) ~ '<|END_OF_TURN_TOKEN|>' }}",
            "{% elif m.role == 'assistant' %}{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' ~ ",
            "m.content|trim(ws) ~ '<|END_OF_TURN_TOKEN|>' }}{% endif %}",
            "{% endfor %}{% if add_generation_prompt %}{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}{% endif %}",
        ),
    ),
    (
        "llama3",
        concat!(
            "{% set ws = ' \\t\\n\\r\\x0b\\x0c' %}",
            "{% for m in messages %}",
            "{{ '<|start_header_id|>' ~ m.role ~ '<|end_header_id|>\\n\\n' ~ ",
            "m.content|trim(ws) ~ '<|eot_id|>' }}",
            "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
        ),
    ),
    (
        "chatglm3",
        concat!(
            "{{ '[gMASK]sop' }}",
            "{% for m in messages %}",
            "{{ '<|' ~ m.role ~ '|>\\n ' ~ m.content }}",
            "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}",
        ),
    ),
    (
        "chatglm4",
        concat!(
            "{{ '[gMASK]<sop>' }}",
            "{% for m in messages %}",
            "{{ '<|' ~ m.role ~ '|>\\n' ~ m.content }}",
            "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
        ),
    ),
    (
        "glmedge",
        concat!(
            "{% for m in messages %}",
            "{{ '<|' ~ m.role ~ '|>\\n' ~ m.content }}",
            "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}",
        ),
    ),
    (
        "minicpm",
        concat!(
            "{% set ws = ' \\t\\n\\r\\x0b\\x0c' %}{% for m in messages %}",
            "{% if m.role == 'user' %}{{ '<用户>' ~ m.content|trim(ws) ~ '<AI>' }}",
            "{% else %}{{ m.content|trim(ws) }}{% endif %}{% endfor %}",
        ),
    ),
    (
        "exaone3",
        concat!(
            "{% set ws = ' \\t\\n\\r\\x0b\\x0c' %}",
            "{% for m in messages %}",
            "{% if m.role == 'system' %}",
            "{{ '[|system|]' ~ m.content|trim(ws) ~ '[|endofturn|]\\n' }}",
            "{% elif m.role == 'user' %}{{ '[|user|]' ~ m.content|trim(ws) ~ '\\n' }}",
            "{% elif m.role == 'assistant' %}",
            "{{ '[|assistant|]' ~ m.content|trim(ws) ~ '[|endofturn|]\\n' }}{% endif %}",
            "{% endfor %}{% if add_generation_prompt %}{{ '[|assistant|]' }}{% endif %}",
        ),
    ),
    (
        "exaone4",
        concat!(
            "{% set ws = ' \\t\\n\\r\\x0b\\x0c' %}",
            "{% for m in messages %}",
            "{% if m.role == 'system' %}",
            "{{ '[|system|]' ~ m.content|trim(ws) ~ '[|endofturn|]\\n' }}",
            "{% elif m.role == 'user' %}{{ '[|user|]' ~ m.content|trim(ws) ~ '\\n' }}",
            "{% elif m.role == 'assistant' %}",
            "{{ '[|assistant|]' ~ m.content|trim(ws) ~ '[|endofturn|]\\n' }}",
            "{% elif m.role == 'tool' %}",
            "{{ '[|tool|]' ~ m.content|trim(ws) ~ '[|endofturn|]\\n' }}{% endif %}",
            "{% endfor %}{% if add_generation_prompt %}{{ '[|assistant|]' }}{% endif %}",
        ),
    ),
    // RWKV World opens the reply after a last user message whatever the caller asks.
    (
        "rwkv-world",
        concat!(
            "{% set ws = ' \\t\\n\\r\\x0b\\x0c' %}{% for m in messages %}",
            "{% if m.role == 'system' %}{{ 'System: ' ~ m.content|trim(ws) ~ '\\n\\n' }}",
            "{% elif m.role == 'user' %}{{ 'User: ' ~ m.content|trim(ws) ~ '\\n\\n' }}",
            "{% if loop.last %}{{ 'Assistant:' }}{% endif %}",
            "{% elif m.role == 'assistant' %}",
            "{{ 'Assistant: ' ~ m.content|trim(ws) ~ '\\n\\n' }}{% endif %}{% endfor %}",
        ),
    ),
    (
        "granite",
        concat!(
            "{% for m in messages %}",
            "{{ '<|start_of_role|>' ~ m.role ~ '<|end_of_role|>' }}",
            "{% if m.role == 'assistant_tool_call' %}{{ '<|tool_call|>' }}{% endif %}",
            "{{ m.content ~ '<|end_of_text|>\\n' }}",
            "{% endfor %}{% if add_generation_prompt %}{{ '<|start_of_role|>assistant<|end_of_role|>\\n' }}{% endif %}",
        ),
    ),
    (
        "gigachat",
        concat!(
            "{% set has_system = messages|length > 0 and messages[0].role == 'system' %}",
            "{{ '<s>' }}{% if has_system %}{{ messages[0].content ~ '<|message_sep|>' }}",
            "{% endif %}",
            "{% for m in messages %}",
            "{% if not (loop.first and has_system) %}",
            "{% if m.role == 'user' %}{{ 'user<|role_sep|>' ~ m.content ~ ",
            "'<|message_sep|>available functions<|role_sep|>[]<|message_sep|>' }}",
            "{% elif m.role == 'assistant' %}",
            "{{ 'assistant<|role_sep|>' ~ m.content ~ '<|message_sep|>' }}",
            "{% endif %}{% endif %}",
            "{% endfor %}{% if add_generation_prompt %}{{ 'assistant<|role_sep|>' }}{% endif %}",
        ),
    ),
    (
        "megrez",
        concat!(
            "{% for m in messages %}",
            "{{ '<|role_start|>' ~ m.role ~ '<|role_end|>' ~ m.content ~ '<|turn_end|>' }}",
            "{% endfor %}{% if add_generation_prompt %}{{ '<|role_start|>assistant<|role_end|>' }}{% endif %}",
        ),
    ),
    (
        "yandex",
        concat!(
            "{{ '<s>' }}",
            "{% for m in messages %}",
            "{% if m.role == 'user' %}{{ ' Пользователь: ' ~ m.content ~ '\\n\\n' }}",
            "{% elif m.role == 'assistant' %}",
            "{{ ' Ассистент: ' ~ m.content ~ '\\n\\n' }}{% endif %}",
            "{% endfor %}{% if add_generation_prompt %}{{ ' Ассистент:[SEP]' }}{% endif %}",
        ),
    ),
    (
        "bailing",
        concat!(
            "{% for m in messages %}",
            "{{ '<role>' ~ ('HUMAN' if m.role == 'user' else m.role|upper) ~ '</role>' ~ ",
            "m.content }}",
            "{% endfor %}{% if add_generation_prompt %}{{ '<role>ASSISTANT</role>' }}{% endif %}",
        ),
    ),
    (
        "llama4",
        concat!(
            "{% set ws = ' \\t\\n\\r\\x0b\\x0c' %}",
            "{% for m in messages %}",
            "{{ '<|header_start|>' ~ m.role ~ '<|header_end|>\\n\\n' ~ ",
            "m.content|trim(ws) ~ '<|eot|>' }}",
            "{% endfor %}{% if add_generation_prompt %}{{ '<|header_start|>assistant<|header_end|>\\n\\n' }}{% endif %}",
        ),
    ),
    (
        "smolvlm",
        concat!(
            "{{ '<|im_start|>' }}",
            "{% for m in messages %}",
            "{% if m.role == 'system' %}{{ m.content ~ '\\n\\n' }}",
            "{% elif m.role == 'user' %}",
            "{{ 'User: ' ~ m.content ~ '<end_of_utterance>\\n' }}",
            "{% else %}{{ 'Assistant: ' ~ m.content ~ '<end_of_utterance>\\n' }}",
            "{% endif %}",
            "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}",
        ),
    ),
    (
        "hunyuan-moe",
        concat!(
            "{% for m in messages %}",
            "{% if m.role == 'system' %}{{ '<|startoftext|>' ~ m.content ~ '<|extra_4|>' }}",
            "{% elif m.role == 'assistant' %}{{ m.content ~ '<|eos|>' }}",
            "{% else %}{{ '<|startoftext|>' ~ m.content ~ '<|extra_0|>' }}{% endif %}",
            "{% endfor %}",
        ),
    ),
];

/// The built-in chat format names, as llama.cpp spells them.
pub fn chat_template_names() -> impl Iterator<Item = &'static str> {
    TEMPLATES.iter().map(|&(name, _)| name)
}

/// The Jinja template for one of llama.cpp's built-in format names (`llama3`, `chatml`, …).
pub fn named_chat_template(name: &str) -> Option<&'static str> {
    TEMPLATES
        .iter()
        .find(|&&(n, _)| n == name)
        .map(|&(_, template)| template)
}

/// What a `--chat-template` value means, as llama.cpp reads it: a built-in format name gives
/// its template, text with `{%` or `{{` is a Jinja template itself; anything else is an error
/// ([`TokenizerError::UnknownChatTemplate`], naming the built-in names).
pub fn chat_template_from_arg(value: &str) -> Result<Cow<'_, str>, TokenizerError> {
    if let Some(template) = named_chat_template(value.trim()) {
        return Ok(Cow::Borrowed(template));
    }
    if value.contains("{%") || value.contains("{{") {
        return Ok(Cow::Borrowed(value));
    }
    Err(TokenizerError::UnknownChatTemplate {
        name: value.to_string(),
        known: chat_template_names().collect::<Vec<_>>().join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::{ChatMessage, ChatTemplate};

    /// C's `isspace` set, as llama.cpp's `trim` uses it.
    fn trim(s: &str) -> &str {
        s.trim_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c'])
    }

    /// llama.cpp's `llm_chat_apply_template` (src/llama-chat.cpp) written out again in Rust,
    /// branch by branch: what each template must render.
    fn reference(name: &str, chat: &[(&str, &str)], add_ass: bool) -> String {
        let mut s = String::new();
        let last = chat.len().saturating_sub(1);
        let open = |s: &mut String, g: &str| {
            if add_ass {
                s.push_str(g);
            }
        };
        match name {
            "chatml" => {
                for (r, c) in chat {
                    s += &format!("<|im_start|>{r}\n{c}<|im_end|>\n");
                }
                open(&mut s, "<|im_start|>assistant\n");
            }
            "llama2" | "llama2-sys" | "llama2-sys-bos" | "llama2-sys-strip" => {
                let sys = name != "llama2";
                let bos = name == "llama2-sys-bos";
                let strip = name == "llama2-sys-strip";
                let mut inside = true;
                s += "[INST] ";
                for (r, c) in chat {
                    let c = if strip { trim(c) } else { *c };
                    if !inside {
                        inside = true;
                        s += if bos { "<s>[INST] " } else { "[INST] " };
                    }
                    match *r {
                        "system" if sys => s += &format!("<<SYS>>\n{c}\n<</SYS>>\n\n"),
                        "system" => s += &format!("{c}\n"),
                        "user" => s += &format!("{c} [/INST]"),
                        _ => {
                            s += &format!("{c}</s>");
                            inside = false;
                        }
                    }
                }
            }
            "mistral-v1" | "mistral-v3" | "mistral-v3-tekken" => {
                let lead = if name == "mistral-v1" { " " } else { "" };
                let trail = if name == "mistral-v3-tekken" { "" } else { " " };
                let mut inside = false;
                for (r, c) in chat {
                    if !inside {
                        s += &format!("{lead}[INST]{trail}");
                        inside = true;
                    }
                    match *r {
                        "system" => s += &format!("{c}\n\n"),
                        "user" => s += &format!("{c}{lead}[/INST]"),
                        _ => {
                            let c = if name == "mistral-v3" { trim(c) } else { *c };
                            s += &format!("{trail}{c}</s>");
                            inside = false;
                        }
                    }
                }
            }
            "mistral-v7" | "mistral-v7-tekken" => {
                let sp = if name == "mistral-v7" { " " } else { "" };
                for (r, c) in chat {
                    match *r {
                        "system" => s += &format!("[SYSTEM_PROMPT]{sp}{c}[/SYSTEM_PROMPT]"),
                        "user" => s += &format!("[INST]{sp}{c}[/INST]"),
                        _ => s += &format!("{sp}{c}</s>"),
                    }
                }
            }
            "phi3" => {
                for (r, c) in chat {
                    s += &format!("<|{r}|>\n{c}<|end|>\n");
                }
                open(&mut s, "<|assistant|>\n");
            }
            "phi4" => {
                for (r, c) in chat {
                    s += &format!("<|im_start|>{r}<|im_sep|>{c}<|im_end|>");
                }
                open(&mut s, "<|im_start|>assistant<|im_sep|>");
            }
            "falcon3" => {
                for (r, c) in chat {
                    s += &format!("<|{r}|>\n{c}\n");
                }
                open(&mut s, "<|assistant|>\n");
            }
            "zephyr" => {
                for (r, c) in chat {
                    s += &format!("<|{r}|>\n{c}<|endoftext|>\n");
                }
                open(&mut s, "<|assistant|>\n");
            }
            "monarch" => {
                for (i, (r, c)) in chat.iter().enumerate() {
                    let bos = if i == 0 { "" } else { "<s>" };
                    s += &format!("{bos}{r}\n{c}</s>\n");
                }
                open(&mut s, "<s>assistant\n");
            }
            "gemma" => {
                let mut system = String::new();
                for (r, c) in chat {
                    if *r == "system" {
                        system += trim(c);
                        continue;
                    }
                    let role = if *r == "assistant" { "model" } else { *r };
                    s += &format!("<start_of_turn>{role}\n");
                    if !system.is_empty() && role != "model" {
                        s += &format!("{system}\n\n");
                        system.clear();
                    }
                    s += &format!("{}<end_of_turn>\n", trim(c));
                }
                open(&mut s, "<start_of_turn>model\n");
            }
            "orion" => {
                let mut system = String::new();
                for (r, c) in chat {
                    match *r {
                        "system" => system += *c,
                        "user" => {
                            s += "Human: ";
                            if !system.is_empty() {
                                s += &format!("{system}\n\n");
                                system.clear();
                            }
                            s += &format!("{c}\n\nAssistant: </s>");
                        }
                        _ => s += &format!("{c}</s>"),
                    }
                }
            }
            "openchat" => {
                for (r, c) in chat {
                    if *r == "system" {
                        s += &format!("{c}<|end_of_turn|>");
                    } else {
                        let role = format!("{}{}", r[..1].to_ascii_uppercase(), &r[1..]);
                        s += &format!("GPT4 Correct {role}: {c}<|end_of_turn|>");
                    }
                }
                open(&mut s, "GPT4 Correct Assistant:");
            }
            "vicuna" | "vicuna-orca" => {
                for (r, c) in chat {
                    match *r {
                        "system" if name == "vicuna-orca" => s += &format!("SYSTEM: {c}\n"),
                        "system" => s += &format!("{c}\n\n"),
                        "user" => s += &format!("USER: {c}\n"),
                        "assistant" => s += &format!("ASSISTANT: {c}</s>\n"),
                        _ => {}
                    }
                }
                open(&mut s, "ASSISTANT:");
            }
            "deepseek" => {
                for (r, c) in chat {
                    match *r {
                        "system" => s += *c,
                        "user" => s += &format!("### Instruction:\n{c}\n"),
                        "assistant" => s += &format!("### Response:\n{c}\n<|EOT|>\n"),
                        _ => {}
                    }
                }
                open(&mut s, "### Response:\n");
            }
            "deepseek2" => {
                for (r, c) in chat {
                    match *r {
                        "system" => s += &format!("{c}\n\n"),
                        "user" => s += &format!("User: {c}\n\n"),
                        "assistant" => s += &format!("Assistant: {c}<｜end▁of▁sentence｜>"),
                        _ => {}
                    }
                }
                open(&mut s, "Assistant:");
            }
            "deepseek3" => {
                for (r, c) in chat {
                    match *r {
                        "system" => s += &format!("{c}\n\n"),
                        "user" => s += &format!("<｜User｜>{c}"),
                        "assistant" => s += &format!("<｜Assistant｜>{c}<｜end▁of▁sentence｜>"),
                        _ => {}
                    }
                }
                open(&mut s, "<｜Assistant｜>");
            }
            "command-r" => {
                for (r, c) in chat {
                    let tag = match *r {
                        "system" => "SYSTEM",
                        "user" => "USER",
                        "assistant" => "CHATBOT",
                        _ => continue,
                    };
                    s += &format!(
                        "<|START_OF_TURN_TOKEN|><|{tag}_TOKEN|>{}<|END_OF_TURN_TOKEN|>",
                        trim(c)
                    );
                }
                open(&mut s, "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>");
            }
            "llama3" => {
                for (r, c) in chat {
                    s += &format!(
                        "<|start_header_id|>{r}<|end_header_id|>\n\n{}<|eot_id|>",
                        trim(c)
                    );
                }
                open(&mut s, "<|start_header_id|>assistant<|end_header_id|>\n\n");
            }
            "chatglm3" => {
                s += "[gMASK]sop";
                for (r, c) in chat {
                    s += &format!("<|{r}|>\n {c}");
                }
                open(&mut s, "<|assistant|>");
            }
            "chatglm4" => {
                s += "[gMASK]<sop>";
                for (r, c) in chat {
                    s += &format!("<|{r}|>\n{c}");
                }
                open(&mut s, "<|assistant|>\n");
            }
            "glmedge" => {
                for (r, c) in chat {
                    s += &format!("<|{r}|>\n{c}");
                }
                open(&mut s, "<|assistant|>");
            }
            "minicpm" => {
                for (r, c) in chat {
                    if *r == "user" {
                        s += &format!("<用户>{}<AI>", trim(c));
                    } else {
                        s += trim(c);
                    }
                }
            }
            "exaone3" | "exaone4" => {
                for (r, c) in chat {
                    let c = trim(c);
                    match *r {
                        "system" => s += &format!("[|system|]{c}[|endofturn|]\n"),
                        "user" => s += &format!("[|user|]{c}\n"),
                        "assistant" => s += &format!("[|assistant|]{c}[|endofturn|]\n"),
                        "tool" if name == "exaone4" => s += &format!("[|tool|]{c}[|endofturn|]\n"),
                        _ => {}
                    }
                }
                open(&mut s, "[|assistant|]");
            }
            "rwkv-world" => {
                for (i, (r, c)) in chat.iter().enumerate() {
                    let c = trim(c);
                    match *r {
                        "system" => s += &format!("System: {c}\n\n"),
                        "user" => {
                            s += &format!("User: {c}\n\n");
                            if i == last {
                                s += "Assistant:";
                            }
                        }
                        "assistant" => s += &format!("Assistant: {c}\n\n"),
                        _ => {}
                    }
                }
            }
            "granite" => {
                for (r, c) in chat {
                    s += &format!("<|start_of_role|>{r}<|end_of_role|>");
                    if *r == "assistant_tool_call" {
                        s += "<|tool_call|>";
                    }
                    s += &format!("{c}<|end_of_text|>\n");
                }
                open(&mut s, "<|start_of_role|>assistant<|end_of_role|>\n");
            }
            "gigachat" => {
                let has_system = chat.first().is_some_and(|(r, _)| *r == "system");
                s += "<s>";
                if let (true, Some((_, c))) = (has_system, chat.first()) {
                    s += &format!("{c}<|message_sep|>");
                }
                for (r, c) in chat.iter().skip(usize::from(has_system)) {
                    match *r {
                        "user" => {
                            s += &format!("user<|role_sep|>{c}<|message_sep|>");
                            s += "available functions<|role_sep|>[]<|message_sep|>";
                        }
                        "assistant" => s += &format!("assistant<|role_sep|>{c}<|message_sep|>"),
                        _ => {}
                    }
                }
                open(&mut s, "assistant<|role_sep|>");
            }
            "megrez" => {
                for (r, c) in chat {
                    s += &format!("<|role_start|>{r}<|role_end|>{c}<|turn_end|>");
                }
                open(&mut s, "<|role_start|>assistant<|role_end|>");
            }
            "yandex" => {
                s += "<s>";
                for (r, c) in chat {
                    match *r {
                        "user" => s += &format!(" Пользователь: {c}\n\n"),
                        "assistant" => s += &format!(" Ассистент: {c}\n\n"),
                        _ => {}
                    }
                }
                open(&mut s, " Ассистент:[SEP]");
            }
            "bailing" => {
                for (r, c) in chat {
                    let role = if *r == "user" {
                        "HUMAN".to_string()
                    } else {
                        r.to_ascii_uppercase()
                    };
                    s += &format!("<role>{role}</role>{c}");
                }
                open(&mut s, "<role>ASSISTANT</role>");
            }
            "llama4" => {
                for (r, c) in chat {
                    s += &format!("<|header_start|>{r}<|header_end|>\n\n{}<|eot|>", trim(c));
                }
                open(&mut s, "<|header_start|>assistant<|header_end|>\n\n");
            }
            "smolvlm" => {
                s += "<|im_start|>";
                for (r, c) in chat {
                    match *r {
                        "system" => s += &format!("{c}\n\n"),
                        "user" => s += &format!("User: {c}<end_of_utterance>\n"),
                        _ => s += &format!("Assistant: {c}<end_of_utterance>\n"),
                    }
                }
                open(&mut s, "Assistant:");
            }
            "hunyuan-moe" => {
                for (r, c) in chat {
                    match *r {
                        "system" => s += &format!("<|startoftext|>{c}<|extra_4|>"),
                        "assistant" => s += &format!("{c}<|eos|>"),
                        _ => s += &format!("<|startoftext|>{c}<|extra_0|>"),
                    }
                }
            }
            other => panic!("no reference for {other}"),
        }
        s
    }

    fn render(name: &str, chat: &[(&str, &str)], add_generation_prompt: bool) -> String {
        let source = named_chat_template(name).unwrap_or_else(|| panic!("{name}"));
        let template = ChatTemplate::new(Some(source), "<s>", "</s>", "</s>")
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let messages: Vec<ChatMessage> =
            chat.iter().map(|&(r, c)| ChatMessage::new(r, c)).collect();
        template
            .render(&messages, add_generation_prompt)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[test]
    fn every_builtin_renders_as_llama_cpp_formats() {
        let conversations: &[&[(&str, &str)]] = &[
            &[
                ("system", "You are a helpful assistant"),
                ("user", "Hello"),
                ("assistant", "  Hi there \n"),
                ("user", "Who are you"),
            ],
            &[("user", " hi\n")],
            // Two system messages (Gemma runs them together), a reply, a second question.
            &[
                ("system", "Be brief."),
                ("system", " Be kind."),
                ("user", "Q1"),
                ("assistant", "A1"),
                ("user", "Q2"),
            ],
            // A leading reply, a tool answer (a role most formats do not know).
            &[
                ("assistant", "I begin."),
                ("user", "call it"),
                ("tool", "\t42 "),
                ("assistant", "It is 42."),
            ],
            // Unicode white space is content to llama.cpp's trim.
            &[("user", "\u{a0}hi\u{3000}")],
            &[],
        ];
        let mut names = 0;
        for name in chat_template_names() {
            names += 1;
            for chat in conversations {
                for add in [true, false] {
                    assert_eq!(
                        render(name, chat, add),
                        reference(name, chat, add),
                        "{name}, add_generation_prompt {add}, {chat:?}"
                    );
                }
            }
        }
        assert_eq!(names, TEMPLATES.len());
    }

    #[test]
    fn a_few_renderings_spelled_out() {
        let hi = [("user", "hi")];
        assert_eq!(
            render("llama3", &hi, true),
            "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(
            render("chatml", &[("system", "S"), ("user", "hi")], true),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        assert_eq!(
            render("gemma", &[("system", " S "), ("user", "hi ")], true),
            "<start_of_turn>user\nS\n\nhi<end_of_turn>\n<start_of_turn>model\n"
        );
        assert_eq!(
            render(
                "mistral-v7",
                &[("system", "S"), ("user", "hi"), ("assistant", "yo")],
                true
            ),
            "[SYSTEM_PROMPT] S[/SYSTEM_PROMPT][INST] hi[/INST] yo</s>"
        );
        assert_eq!(
            render("llama2-sys", &[("system", "S"), ("user", "hi")], true),
            "[INST] <<SYS>>\nS\n<</SYS>>\n\nhi [/INST]"
        );
        assert_eq!(render("vicuna", &hi, true), "USER: hi\nASSISTANT:");
        assert_eq!(render("phi3", &hi, false), "<|user|>\nhi<|end|>\n");
    }

    #[test]
    fn names_and_jinja_and_anything_else() {
        assert_eq!(
            chat_template_from_arg("llama3").ok(),
            named_chat_template("llama3").map(Cow::Borrowed)
        );
        let jinja = "{{ messages[0].content }}";
        assert_eq!(chat_template_from_arg(jinja).ok().as_deref(), Some(jinja));
        let err = chat_template_from_arg("llama-3")
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(
            err.contains("`llama-3`") && err.contains("chatml, llama2"),
            "{err}"
        );
    }
}

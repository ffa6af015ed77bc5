//! The body of `POST /v1/chat/completions` as OpenAI's API defines it, turned into the gateway's
//! chat: messages with text, images, tool calls and tool results; tools and the tool choice; the
//! answer's format. Fields it knows but cannot honour are refused by name; fields it does not
//! know are ignored, as OpenAI's API does for newer clients.

use std::collections::HashMap;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

use crate::chat::{self, ChatInput, Options};
use crate::error::{GatewayError, RequestError};
use crate::providers::{
    Image, ImageSource, Part, ResponseFormat, Speaker, Tool, ToolCall, ToolChoice, ToolResult,
    Tooling, Turn, IMAGE_TYPES,
};

/// The most stop sequences a request may give, as OpenAI allows.
const MAX_STOP: usize = 4;
/// The most tools a request may offer, as OpenAI allows.
const MAX_TOOLS: usize = 128;
/// Between a tool call's id and the thought signature carried in it (see [`wire_call_id`]).
const SIGNATURE_MARK: &str = "__ts__";

#[derive(Debug, Deserialize)]
pub(super) struct CompletionBody {
    model: Option<String>,
    messages: Vec<WireMessage>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    stop: Option<Stop>,
    seed: Option<i64>,
    user: Option<String>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<i64>,
    logprobs: Option<bool>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    tools: Option<Vec<WireTool>>,
    tool_choice: Option<WireToolChoice>,
    parallel_tool_calls: Option<bool>,
    response_format: Option<WireFormat>,
    /// Known to OpenAI's API and not honoured here: refused when given a value.
    #[serde(flatten)]
    unsupported: Unsupported,
}

#[derive(Debug, Default, Deserialize)]
struct Unsupported {
    top_logprobs: Option<Value>,
    logit_bias: Option<Value>,
    functions: Option<Value>,
    function_call: Option<Value>,
    audio: Option<Value>,
    modalities: Option<Value>,
    prediction: Option<Value>,
    reasoning_effort: Option<Value>,
    web_search_options: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    role: String,
    content: Option<Content>,
    tool_calls: Option<Vec<WireCall>>,
    tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
    image_url: Option<ImageUrl>,
}

#[derive(Debug, Deserialize)]
struct ImageUrl {
    url: String,
    detail: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireCall {
    id: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    function: WireFunctionCall,
}

#[derive(Debug, Deserialize)]
struct WireFunctionCall {
    name: String,
    arguments: String,
}

#[derive(Debug, Deserialize)]
struct WireTool {
    #[serde(rename = "type")]
    kind: String,
    function: Option<WireFunction>,
}

#[derive(Debug, Deserialize)]
struct WireFunction {
    name: String,
    description: Option<String>,
    parameters: Option<Value>,
    strict: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum WireToolChoice {
    Mode(String),
    Named { function: NamedFunction },
}

#[derive(Debug, Deserialize)]
struct NamedFunction {
    name: String,
}

#[derive(Debug, Deserialize)]
struct WireFormat {
    #[serde(rename = "type")]
    kind: String,
    json_schema: Option<WireJsonSchema>,
}

#[derive(Debug, Deserialize)]
struct WireJsonSchema {
    name: String,
    description: Option<String>,
    schema: Option<Value>,
    strict: Option<bool>,
}

pub(super) fn invalid(text: String) -> GatewayError {
    RequestError::InvalidField(text).into()
}

impl Unsupported {
    /// The first field given a value this gateway cannot honour.
    fn first(&self) -> Option<&'static str> {
        let given = |value: &Option<Value>| match value {
            None | Some(Value::Null) => false,
            Some(Value::Object(map)) => !map.is_empty(),
            Some(Value::Array(list)) => !list.is_empty(),
            Some(_) => true,
        };
        let only_text =
            matches!(&self.modalities, Some(Value::Array(m)) if m == &[Value::from("text")]);
        [
            ("top_logprobs", given(&self.top_logprobs)),
            ("logit_bias", given(&self.logit_bias)),
            ("functions", given(&self.functions)),
            ("function_call", given(&self.function_call)),
            ("audio", given(&self.audio)),
            ("modalities", given(&self.modalities) && !only_text),
            ("prediction", given(&self.prediction)),
            ("reasoning_effort", given(&self.reasoning_effort)),
            ("web_search_options", given(&self.web_search_options)),
        ]
        .into_iter()
        .find_map(|(field, refused)| refused.then_some(field))
    }
}

impl CompletionBody {
    /// The request, and whether to stream it (with the usage chunk or not).
    pub(super) fn into_input(self) -> Result<(ChatInput, Option<bool>), GatewayError> {
        self.refuse_what_cannot_be_honoured()?;
        let top_p = match self.top_p {
            Some(p) if !(0.0..=1.0).contains(&p) => {
                return Err(invalid(format!("top_p: must be between 0 and 1, got {p}")))
            }
            p => p.map(|p| p as f32),
        };
        let stop = match self.stop {
            None => Vec::new(),
            Some(Stop::One(one)) => vec![one],
            Some(Stop::Many(many)) => many,
        };
        if stop.len() > MAX_STOP || stop.iter().any(String::is_empty) {
            return Err(invalid(format!(
                "stop: must be up to {MAX_STOP} non-empty sequences"
            )));
        }
        let tooling = tooling(self.tools, self.tool_choice, self.parallel_tool_calls)?;
        let format = response_format(self.response_format)?;
        let (system, turns) = conversation(self.messages)?;
        let options = Options {
            model: self.model,
            temperature: self.temperature,
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
        };
        if format == ResponseFormat::JsonObject && !mentions_json(&system, &turns) {
            return Err(invalid(
                "response_format: json_object needs the word JSON in the messages, as OpenAI requires"
                    .into(),
            ));
        }
        let mut input = chat::input(system, turns, options)?;
        input.sampling.top_p = top_p;
        input.sampling.stop = stop;
        input.sampling.seed = self.seed;
        input.sampling.user = self.user.filter(|u| !u.is_empty());
        input.tooling = tooling;
        input.format = format;
        let stream = (self.stream == Some(true)).then(|| {
            self.stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false)
        });
        Ok((input, stream))
    }

    fn refuse_what_cannot_be_honoured(&self) -> Result<(), GatewayError> {
        let refuse = |field: &str, why: &str| Err(invalid(format!("{field}: {why}")));
        if self.n.is_some_and(|n| n != 1) {
            return refuse("n", "only one choice per request is supported");
        }
        if self.logprobs == Some(true) {
            return refuse("logprobs", "log probabilities are not supported");
        }
        for (field, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if value.is_some_and(|v| v != 0.0) {
                return refuse(field, "penalties are not supported");
            }
        }
        match self.unsupported.first() {
            Some(field) => refuse(field, "is not supported by this gateway"),
            None => Ok(()),
        }
    }
}

/// Whether any message says "JSON".
fn mentions_json(system: &[String], turns: &[Turn]) -> bool {
    let says = |text: &str| text.to_ascii_lowercase().contains("json");
    system.iter().any(|text| says(text))
        || turns.iter().flat_map(|t| &t.parts).any(|part| match part {
            Part::Text(text) => says(text),
            Part::ToolResult(result) => says(&result.content),
            _ => false,
        })
}

/// A schema whose root is an object (or says no type), as tools and JSON answers must have.
fn object_schema(schema: Value, field: &str) -> Result<Value, GatewayError> {
    match schema.get("type") {
        None => Ok(schema),
        Some(Value::String(kind)) if kind == "object" => Ok(schema),
        Some(other) => Err(invalid(format!(
            "{field}: the schema must describe an object, not {other}"
        ))),
    }
}

/// A function or schema name as OpenAI allows them: 1–64 letters, digits, `_` and `-`.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The tools offered and how they may be used.
fn tooling(
    tools: Option<Vec<WireTool>>,
    choice: Option<WireToolChoice>,
    parallel: Option<bool>,
) -> Result<Tooling, GatewayError> {
    let tools = tools.unwrap_or_default();
    if tools.len() > MAX_TOOLS {
        return Err(invalid(format!(
            "tools: at most {MAX_TOOLS} tools, got {}",
            tools.len()
        )));
    }
    let mut offered: Vec<Tool> = Vec::with_capacity(tools.len());
    for (i, tool) in tools.into_iter().enumerate() {
        let function = match (tool.kind.as_str(), tool.function) {
            ("function", Some(function)) => function,
            ("function", None) => return Err(invalid(format!("tools[{i}].function: is required"))),
            (other, _) => {
                return Err(invalid(format!(
                    "tools[{i}].type: only function tools are supported, got {other:?}"
                )))
            }
        };
        if !valid_name(&function.name) {
            return Err(invalid(format!(
                "tools[{i}].function.name: must be 1 to 64 letters, digits, '_' or '-'"
            )));
        }
        if offered.iter().any(|t| t.name == function.name) {
            return Err(invalid(format!(
                "tools[{i}].function.name: {:?} is offered twice",
                function.name
            )));
        }
        let parameters = match function.parameters {
            None => serde_json::json!({"type": "object", "properties": {}}),
            Some(schema @ Value::Object(_)) => {
                object_schema(schema, &format!("tools[{i}].function.parameters"))?
            }
            Some(_) => {
                return Err(invalid(format!(
                    "tools[{i}].function.parameters: must be a JSON Schema object"
                )))
            }
        };
        offered.push(Tool {
            name: function.name,
            description: function.description,
            parameters,
            strict: function.strict,
        });
    }
    let choice = tool_choice(choice, &offered)?;
    Ok(Tooling {
        tools: offered,
        choice,
        parallel,
    })
}

/// The tool choice, which must name a tool offered, and needs one to be `required`.
fn tool_choice(
    choice: Option<WireToolChoice>,
    offered: &[Tool],
) -> Result<Option<ToolChoice>, GatewayError> {
    let choice = match choice {
        None => None,
        Some(WireToolChoice::Mode(mode)) => Some(match mode.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(invalid(format!(
                    "tool_choice: expected none, auto, required or a named function, got {other:?}"
                )))
            }
        }),
        Some(WireToolChoice::Named { function }) => Some(ToolChoice::Named(function.name)),
    };
    match &choice {
        Some(ToolChoice::Required | ToolChoice::Named(_)) if offered.is_empty() => {
            return Err(invalid("tool_choice: no tools are offered".into()))
        }
        Some(ToolChoice::Named(name)) if !offered.iter().any(|t| &t.name == name) => {
            return Err(invalid(format!(
                "tool_choice: {name:?} is not one of the tools offered"
            )))
        }
        _ => {}
    }
    Ok(choice)
}

fn response_format(format: Option<WireFormat>) -> Result<ResponseFormat, GatewayError> {
    let Some(format) = format else {
        return Ok(ResponseFormat::Text);
    };
    match (format.kind.as_str(), format.json_schema) {
        ("text", _) => Ok(ResponseFormat::Text),
        ("json_object", _) => Ok(ResponseFormat::JsonObject),
        ("json_schema", Some(spec)) => {
            if !valid_name(&spec.name) {
                return Err(invalid(
                    "response_format.json_schema.name: must be 1 to 64 letters, digits, '_' or '-'"
                        .into(),
                ));
            }
            let schema = match spec.schema {
                None => serde_json::json!({"type": "object"}),
                Some(schema @ Value::Object(_)) => {
                    object_schema(schema, "response_format.json_schema.schema")?
                }
                Some(_) => {
                    return Err(invalid(
                        "response_format.json_schema.schema: must be a JSON Schema object".into(),
                    ))
                }
            };
            Ok(ResponseFormat::JsonSchema {
                name: spec.name,
                description: spec.description,
                schema,
                strict: spec.strict,
            })
        }
        ("json_schema", None) => Err(invalid(
            "response_format.json_schema: is required for type json_schema".into(),
        )),
        (other, _) => Err(invalid(format!(
            "response_format.type: expected text, json_object or json_schema, got {other:?}"
        ))),
    }
}

/// The system prompts and the turns. Consecutive `tool` messages are one turn, as Anthropic and
/// Gemini want every result of one answer's calls together. Every call must be answered, by id,
/// before the conversation goes on, as all three providers require.
fn conversation(messages: Vec<WireMessage>) -> Result<(Vec<String>, Vec<Turn>), GatewayError> {
    if messages.is_empty() {
        return Err(invalid(
            "messages: must contain at least one message".into(),
        ));
    }
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::with_capacity(messages.len());
    let mut calls = Calls::default();
    let mut in_results = false;
    for (i, message) in messages.into_iter().enumerate() {
        let results_before = std::mem::replace(&mut in_results, false);
        if message.role != "tool" {
            calls.all_answered(&format!("messages[{i}]"))?;
        }
        match message.role.as_str() {
            "system" | "developer" => system.push(text_only(message.content, i)?),
            "user" => turns.push(Turn {
                speaker: Speaker::User,
                parts: user_parts(message.content, i)?,
            }),
            "assistant" => {
                let turn = assistant_turn(message, i)?;
                calls.made(&turn, i)?;
                turns.push(turn);
            }
            "tool" => {
                let result = tool_result(message, i, &mut calls)?;
                in_results = true;
                match turns.last_mut() {
                    Some(turn) if results_before => turn.parts.push(result),
                    _ => turns.push(Turn {
                        speaker: Speaker::User,
                        parts: vec![result],
                    }),
                }
            }
            "function" => {
                return Err(invalid(format!(
                    "messages[{i}].role: function messages are deprecated; send tool messages"
                )))
            }
            other => {
                return Err(invalid(format!(
                    "messages[{i}].role: unknown role {other:?}; expected system, developer, user, assistant or tool"
                )))
            }
        }
    }
    calls.all_answered("messages")?;
    Ok((system, turns))
}

/// The tool calls of a conversation: every call's name by id, and the calls of the last assistant
/// message that still wait for their results.
#[derive(Debug, Default)]
struct Calls {
    names: HashMap<String, String>,
    waiting: Vec<String>,
    made_in: usize,
}

impl Calls {
    /// Notes the calls of assistant message `i`: ids are unique in a conversation.
    fn made(&mut self, turn: &Turn, i: usize) -> Result<(), GatewayError> {
        let made = turn.parts.iter().filter_map(|part| match part {
            Part::ToolCall(call) => Some(call),
            _ => None,
        });
        for (j, call) in made.enumerate() {
            if self
                .names
                .insert(call.id.clone(), call.name.clone())
                .is_some()
            {
                return Err(invalid(format!(
                    "messages[{i}].tool_calls[{j}].id: {:?} is the id of an earlier call",
                    call.id
                )));
            }
            self.waiting.push(call.id.clone());
        }
        self.made_in = i;
        Ok(())
    }

    /// The name of the waiting call `id` answers (it waits no more).
    fn answer(&mut self, id: &str, wire_id: &str, i: usize) -> Result<String, GatewayError> {
        let field = format!("messages[{i}].tool_call_id");
        match self.waiting.iter().position(|w| w == id) {
            Some(at) => {
                self.waiting.remove(at);
                Ok(self.names.get(id).cloned().unwrap_or_default())
            }
            None if self.names.contains_key(id) => Err(invalid(format!(
                "{field}: the call {wire_id:?} was answered already, or was not made by the assistant message right before"
            ))),
            None => Err(invalid(format!(
                "{field}: no earlier assistant message made the call {wire_id:?}"
            ))),
        }
    }

    /// Fails, naming `at`, if a call still waits for its result.
    fn all_answered(&self, at: &str) -> Result<(), GatewayError> {
        if self.waiting.is_empty() {
            return Ok(());
        }
        Err(invalid(format!(
            "{at}: every tool call of messages[{}] needs a tool message with its result first; unanswered: {}",
            self.made_in,
            self.waiting.join(", ")
        )))
    }
}

/// A message that may only hold text (system prompts, tool results): its text parts joined, not
/// blank.
fn text_only(content: Option<Content>, i: usize) -> Result<String, GatewayError> {
    let text = joined(content, i)?;
    if text.trim().is_empty() {
        return Err(invalid(format!("messages[{i}].content: must not be empty")));
    }
    Ok(text)
}

/// The text parts of a message, joined by new lines; any other part is refused.
fn joined(content: Option<Content>, i: usize) -> Result<String, GatewayError> {
    Ok(match content {
        None => String::new(),
        Some(Content::Text(text)) => text,
        Some(Content::Parts(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.into_iter().enumerate() {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(text)) => texts.push(text),
                    (kind, _) => {
                        return Err(invalid(format!(
                            "messages[{i}].content[{j}]: only text parts may be sent here, got {kind:?}"
                        )))
                    }
                }
            }
            texts.join("\n")
        }
    })
}

/// A user message: text and images.
fn user_parts(content: Option<Content>, i: usize) -> Result<Vec<Part>, GatewayError> {
    let parts = match content {
        Some(Content::Parts(parts)) => parts,
        other => return Ok(vec![Part::Text(text_only(other, i)?)]),
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, part) in parts.into_iter().enumerate() {
        match (part.kind.as_str(), part.text, part.image_url) {
            ("text", Some(text), _) => out.push(Part::Text(text)),
            ("image_url", _, Some(image)) => out.push(Part::Image(self::image(image, i, j)?)),
            ("text" | "image_url", ..) => {
                return Err(invalid(format!(
                    "messages[{i}].content[{j}]: a {} part needs its {0} field",
                    part.kind
                )))
            }
            (kind, ..) => {
                return Err(invalid(format!(
                    "messages[{i}].content[{j}].type: {kind:?} parts are not supported; send text or image_url"
                )))
            }
        }
    }
    let blank = out
        .iter()
        .all(|p| matches!(p, Part::Text(t) if t.trim().is_empty()));
    if blank {
        return Err(invalid(format!("messages[{i}].content: must not be empty")));
    }
    Ok(out)
}

/// An image part: a `data:` URL of a PNG, JPEG, GIF or WebP whose bytes are what it says they
/// are (providers refuse a mismatch), or an `http(s)` address.
fn image(image: ImageUrl, i: usize, j: usize) -> Result<Image, GatewayError> {
    let field = format!("messages[{i}].content[{j}].image_url");
    let detail = match image.detail.as_deref() {
        None | Some("auto" | "low" | "high") => image.detail,
        Some(other) => {
            return Err(invalid(format!(
                "{field}.detail: expected auto, low or high, got {other:?}"
            )))
        }
    };
    let url = image.url;
    let lower = url.get(..8).unwrap_or(&url).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(Image {
            source: ImageSource::Url(url),
            detail,
        });
    }
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(invalid(format!(
            "{field}.url: must be a data: URL or an http(s) address"
        )));
    };
    let Some((media_type, data)) = rest.split_once(";base64,") else {
        return Err(invalid(format!(
            "{field}.url: a data: URL must be base64 (data:image/png;base64,…)"
        )));
    };
    let media_type = media_type.to_ascii_lowercase();
    if !IMAGE_TYPES.contains(&media_type.as_str()) {
        return Err(invalid(format!(
            "{field}.url: images must be PNG, JPEG, GIF or WebP, got {media_type:?}"
        )));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| invalid(format!("{field}.url: the image's base64 does not decode")))?;
    if sniffed(&bytes) != Some(media_type.as_str()) {
        return Err(invalid(format!(
            "{field}.url: the image's bytes are not a {media_type} image"
        )));
    }
    Ok(Image {
        source: ImageSource::Inline {
            media_type,
            data: data.to_owned(),
        },
        detail,
    })
}

/// The image type the bytes begin like.
fn sniffed(bytes: &[u8]) -> Option<&'static str> {
    match bytes {
        [0x89, b'P', b'N', b'G', ..] => Some("image/png"),
        [0xFF, 0xD8, 0xFF, ..] => Some("image/jpeg"),
        [b'G', b'I', b'F', b'8', ..] => Some("image/gif"),
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Some("image/webp"),
        _ => None,
    }
}

/// An assistant message: its text, then its tool calls.
fn assistant_turn(message: WireMessage, i: usize) -> Result<Turn, GatewayError> {
    let calls = message.tool_calls.unwrap_or_default();
    let mut parts = Vec::with_capacity(calls.len() + 1);
    // An assistant message that calls tools may say nothing.
    let text = match calls.is_empty() {
        true => text_only(message.content, i)?,
        false => joined(message.content, i)?,
    };
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    for (j, call) in calls.into_iter().enumerate() {
        if call.kind.as_deref().is_some_and(|kind| kind != "function") {
            return Err(invalid(format!(
                "messages[{i}].tool_calls[{j}].type: only function calls are supported"
            )));
        }
        if call.id.is_empty() {
            return Err(invalid(format!(
                "messages[{i}].tool_calls[{j}].id: must not be empty"
            )));
        }
        let (id, signature) = split_call_id(&call.id);
        parts.push(Part::ToolCall(ToolCall {
            id,
            name: call.function.name,
            arguments: call.function.arguments,
            signature,
        }));
    }
    Ok(Turn {
        speaker: Speaker::Assistant,
        parts,
    })
}

/// A `tool` message: the result of the earlier call it names.
fn tool_result(message: WireMessage, i: usize, calls: &mut Calls) -> Result<Part, GatewayError> {
    let Some(wire_id) = message.tool_call_id else {
        return Err(invalid(format!("messages[{i}].tool_call_id: is required")));
    };
    let (call_id, _) = split_call_id(&wire_id);
    let name = calls.answer(&call_id, &wire_id, i)?;
    // A tool may answer nothing.
    let content = joined(message.content, i)?;
    Ok(Part::ToolResult(ToolResult {
        call_id,
        name,
        content,
    }))
}

/// A tool call's id as clients see it. Gemini's thought signature must come back with the call
/// on the next turn, and the id is the one thing every client sends back unchanged, so a
/// signature rides in it, URL-safe base64 after [`SIGNATURE_MARK`] (every character one that
/// Anthropic's ids allow too).
pub(super) fn wire_call_id(id: &str, signature: Option<&str>) -> String {
    match signature {
        None => id.to_owned(),
        Some(signature) => {
            let encoded =
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature.as_bytes());
            format!("{id}{SIGNATURE_MARK}{encoded}")
        }
    }
}

/// The call id and the signature a client's tool-call id carries (see [`wire_call_id`]); an id
/// whose signature part does not decode is taken whole.
fn split_call_id(wire: &str) -> (String, Option<String>) {
    let Some((id, encoded)) = wire.split_once(SIGNATURE_MARK) else {
        return (wire.to_owned(), None);
    };
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok());
    match signature {
        Some(signature) if !id.is_empty() => (id.to_owned(), Some(signature)),
        _ => (wire.to_owned(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::openai::classify;
    use http::StatusCode;

    fn body(json: Value) -> Result<(ChatInput, Option<bool>), GatewayError> {
        serde_json::from_value::<CompletionBody>(json)
            .expect("body")
            .into_input()
    }

    #[test]
    fn openai_requests_become_chats() {
        let (input, stream) = body(serde_json::json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}
            ],
            "max_completion_tokens": 50, "max_tokens": 10, "top_p": 0.5, "stop": "END", "seed": 7,
            "user": "u-1", "stream": true, "stream_options": {"include_usage": true},
            "n": 1, "logprobs": false, "tool_choice": "none", "response_format": {"type": "text"},
            "something_new": {"a": 1}
        }))
        .expect("valid");
        assert_eq!(stream, Some(true));
        assert_eq!(input.system.as_deref(), Some("Be brief."));
        assert_eq!(
            input.turns[0].parts,
            [Part::Text("Hi".into()), Part::Text("there".into())]
        );
        assert_eq!(input.max_tokens, Some(50));
        assert_eq!(input.sampling.top_p, Some(0.5));
        assert_eq!(input.sampling.stop, vec!["END".to_owned()]);
        assert_eq!(input.sampling.seed, Some(7));
        assert_eq!(input.sampling.user.as_deref(), Some("u-1"));
        assert_eq!(input.tooling.choice, Some(ToolChoice::None));
    }

    #[test]
    fn a_tool_round_trip_becomes_calls_and_results_matched_by_id() {
        let signed = wire_call_id("call_2", Some("c2ln+/="));
        let (input, _) = body(serde_json::json!({
            "messages": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": signed, "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "tool", "tool_call_id": signed, "content": [{"type": "text", "text": "21C"}]}
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
            "parallel_tool_calls": false
        }))
        .expect("valid");
        assert_eq!(input.turns.len(), 3);
        let Part::ToolCall(second) = &input.turns[1].parts[1] else {
            panic!("a call: {:?}", input.turns[1]);
        };
        assert_eq!(second.id, "call_2");
        assert_eq!(second.signature.as_deref(), Some("c2ln+/="));
        assert_eq!(
            input.turns[2].parts,
            [
                Part::ToolResult(ToolResult {
                    call_id: "call_1".into(),
                    name: "weather".into(),
                    content: "18C".into()
                }),
                Part::ToolResult(ToolResult {
                    call_id: "call_2".into(),
                    name: "weather".into(),
                    content: "21C".into()
                })
            ]
        );
        assert_eq!(
            input.tooling.choice,
            Some(ToolChoice::Named("weather".into()))
        );
        assert_eq!(input.tooling.parallel, Some(false));
        assert!(signed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
    }

    #[test]
    fn images_are_checked_for_what_they_are() {
        let png = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG\r\n\x1a\nrest");
        let image = |url: String| {
            serde_json::json!({"messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": url, "detail": "low"}}
            ]}]})
        };
        let (input, _) = body(image(format!("data:image/png;base64,{png}"))).expect("valid");
        let Part::Image(parsed) = &input.turns[0].parts[1] else {
            panic!("an image");
        };
        assert_eq!(parsed.detail.as_deref(), Some("low"));
        assert!(
            matches!(&parsed.source, ImageSource::Inline { media_type, .. } if media_type == "image/png")
        );
        body(image("https://example.com/cat.png".into())).expect("an address is fine");
        for (url, says) in [
            (format!("data:image/jpeg;base64,{png}"), "not a image/jpeg"),
            (
                "data:image/svg+xml;base64,PHN2Zz4=".into(),
                "PNG, JPEG, GIF or WebP",
            ),
            ("data:image/png;base64,***".into(), "does not decode"),
            (
                "ftp://example.com/cat.png".into(),
                "data: URL or an http(s)",
            ),
        ] {
            let err = body(image(url)).expect_err(says);
            assert!(err.detail().contains(says), "{err}");
            assert!(
                err.detail().starts_with("messages[0].content[1].image_url"),
                "{err}"
            );
        }
    }

    #[test]
    fn tools_and_formats_that_cannot_work_are_refused_naming_the_field() {
        let hi = || serde_json::json!({"messages": [{"role": "user", "content": "Hi"}]});
        let weather = serde_json::json!([{"type": "function", "function": {"name": "weather"}}]);
        let call = serde_json::json!({"role": "assistant", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
        ]});
        let answer =
            serde_json::json!({"role": "tool", "tool_call_id": "call_1", "content": "18C"});
        for (patch, field) in [
            (
                serde_json::json!({"tools": [{"type": "code_interpreter"}]}),
                "tools[0].type",
            ),
            (
                serde_json::json!({"tools": [{"type": "function", "function": {"name": "a b"}}]}),
                "tools[0].function.name",
            ),
            (
                serde_json::json!({"tools": weather.clone(), "tool_choice": {"type": "function", "function": {"name": "other"}}}),
                "tool_choice",
            ),
            (
                serde_json::json!({"tool_choice": "required"}),
                "tool_choice",
            ),
            (
                serde_json::json!({"response_format": {"type": "json_schema"}}),
                "response_format.json_schema",
            ),
            (
                serde_json::json!({"response_format": {"type": "yaml"}}),
                "response_format.type",
            ),
            (
                serde_json::json!({"messages": [{"role": "tool", "tool_call_id": "call_9", "content": "x"}]}),
                "messages[0].tool_call_id",
            ),
            (
                serde_json::json!({"messages": [call.clone(), {"role": "user", "content": "and?"}]}),
                "messages[1]",
            ),
            (serde_json::json!({"messages": [call.clone()]}), "messages"),
            (
                serde_json::json!({"messages": [call.clone(), answer.clone(), answer.clone()]}),
                "messages[2].tool_call_id",
            ),
            (
                serde_json::json!({"messages": [call.clone(), answer.clone(), call.clone()]}),
                "messages[2].tool_calls[0].id",
            ),
            (
                serde_json::json!({"response_format": {"type": "json_object"}}),
                "response_format",
            ),
            (
                serde_json::json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]}),
                "tools[0].function.parameters",
            ),
        ] {
            let mut json = hi();
            for (key, value) in patch.as_object().expect("object") {
                json[key] = value.clone();
            }
            let err = body(json).expect_err(field);
            assert!(err.detail().starts_with(field), "{field}: {err}");
        }
    }

    #[test]
    fn fields_that_cannot_be_honoured_are_refused_by_name() {
        for (field, value) in [
            ("n", serde_json::json!(2)),
            ("logprobs", serde_json::json!(true)),
            ("presence_penalty", serde_json::json!(0.5)),
            (
                "functions",
                serde_json::json!([{"name": "f", "parameters": {}}]),
            ),
            ("top_p", serde_json::json!(1.5)),
            ("stop", serde_json::json!(["a", "b", "c", "d", "e"])),
        ] {
            let mut json = serde_json::json!({"messages": [{"role": "user", "content": "Hi"}]});
            json[field] = value;
            let err = body(json).expect_err(field);
            let (status, _, param, _) = classify(&err);
            assert_eq!(status, StatusCode::BAD_REQUEST, "{field}");
            assert_eq!(param.as_deref(), Some(field), "{err}");
        }
    }
}

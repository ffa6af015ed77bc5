//! A chat completion request, read and checked the way OpenAI checks it: the messages and their
//! tool calls, tool results and images, the tools and tool choice, the response format.
//!
//! Wire types follow <https://platform.openai.com/docs/api-reference/chat/create>; the error
//! wording follows what the API answers.

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::ApiError;
use crate::{
    media, schema,
    script::{Output, Turn},
    tools::{Choice, Tool, ToolResult, Toolbox},
    Provider,
};

#[derive(Debug, Deserialize)]
pub(super) struct ChatRequest {
    model: Option<String>,
    messages: Option<Vec<ChatMessage>>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    tools: Option<Vec<ToolDefinition>>,
    tool_choice: Option<ToolChoice>,
    parallel_tool_calls: Option<bool>,
    response_format: Option<ResponseFormat>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    /// Absent or null on assistant messages that only call tools.
    content: Option<MessageContent>,
    tool_calls: Option<Vec<ToolCall>>,
    /// On `tool` messages: the call this message answers.
    tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: Option<String>,
    /// Only text parts carry text; audio and file parts count for nothing here.
    text: Option<String>,
    image_url: Option<ImageUrl>,
}

#[derive(Debug, Deserialize)]
struct ImageUrl {
    url: String,
    detail: Option<String>,
}

impl MessageContent {
    fn text(&self) -> String {
        match self {
            Self::Text(text) => text.clone(),
            Self::Parts(parts) => parts
                .iter()
                .filter_map(|part| part.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// A call in an assistant message of the history.
#[derive(Debug, Deserialize)]
struct ToolCall {
    id: String,
    function: CalledFunction,
}

#[derive(Debug, Deserialize)]
struct CalledFunction {
    name: String,
    /// JSON text, exactly as the model wrote it.
    arguments: String,
}

#[derive(Debug, Deserialize)]
struct ToolDefinition {
    #[serde(rename = "type")]
    kind: String,
    function: Option<FunctionDefinition>,
}

#[derive(Debug, Deserialize)]
struct FunctionDefinition {
    name: String,
    description: Option<String>,
    parameters: Option<Value>,
}

/// `"none"`, `"auto"`, `"required"`, `{"type": "function", "function": {"name"}}` or
/// `{"type": "allowed_tools", "allowed_tools": {"mode", "tools"}}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ToolChoice {
    Mode(String),
    Object(ToolChoiceObject),
}

#[derive(Debug, Deserialize)]
struct ToolChoiceObject {
    #[serde(rename = "type")]
    kind: String,
    function: Option<FunctionName>,
    allowed_tools: Option<AllowedTools>,
}

#[derive(Debug, Deserialize)]
struct FunctionName {
    name: String,
}

#[derive(Debug, Deserialize)]
struct AllowedTools {
    mode: String,
    tools: Vec<ToolChoiceObject>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchema },
}

#[derive(Debug, Deserialize)]
struct JsonSchema {
    /// Required by the API, unused here.
    #[serde(rename = "name")]
    _name: String,
    schema: Option<Value>,
}

/// A request read into the simulator's terms.
pub(super) struct Reading<'a> {
    pub model: &'a str,
    pub stream: bool,
    pub include_usage: bool,
    max_tokens: Option<u32>,
    prompt: String,
    inputs: Vec<String>,
    toolbox: Toolbox<'a>,
    results: Vec<ToolResult>,
    output: Output<'a>,
    image_tokens: u32,
}

impl Reading<'_> {
    pub fn turn(&self) -> Turn<'_> {
        Turn {
            provider: Provider::OpenAi,
            model: self.model,
            prompt: &self.prompt,
            inputs: self.inputs.iter().map(String::as_str).collect(),
            max_tokens: self.max_tokens,
            tools: self.toolbox.clone(),
            results: self.results.clone(),
            output: self.output,
            image_tokens: self.image_tokens,
        }
    }

    pub fn prompt(&self) -> &str {
        &self.prompt
    }
}

/// Reads and checks `request`; the error is what OpenAI answers to the first problem found.
pub(super) fn read(request: &ChatRequest) -> Result<Reading<'_>, ApiError> {
    let Some(model) = request.model.as_deref().filter(|model| !model.is_empty()) else {
        return Err(ApiError::missing("model"));
    };
    let Some(messages) = request.messages.as_deref() else {
        return Err(ApiError::missing("messages"));
    };
    if messages.is_empty() {
        return Err(empty_array("messages"));
    }
    let stream = request.stream.unwrap_or(false);
    if request.stream_options.is_some() && !stream {
        return Err(invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
        )
        .param("stream_options"));
    }
    let max_tokens = max_tokens(request)?;
    let toolbox = toolbox(request)?;
    check_tool_messages(messages)?;
    let mut inputs = Vec::with_capacity(messages.len() + 2);
    let mut image_tokens = 0u32;
    for (index, message) in messages.iter().enumerate() {
        let (text, images) = message_input(index, message)?;
        inputs.push(text);
        image_tokens = image_tokens.saturating_add(images);
    }
    let output = output(request, &inputs)?;
    let prompt = messages
        .iter()
        .zip(&inputs)
        .rev()
        .find(|(message, _)| message.role == "user")
        .map(|(_, text)| text.clone())
        .unwrap_or_default();
    let results = trailing_results(messages);
    inputs.extend(definitions_input(request));
    if let Output::Json(Some(schema)) = output {
        inputs.push(schema::spaced(schema));
    }
    Ok(Reading {
        model,
        stream,
        include_usage: request
            .stream_options
            .as_ref()
            .and_then(|options| options.include_usage)
            .unwrap_or(false),
        max_tokens,
        prompt,
        inputs,
        toolbox,
        results,
        output,
        image_tokens,
    })
}

fn max_tokens(request: &ChatRequest) -> Result<Option<u32>, ApiError> {
    let max_tokens = request.max_completion_tokens.or(request.max_tokens);
    if max_tokens == Some(0) {
        let param = if request.max_completion_tokens.is_some() {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        return Err(invalid(format!(
            "Invalid '{param}': integer below minimum value. \
             Expected a value >= 1, but got 0 instead."
        ))
        .param(param)
        .code("integer_below_min_value"));
    }
    Ok(max_tokens)
}

fn toolbox(request: &ChatRequest) -> Result<Toolbox<'_>, ApiError> {
    let definitions = request.tools.as_deref().unwrap_or_default();
    if request.tools.as_ref().is_some_and(Vec::is_empty) {
        return Err(empty_array("tools"));
    }
    let mut tools = Vec::with_capacity(definitions.len());
    for (index, definition) in definitions.iter().enumerate() {
        // Custom (free-form) tools are accepted; the simulated model only calls functions.
        if definition.kind != "function" {
            continue;
        }
        let Some(function) = &definition.function else {
            return Err(ApiError::missing(format!("tools[{index}].function")));
        };
        if !is_function_name(&function.name) {
            return Err(invalid(format!(
                "Invalid 'tools[{index}].function.name': string does not match pattern. \
                 Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'."
            ))
            .param(format!("tools[{index}].function.name"))
            .code("invalid_value"));
        }
        tools.push(Tool {
            name: &function.name,
            schema: function.parameters.as_ref(),
        });
    }
    let (choice, allowed) = match &request.tool_choice {
        None => (Choice::Auto, Vec::new()),
        Some(_) if definitions.is_empty() => {
            return Err(invalid(
                "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            )
            .param("tool_choice"))
        }
        Some(choice) => tool_choice(choice, &tools)?,
    };
    Ok(Toolbox {
        tools,
        choice,
        allowed,
        parallel: request.parallel_tool_calls.unwrap_or(true),
    })
}

fn tool_choice<'a>(
    choice: &'a ToolChoice,
    tools: &[Tool<'_>],
) -> Result<(Choice<'a>, Vec<&'a str>), ApiError> {
    let offered = |name: &str, param: &str| {
        if tools.iter().any(|tool| tool.name == name) {
            Ok(())
        } else {
            Err(invalid(format!(
                "Invalid value for '{param}': function '{name}' not found in 'tools'."
            ))
            .param(param.to_owned())
            .code("invalid_value"))
        }
    };
    let mode = |mode: &str, param: &str| match mode {
        "none" => Ok(Choice::None),
        "auto" => Ok(Choice::Auto),
        "required" => Ok(Choice::Required),
        other => Err(invalid(format!(
            "Invalid value: '{other}'. Supported values are: 'none', 'auto', and 'required'."
        ))
        .param(param.to_owned())
        .code("invalid_value")),
    };
    match choice {
        ToolChoice::Mode(name) => Ok((mode(name, "tool_choice")?, Vec::new())),
        ToolChoice::Object(object) if object.kind == "function" => {
            let Some(function) = &object.function else {
                return Err(ApiError::missing("tool_choice.function"));
            };
            offered(&function.name, "tool_choice.function.name")?;
            Ok((Choice::Named(&function.name), Vec::new()))
        }
        ToolChoice::Object(object) if object.kind == "allowed_tools" => {
            let Some(allowed) = &object.allowed_tools else {
                return Err(ApiError::missing("tool_choice.allowed_tools"));
            };
            let choice = mode(&allowed.mode, "tool_choice.allowed_tools.mode")?;
            let mut names = Vec::with_capacity(allowed.tools.len());
            for tool in &allowed.tools {
                if let Some(function) = &tool.function {
                    offered(&function.name, "tool_choice.allowed_tools.tools")?;
                    names.push(function.name.as_str());
                }
            }
            Ok((choice, names))
        }
        ToolChoice::Object(object) => Err(invalid(format!(
            "Invalid value: '{}'. Supported values are: 'function', 'allowed_tools' and 'custom'.",
            object.kind
        ))
        .param("tool_choice.type")
        .code("invalid_value")),
    }
}

/// OpenAI's pairing rule: the `tool` messages right after an assistant message with
/// `tool_calls` answer exactly those calls, and `tool` messages appear nowhere else.
fn check_tool_messages(messages: &[ChatMessage]) -> Result<(), ApiError> {
    let mut pending: Vec<&str> = Vec::new();
    let mut answering = false;
    for (index, message) in messages.iter().enumerate() {
        if message.role == "tool" {
            if !answering {
                return Err(invalid(
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.",
                )
                .param(format!("messages.[{index}].role")));
            }
            let Some(id) = message.tool_call_id.as_deref() else {
                return Err(ApiError::missing(format!(
                    "messages.[{index}].tool_call_id"
                )));
            };
            let Some(position) = pending.iter().position(|pending| *pending == id) else {
                return Err(invalid(format!(
                    "Invalid parameter: 'tool_call_id' of '{id}' not found in 'tool_calls' of previous message."
                ))
                .param(format!("messages.[{index}].tool_call_id")));
            };
            pending.remove(position);
            continue;
        }
        unanswered(&pending, index)?;
        pending = message
            .tool_calls
            .iter()
            .flatten()
            .filter(|_| message.role == "assistant")
            .map(|call| call.id.as_str())
            .collect();
        answering = !pending.is_empty();
    }
    unanswered(&pending, messages.len())
}

fn unanswered(pending: &[&str], index: usize) -> Result<(), ApiError> {
    if pending.is_empty() {
        return Ok(());
    }
    Err(invalid(format!(
        "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: {}",
        pending.join(", ")
    ))
    .param(format!("messages.[{index}].role")))
}

/// The message as input text (its text, then any tool calls it makes) and the input tokens of
/// its images, which are checked here.
fn message_input(index: usize, message: &ChatMessage) -> Result<(String, u32), ApiError> {
    let mut text = message
        .content
        .as_ref()
        .map(MessageContent::text)
        .unwrap_or_default();
    for call in message.tool_calls.iter().flatten() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&call.function.name);
        text.push(' ');
        text.push_str(&call.function.arguments);
    }
    let Some(MessageContent::Parts(parts)) = &message.content else {
        return Ok((text, 0));
    };
    let mut tokens = 0u32;
    for (part_index, part) in parts.iter().enumerate() {
        if part.kind.as_deref() != Some("image_url") {
            continue;
        }
        let path = format!("messages[{index}].content[{part_index}]");
        if message.role != "user" {
            return Err(invalid(format!(
                "Image URLs are only allowed for messages with role 'user', but this message with role '{}' contains an image URL.",
                message.role
            ))
            .param(format!("{path}.type"))
            .code("invalid_value"));
        }
        let Some(image) = &part.image_url else {
            return Err(ApiError::missing(format!("{path}.image_url")));
        };
        tokens = tokens.saturating_add(image_tokens(&path, image)?);
    }
    Ok((text, tokens))
}

/// Checks one image as OpenAI does before fetching or decoding it, and prices it.
fn image_tokens(path: &str, image: &ImageUrl) -> Result<u32, ApiError> {
    let url = image.url.as_str();
    let bad_url = |got: &str| {
        invalid(format!(
            "Invalid image URL: '{path}.image_url.url'. Expected a base64-encoded data URL with an image MIME type (e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got {got}."
        ))
        .param(format!("{path}.image_url.url"))
        .code("invalid_value")
    };
    if let Some(data) = media::data_url(url) {
        if !media::is_supported_image(data.media_type) {
            return Err(invalid(
                "You uploaded an unsupported image. Please make sure your image has of one the following formats: ['png', 'jpeg', 'gif', 'webp'].",
            )
            .code("invalid_image_format"));
        }
        if !media::is_base64_payload(data.data) {
            return Err(bad_url("a value that is not valid base64"));
        }
    } else if url.starts_with("data:") {
        return Err(bad_url("a data URL that is not base64-encoded"));
    } else if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(bad_url("a value without the 'data:' prefix"));
    }
    match image.detail.as_deref() {
        Some("low") => Ok(media::OPENAI_LOW_DETAIL_TOKENS),
        None | Some("auto" | "high") => Ok(media::OPENAI_HIGH_DETAIL_TOKENS),
        Some(other) => Err(invalid(format!(
            "Invalid value: '{other}'. Supported values are: 'auto', 'low', and 'high'."
        ))
        .param(format!("{path}.image_url.detail"))
        .code("invalid_value")),
    }
}

/// The `tool` messages the conversation ends with, in order.
fn trailing_results(messages: &[ChatMessage]) -> Vec<ToolResult> {
    let count = messages
        .iter()
        .rev()
        .take_while(|message| message.role == "tool")
        .count();
    messages[messages.len() - count..]
        .iter()
        .map(|message| ToolResult {
            content: message
                .content
                .as_ref()
                .map(MessageContent::text)
                .unwrap_or_default(),
            is_error: false,
        })
        .collect()
}

fn output<'a>(request: &'a ChatRequest, texts: &[String]) -> Result<Output<'a>, ApiError> {
    match &request.response_format {
        None | Some(ResponseFormat::Text) => Ok(Output::Text),
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            Ok(Output::Json(json_schema.schema.as_ref()))
        }
        Some(ResponseFormat::JsonObject) => {
            // The API refuses JSON mode unless the prompt says so: without the word the model
            // tends to stream whitespace until the token limit.
            if !texts
                .iter()
                .any(|text| text.to_ascii_lowercase().contains("json"))
            {
                return Err(invalid(
                    "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.",
                )
                .param("messages"));
            }
            Ok(Output::Json(None))
        }
    }
}

/// The tool definitions as input text: the provider puts them in the prompt, so they cost input
/// tokens.
fn definitions_input(request: &ChatRequest) -> Option<String> {
    let functions: Vec<String> = request
        .tools
        .iter()
        .flatten()
        .filter_map(|definition| definition.function.as_ref())
        .map(|function| {
            let parameters = function
                .parameters
                .as_ref()
                .map(schema::spaced)
                .unwrap_or_default();
            format!(
                "{} {} {parameters}",
                function.name,
                function.description.as_deref().unwrap_or_default()
            )
        })
        .collect();
    (!functions.is_empty()).then(|| functions.join("\n"))
}

fn is_function_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message, "invalid_request_error")
}

fn empty_array(param: &'static str) -> ApiError {
    invalid(format!(
        "Invalid '{param}': empty array. Expected an array with minimum length 1, but got an empty array instead."
    ))
    .param(param)
    .code("empty_array")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request(body: Value) -> ChatRequest {
        serde_json::from_value(body).expect("a valid request body")
    }

    #[test]
    fn tool_messages_must_answer_the_calls_before_them() {
        let call = json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]});
        let good = request(json!({"model": "m", "messages": [
            {"role": "user", "content": "hi"}, call,
            {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]}));
        assert!(read(&good).is_ok());
        let wrong_id = request(json!({"model": "m", "messages": [
            {"role": "user", "content": "hi"}, call,
            {"role": "tool", "tool_call_id": "call_2", "content": "ok"}]}));
        let error = read(&wrong_id).err().expect("refused");
        assert_eq!(
            error.detail.param.as_deref(),
            Some("messages.[2].tool_call_id")
        );
        let unanswered = request(json!({"model": "m", "messages": [
            {"role": "user", "content": "hi"}, call, {"role": "user", "content": "and?"}]}));
        assert!(read(&unanswered)
            .err()
            .expect("refused")
            .detail
            .message
            .contains("call_1"));
        let stray = request(json!({"model": "m", "messages": [
            {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]}));
        assert!(read(&stray).is_err());
    }

    #[test]
    fn images_are_checked_and_priced_by_detail() {
        let with_image = |url: &str, detail: Value| {
            request(
                json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": url, "detail": detail}}]}]}),
            )
        };
        let low = with_image("data:image/png;base64,iVBORw0KGgo=", json!("low"));
        assert_eq!(read(&low).ok().map(|r| r.image_tokens), Some(85));
        let remote = with_image("https://example.com/cat.jpg", Value::Null);
        assert_eq!(read(&remote).ok().map(|r| r.image_tokens), Some(765));
        for bad in [
            "data:image/bmp;base64,iVBORw0KGgo=",
            "data:image/png;base64,not base64!",
            "ftp://example.com/cat.jpg",
        ] {
            assert!(read(&with_image(bad, Value::Null)).is_err(), "{bad}");
        }
    }
}

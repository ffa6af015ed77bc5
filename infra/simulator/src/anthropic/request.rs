//! A Messages request, read and checked the way Anthropic checks it: content blocks (text,
//! `tool_use`, `tool_result`, `image`), tools and tool choice, the output format.
//!
//! Wire types follow <https://docs.anthropic.com/en/api/messages> and
//! <https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/implement-tool-use>; the error
//! wording follows what the API answers.

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
pub(super) struct MessagesRequest {
    model: Option<String>,
    messages: Option<Vec<InputMessage>>,
    system: Option<Content>,
    max_tokens: Option<u32>,
    stream: Option<bool>,
    tools: Option<Vec<ToolDefinition>>,
    tool_choice: Option<ToolChoice>,
    output_config: Option<OutputConfig>,
    /// The structured-outputs beta's spelling of `output_config.format`.
    output_format: Option<OutputFormat>,
}

#[derive(Debug, Deserialize)]
struct InputMessage {
    role: String,
    content: Content,
}

/// Message content, the system prompt and a tool result's content are each a string or a list
/// of blocks.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Blocks(Vec<InputBlock>),
}

/// Any content block; which fields are set depends on `type`. One struct rather than an enum so
/// block types the simulator does not model (documents, thinking, server tools) pass through.
#[derive(Debug, Deserialize)]
struct InputBlock {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
    /// `tool_use`: the call's id, tool name and arguments.
    id: Option<String>,
    name: Option<String>,
    input: Option<Value>,
    /// `tool_result`: the call it answers, its content, whether the tool failed.
    tool_use_id: Option<String>,
    content: Option<Content>,
    is_error: Option<bool>,
    /// `image`.
    source: Option<ImageSource>,
}

#[derive(Debug, Deserialize)]
struct ImageSource {
    #[serde(rename = "type")]
    kind: String,
    media_type: Option<String>,
    data: Option<String>,
    url: Option<String>,
    file_id: Option<String>,
}

impl InputBlock {
    fn is(&self, kind: &str) -> bool {
        self.kind.as_deref() == Some(kind)
    }
}

impl Content {
    fn blocks(&self) -> &[InputBlock] {
        match self {
            Self::Text(_) => &[],
            Self::Blocks(blocks) => blocks,
        }
    }

    /// The text blocks' text.
    fn text(&self) -> String {
        match self {
            Self::Text(text) => text.clone(),
            Self::Blocks(blocks) => blocks
                .iter()
                .filter_map(|block| block.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    /// Everything the model reads: text, then each tool call and tool result.
    fn input_text(&self) -> String {
        let mut text = self.text();
        for block in self.blocks() {
            let piece = if block.is("tool_use") {
                let input = block.input.as_ref().map(schema::spaced);
                format!(
                    "{} {}",
                    block.name.as_deref().unwrap_or_default(),
                    input.unwrap_or_default()
                )
            } else if block.is("tool_result") {
                block
                    .content
                    .as_ref()
                    .map(Content::text)
                    .unwrap_or_default()
            } else {
                continue;
            };
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&piece);
        }
        text
    }

    /// Whether this is a user message holding nothing but tool results.
    fn only_results(&self) -> bool {
        let blocks = self.blocks();
        !blocks.is_empty() && blocks.iter().all(|block| block.is("tool_result"))
    }
}

#[derive(Debug, Deserialize)]
struct ToolDefinition {
    name: String,
    /// Absent or `custom` for client tools; server tools (`web_search_…`) name their version.
    #[serde(rename = "type")]
    kind: Option<String>,
    description: Option<String>,
    input_schema: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ToolChoice {
    #[serde(rename = "type")]
    kind: String,
    name: Option<String>,
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct OutputConfig {
    format: Option<OutputFormat>,
}

#[derive(Debug, Deserialize)]
struct OutputFormat {
    #[serde(rename = "type")]
    kind: String,
    schema: Option<Value>,
}

/// A request read into the simulator's terms.
pub(super) struct Reading<'a> {
    pub model: &'a str,
    pub stream: bool,
    max_tokens: u32,
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
            provider: Provider::Anthropic,
            model: self.model,
            prompt: &self.prompt,
            inputs: self.inputs.iter().map(String::as_str).collect(),
            max_tokens: Some(self.max_tokens),
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

/// Reads and checks `request`; the error is what Anthropic answers to the first problem found.
pub(super) fn read(request: &MessagesRequest) -> Result<Reading<'_>, ApiError> {
    let Some(model) = request.model.as_deref().filter(|model| !model.is_empty()) else {
        return Err(ApiError::invalid("model: Field required"));
    };
    let Some(messages) = request.messages.as_deref() else {
        return Err(ApiError::invalid("messages: Field required"));
    };
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages: at least one message is required",
        ));
    }
    let Some(max_tokens) = request.max_tokens else {
        return Err(ApiError::invalid("max_tokens: Field required"));
    };
    if max_tokens == 0 {
        return Err(ApiError::invalid(
            "max_tokens: Input should be greater than or equal to 1",
        ));
    }
    let toolbox = toolbox(request)?;
    check_tool_pairs(messages)?;
    let mut image_tokens = 0u32;
    for (index, message) in messages.iter().enumerate() {
        image_tokens = image_tokens.saturating_add(images(
            &format!("messages.{index}.content"),
            &message.content,
        )?);
    }
    let output = output(request)?;
    let prompt = messages
        .iter()
        .rev()
        .find(|message| message.role == "user" && !message.content.only_results())
        .map(|message| message.content.text())
        .unwrap_or_default();
    let mut inputs: Vec<String> = request.system.iter().map(Content::text).collect();
    inputs.extend(messages.iter().map(|message| message.content.input_text()));
    inputs.extend(definitions_input(request));
    if let Output::Json(Some(schema)) = output {
        inputs.push(schema::spaced(schema));
    }
    Ok(Reading {
        model,
        stream: request.stream.unwrap_or(false),
        max_tokens,
        prompt,
        inputs,
        toolbox,
        results: trailing_results(messages),
        output,
        image_tokens,
    })
}

fn toolbox(request: &MessagesRequest) -> Result<Toolbox<'_>, ApiError> {
    let definitions = request.tools.as_deref().unwrap_or_default();
    let mut tools = Vec::with_capacity(definitions.len());
    for (index, definition) in definitions.iter().enumerate() {
        let client = definition
            .kind
            .as_deref()
            .is_none_or(|kind| kind == "custom");
        // Server tools run at Anthropic, not in the client: the simulated model leaves them be.
        if !client {
            continue;
        }
        if !is_tool_name(&definition.name) {
            return Err(ApiError::invalid(format!(
                "tools.{index}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
            )));
        }
        let Some(schema) = &definition.input_schema else {
            return Err(ApiError::invalid(format!(
                "tools.{index}.custom.input_schema: Field required"
            )));
        };
        tools.push(Tool {
            name: &definition.name,
            schema: Some(schema),
        });
    }
    let Some(choice) = &request.tool_choice else {
        return Ok(Toolbox {
            tools,
            ..Toolbox::default()
        });
    };
    let forced = match choice.kind.as_str() {
        "auto" => Choice::Auto,
        "none" => Choice::None,
        "any" => Choice::Required,
        "tool" => match &choice.name {
            Some(name) => Choice::Named(name),
            None => return Err(ApiError::invalid("tool_choice.tool.name: Field required")),
        },
        other => {
            return Err(ApiError::invalid(format!(
                "tool_choice: Input tag '{other}' found using 'type' does not match any of the expected tags: 'auto', 'any', 'tool', 'none'"
            )))
        }
    };
    if matches!(forced, Choice::Required | Choice::Named(_)) && definitions.is_empty() {
        return Err(ApiError::invalid(
            "tool_choice may only be specified while providing tools.",
        ));
    }
    if let Choice::Named(name) = forced {
        if !tools.iter().any(|tool| tool.name == name) {
            return Err(ApiError::invalid(format!(
                "tool_choice.name: Tool '{name}' not found in the provided tools."
            )));
        }
    }
    Ok(Toolbox {
        tools,
        choice: forced,
        allowed: Vec::new(),
        parallel: !choice.disable_parallel_tool_use.unwrap_or(false),
    })
}

/// Anthropic's pairing rule: every `tool_use` block is answered by a `tool_result` block in the
/// very next message, and every `tool_result` answers a `tool_use` of the message before it.
fn check_tool_pairs(messages: &[InputMessage]) -> Result<(), ApiError> {
    let mut calls: Vec<&str> = Vec::new();
    for (index, message) in messages.iter().enumerate() {
        let results: Vec<(usize, &str)> = message
            .content
            .blocks()
            .iter()
            .enumerate()
            .filter(|(_, block)| block.is("tool_result"))
            .map(|(position, block)| (position, block.tool_use_id.as_deref().unwrap_or("")))
            .collect();
        let unanswered: Vec<&str> = calls
            .iter()
            .copied()
            .filter(|id| !results.iter().any(|(_, answered)| answered == id))
            .collect();
        if !unanswered.is_empty() {
            return Err(unanswered_error(index - 1, &unanswered));
        }
        if let Some((position, id)) = results.iter().find(|(_, id)| !calls.contains(id)) {
            return Err(ApiError::invalid(format!(
                "messages.{index}.content.{position}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
            )));
        }
        calls = message
            .content
            .blocks()
            .iter()
            .filter(|block| message.role == "assistant" && block.is("tool_use"))
            .map(|block| block.id.as_deref().unwrap_or(""))
            .collect();
    }
    if calls.is_empty() {
        Ok(())
    } else {
        Err(unanswered_error(messages.len() - 1, &calls))
    }
}

fn unanswered_error(index: usize, ids: &[&str]) -> ApiError {
    ApiError::invalid(format!(
        "messages.{index}: `tool_use` ids were found without `tool_result` blocks immediately after: {}. Each `tool_use` block must have a corresponding `tool_result` block in the next message.",
        ids.join(", ")
    ))
}

/// Checks every image in `content` (tool results included) and returns their input tokens.
fn images(path: &str, content: &Content) -> Result<u32, ApiError> {
    let mut tokens = 0u32;
    for (index, block) in content.blocks().iter().enumerate() {
        let path = format!("{path}.{index}");
        if block.is("image") {
            check_image(&format!("{path}.image"), block.source.as_ref())?;
            tokens = tokens.saturating_add(media::ANTHROPIC_IMAGE_TOKENS);
        } else if let Some(inner) = block.content.as_ref().filter(|_| block.is("tool_result")) {
            tokens = tokens.saturating_add(images(&format!("{path}.tool_result.content"), inner)?);
        }
    }
    Ok(tokens)
}

fn check_image(path: &str, source: Option<&ImageSource>) -> Result<(), ApiError> {
    let Some(source) = source else {
        return Err(ApiError::invalid(format!("{path}.source: Field required")));
    };
    let present = |value: &Option<String>| value.as_deref().is_some_and(|v| !v.is_empty());
    match source.kind.as_str() {
        "base64" => {
            let media_type = source.media_type.as_deref().unwrap_or_default();
            if !media::is_supported_image(media_type) {
                return Err(ApiError::invalid(format!(
                    "{path}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"
                )));
            }
            if !source.data.as_deref().is_some_and(media::is_base64_payload) {
                return Err(ApiError::invalid(format!(
                    "{path}.source.base64.data: The image data is not valid base64."
                )));
            }
        }
        "url" if !present(&source.url) => {
            return Err(ApiError::invalid(format!(
                "{path}.source.url.url: Field required"
            )))
        }
        "file" if !present(&source.file_id) => {
            return Err(ApiError::invalid(format!(
                "{path}.source.file.file_id: Field required"
            )))
        }
        "url" | "file" => {}
        other => {
            return Err(ApiError::invalid(format!(
                "{path}.source: Input tag '{other}' found using 'type' does not match any of the expected tags: 'base64', 'url', 'file'"
            )))
        }
    }
    Ok(())
}

/// The tool results of the last message, when it is a user message holding some.
fn trailing_results(messages: &[InputMessage]) -> Vec<ToolResult> {
    let Some(last) = messages.last().filter(|message| message.role == "user") else {
        return Vec::new();
    };
    last.content
        .blocks()
        .iter()
        .filter(|block| block.is("tool_result"))
        .map(|block| ToolResult {
            content: block
                .content
                .as_ref()
                .map(Content::text)
                .unwrap_or_default(),
            is_error: block.is_error.unwrap_or(false),
        })
        .collect()
}

fn output(request: &MessagesRequest) -> Result<Output<'_>, ApiError> {
    let format = request
        .output_config
        .as_ref()
        .and_then(|config| config.format.as_ref())
        .or(request.output_format.as_ref());
    match format {
        None => Ok(Output::Text),
        Some(format) if format.kind == "json_schema" => match &format.schema {
            Some(schema) => Ok(Output::Json(Some(schema))),
            None => Err(ApiError::invalid(
                "output_config.format.schema: Field required",
            )),
        },
        Some(format) => Err(ApiError::invalid(format!(
            "output_config.format: Input tag '{}' found using 'type' does not match any of the expected tags: 'json_schema'",
            format.kind
        ))),
    }
}

/// The client tool definitions as input text: Anthropic puts them in the prompt, so they cost
/// input tokens.
fn definitions_input(request: &MessagesRequest) -> Option<String> {
    let definitions: Vec<String> = request
        .tools
        .iter()
        .flatten()
        .map(|tool| {
            let schema = tool
                .input_schema
                .as_ref()
                .map(schema::spaced)
                .unwrap_or_default();
            format!(
                "{} {} {schema}",
                tool.name,
                tool.description.as_deref().unwrap_or_default()
            )
        })
        .collect();
    (!definitions.is_empty()).then(|| definitions.join("\n"))
}

fn is_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn read_body(body: Value) -> Result<Vec<ToolResult>, String> {
        let request: MessagesRequest = serde_json::from_value(body).expect("a request body");
        read(&request)
            .map(|reading| reading.results)
            .map_err(|error| error.detail.message)
    }

    #[test]
    fn tool_results_must_answer_the_previous_messages_calls() {
        let call = json!({"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]});
        let result = |id: &str| {
            json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": id, "content": "sunny"}]})
        };
        let body = |messages: Value| json!({"model": "m", "max_tokens": 9, "messages": messages});
        let answered = read_body(body(json!([{"role": "user", "content": "hi"}, call,
                                             result("toolu_1")])));
        assert_eq!(
            answered,
            Ok(vec![ToolResult {
                content: "sunny".to_owned(),
                is_error: false
            }])
        );
        let stray = read_body(body(json!([{"role": "user", "content": "hi"}, call,
                                          result("toolu_2")])));
        assert!(stray.is_err_and(|message| message.starts_with("messages.1: `tool_use` ids")));
        let orphan = read_body(body(json!([result("toolu_1")])));
        assert!(orphan.is_err_and(|message| message.contains("unexpected `tool_use_id`")));
    }

    #[test]
    fn images_are_checked_in_messages_and_tool_results() {
        let with_image = |source: Value| {
            json!({"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": [
                {"type": "image", "source": source}, {"type": "text", "text": "what?"}]}]})
        };
        let png = json!({"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="});
        assert!(read_body(with_image(png)).is_ok());
        let url = json!({"type": "url", "url": "https://example.com/cat.jpg"});
        assert!(read_body(with_image(url)).is_ok());
        let bmp = json!({"type": "base64", "media_type": "image/bmp", "data": "iVBORw0KGgo="});
        assert!(read_body(with_image(bmp))
            .is_err_and(|m| m.starts_with("messages.0.content.0.image.source.base64.media_type")));
        let garbage = json!({"type": "base64", "media_type": "image/png", "data": "%%%"});
        assert!(read_body(with_image(garbage)).is_err());
    }
}

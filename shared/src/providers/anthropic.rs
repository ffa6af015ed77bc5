//! Anthropic Messages: <https://docs.anthropic.com/en/api/messages>.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::sse::SseEvent;
use super::{
    ChatProvider, ChatRequest, ChatResponse, ChatStream, FinishReason, ImageSource, Part,
    ProviderError, ResponseFormat, Speaker, StreamEvent, StreamParser, ToolCall, ToolCallDelta,
    ToolChoice, Turn, Upstream, Usage,
};
use crate::catalog::ProviderKind;

/// The API version the wire types below follow.
const API_VERSION: &str = "2023-06-01";

#[derive(Debug)]
pub struct Anthropic {
    upstream: Upstream,
}

impl Anthropic {
    pub(crate) fn new(upstream: Upstream) -> Anthropic {
        Anthropic { upstream }
    }
}

#[derive(Debug, Serialize)]
struct RequestBody<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'a str>,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<serde_json::Value>,
    stream: bool,
}

/// The tool a JSON answer is asked through: Anthropic's models have no JSON mode, so the answer
/// is forced to be a call of this tool, whose input schema is the one asked for, and the call's
/// input becomes the answer's text.
const JSON_TOOL: &str = "json_answer";

/// <https://docs.anthropic.com/en/api/messages>: `metadata.user_id` identifies the end user.
#[derive(Debug, Serialize)]
struct Metadata<'a> {
    user_id: &'a str,
}

#[derive(Debug, Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: WireContent<'a>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum WireContent<'a> {
    Text(&'a str),
    Blocks(Vec<serde_json::Value>),
}

#[derive(Debug, Deserialize)]
struct ResponseBody {
    content: Vec<ContentBlock>,
    stop_reason: Option<String>,
    usage: WireUsage,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ContentBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: serde_json::Value,
    },
    /// Thinking and block types added later carry nothing for us.
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct WireUsage {
    input_tokens: u64,
    output_tokens: u64,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Usage {
        // Cached prompt tokens are reported apart from `input_tokens`; they were still read.
        Usage {
            input_tokens: u.input_tokens
                + u.cache_creation_input_tokens.unwrap_or(0)
                + u.cache_read_input_tokens.unwrap_or(0),
            output_tokens: u.output_tokens,
        }
    }
}

/// The stream's events: <https://docs.anthropic.com/en/docs/build-with-claude/streaming>.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireEvent {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: u32,
        content_block: StartBlock,
    },
    ContentBlockDelta {
        index: u32,
        delta: BlockDelta,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        usage: Option<DeltaUsage>,
    },
    MessageStop,
    Error {
        error: WireError,
    },
    /// `ping`, and types added later.
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct StartMessage {
    usage: WireUsage,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartBlock {
    ToolUse {
        id: String,
        name: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct MessageDeltaBody {
    stop_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DeltaUsage {
    output_tokens: u64,
}

#[derive(Debug, Deserialize)]
struct WireError {
    message: String,
}

/// Input tokens come with `message_start`, the output count (cumulative) with `message_delta`.
/// Tool calls are content blocks: started with their id and name, their input streamed as JSON
/// fragments.
#[derive(Debug, Default)]
struct Parser {
    usage: Usage,
    done: bool,
    /// The answer is JSON asked through [`JSON_TOOL`]: its input is the text.
    json: bool,
    /// The open tool-use blocks, by content-block index: the call's index among the answer's
    /// calls, and whether any of its input arrived yet.
    calls: Vec<(u32, u32, bool)>,
    calls_seen: u32,
}

impl StreamParser for Parser {
    fn parse(&mut self, event: SseEvent) -> Result<Vec<StreamEvent>, String> {
        let wire: WireEvent =
            serde_json::from_str(&event.data).map_err(|e| format!("unreadable event: {e}"))?;
        Ok(match wire {
            WireEvent::MessageStart { message } => {
                self.usage = message.usage.into();
                vec![StreamEvent::Usage(self.usage)]
            }
            WireEvent::ContentBlockStart {
                index,
                content_block,
            } => self.block_started(index, content_block),
            WireEvent::ContentBlockDelta { index, delta } => self.block_delta(index, delta),
            WireEvent::ContentBlockStop { index } => self.block_stopped(index),
            WireEvent::Other => Vec::new(),
            WireEvent::MessageDelta { delta, usage } => {
                let mut events = Vec::new();
                if let Some(usage) = usage {
                    self.usage.output_tokens = usage.output_tokens;
                    events.push(StreamEvent::Usage(self.usage));
                }
                if let Some(reason) = delta.stop_reason {
                    events.push(StreamEvent::Finish(finish_reason(Some(&reason), self.json)));
                }
                events
            }
            WireEvent::MessageStop => {
                self.done = true;
                Vec::new()
            }
            WireEvent::Error { error } => return Err(error.message),
        })
    }

    fn finished(&self) -> bool {
        self.done
    }
}

impl Parser {
    fn block_started(&mut self, index: u32, block: StartBlock) -> Vec<StreamEvent> {
        let StartBlock::ToolUse { id, name } = block else {
            return Vec::new();
        };
        let call = self.calls_seen;
        self.calls_seen += 1;
        self.calls.push((index, call, false));
        if self.json {
            return Vec::new();
        }
        vec![StreamEvent::ToolCall(ToolCallDelta {
            index: call,
            id: Some(id),
            name: Some(name),
            arguments: String::new(),
            signature: None,
        })]
    }

    fn block_delta(&mut self, index: u32, delta: BlockDelta) -> Vec<StreamEvent> {
        let fragment = match delta {
            BlockDelta::TextDelta { text } => return vec![StreamEvent::Delta(text)],
            BlockDelta::InputJsonDelta { partial_json } => partial_json,
            BlockDelta::Other => return Vec::new(),
        };
        let Some(open) = self.calls.iter_mut().find(|(block, ..)| *block == index) else {
            return Vec::new();
        };
        if fragment.is_empty() {
            return Vec::new();
        }
        open.2 = true;
        if self.json {
            return vec![StreamEvent::Delta(fragment)];
        }
        vec![StreamEvent::ToolCall(ToolCallDelta {
            index: open.1,
            id: None,
            name: None,
            arguments: fragment,
            signature: None,
        })]
    }

    /// A call whose input never came (a tool without parameters) gets `{}`, as the whole answer
    /// would have said: clients parse the arguments.
    fn block_stopped(&mut self, index: u32) -> Vec<StreamEvent> {
        let Some(at) = self.calls.iter().position(|(block, ..)| *block == index) else {
            return Vec::new();
        };
        let (_, call, any_input) = self.calls.remove(at);
        if any_input {
            return Vec::new();
        }
        if self.json {
            return vec![StreamEvent::Delta("{}".into())];
        }
        vec![StreamEvent::ToolCall(ToolCallDelta {
            index: call,
            id: None,
            name: None,
            arguments: "{}".into(),
            signature: None,
        })]
    }
}

/// `json`: the answer was asked as JSON through [`JSON_TOOL`], so calling it is how it stops.
fn finish_reason(raw: Option<&str>, json: bool) -> FinishReason {
    match raw {
        Some("end_turn") | Some("stop_sequence") | None => FinishReason::Stop,
        Some("tool_use") if json => FinishReason::Stop,
        Some("max_tokens") => FinishReason::Length,
        Some("tool_use") => FinishReason::ToolCalls,
        Some("refusal") => FinishReason::ContentFilter,
        Some(other) => FinishReason::Other(other.to_ascii_lowercase()),
    }
}

/// `{"type": "error", "error": {"type": "…", "message": "…"}}`
fn error_message(body: &serde_json::Value) -> Option<String> {
    body.pointer("/error/message")?.as_str().map(str::to_owned)
}

fn request_body(request: &ChatRequest) -> RequestBody<'_> {
    let (mut tools, mut tool_choice) = match json_tool(&request.format) {
        Some(tool) => (
            vec![tool],
            Some(serde_json::json!({"type": "tool", "name": JSON_TOOL})),
        ),
        None => (
            request.tooling.tools.iter().map(wire_tool).collect(),
            wire_tool_choice(&request.tooling),
        ),
    };
    // Anthropic refuses a conversation with calls in it unless their tools are defined: tools
    // called earlier and no longer offered are defined again, to be called no more.
    let mut missing: Vec<&str> = called_tools(request)
        .filter(|name| !request.tooling.tools.iter().any(|t| t.name == *name))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if !missing.is_empty() && tools.is_empty() {
        tool_choice = Some(serde_json::json!({"type": "none"}));
    }
    tools.extend(missing.into_iter().map(|name| {
        serde_json::json!({
            "name": name,
            "description": "Called earlier in this conversation; not offered now.",
            "input_schema": {"type": "object"},
        })
    }));
    RequestBody {
        model: &request.upstream_model,
        max_tokens: request.max_tokens,
        system: request.system.as_deref(),
        messages: request.turns.iter().map(wire_message).collect(),
        // Anthropic's range is 0–1, the gateway's is OpenAI's 0–2: values above 1 are clamped so
        // the common 0–1 settings mean the same everywhere.
        temperature: request.temperature.map(|t| t.min(1.0)),
        top_p: request.sampling.top_p,
        stop_sequences: &request.sampling.stop,
        metadata: request
            .sampling
            .user
            .as_deref()
            .map(|user_id| Metadata { user_id }),
        tools,
        tool_choice,
        stream: false,
    }
}

/// The names of the tools the conversation's calls called.
fn called_tools(request: &ChatRequest) -> impl Iterator<Item = &str> {
    request
        .turns
        .iter()
        .flat_map(|turn| &turn.parts)
        .filter_map(|part| match part {
            Part::ToolCall(call) => Some(call.name.as_str()),
            _ => None,
        })
}

fn wire_message(turn: &Turn) -> WireMessage<'_> {
    let role = match turn.speaker {
        Speaker::User => "user",
        Speaker::Assistant => "assistant",
    };
    if let Some(text) = turn.only_text() {
        return WireMessage {
            role,
            content: WireContent::Text(text),
        };
    }
    let blocks = turn.parts.iter().map(|part| match part {
        Part::Text(text) => serde_json::json!({"type": "text", "text": text}),
        Part::Image(image) => match &image.source {
            ImageSource::Inline { media_type, data } => serde_json::json!({
                "type": "image",
                "source": {"type": "base64", "media_type": media_type, "data": data},
            }),
            ImageSource::Url(url) => serde_json::json!({
                "type": "image",
                "source": {"type": "url", "url": url},
            }),
        },
        Part::ToolCall(call) => serde_json::json!({
            "type": "tool_use",
            "id": call_id(&call.id),
            "name": call.name,
            "input": arguments_object(&call.arguments),
        }),
        Part::ToolResult(result) => serde_json::json!({
            "type": "tool_result",
            "tool_use_id": call_id(&result.call_id),
            "content": result.content,
        }),
    });
    WireMessage {
        role,
        content: WireContent::Blocks(blocks.collect()),
    }
}

/// A call id as Anthropic accepts them (`^[a-zA-Z0-9_-]+$`): ids made by other providers or
/// clients have other characters replaced, the same way in the call and in its result.
fn call_id(id: &str) -> String {
    let cleaned: String = id
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' => c,
            _ => '_',
        })
        .collect();
    if cleaned.is_empty() {
        "call".into()
    } else {
        cleaned
    }
}

/// A call's arguments as the object Anthropic takes; arguments that are not a JSON object (a
/// model's mistake sent back) become an empty one rather than failing the conversation.
fn arguments_object(arguments: &str) -> serde_json::Value {
    match serde_json::from_str::<serde_json::Value>(arguments) {
        Ok(value @ serde_json::Value::Object(_)) => value,
        _ => serde_json::json!({}),
    }
}

fn wire_tool(tool: &super::Tool) -> serde_json::Value {
    let mut wire = serde_json::json!({"name": tool.name, "input_schema": tool.parameters});
    if let Some(description) = &tool.description {
        wire["description"] = description.as_str().into();
    }
    wire
}

/// `auto|any|tool|none`, with `disable_parallel_tool_use` for at most one call.
fn wire_tool_choice(tooling: &super::Tooling) -> Option<serde_json::Value> {
    if !tooling.offered() {
        return None;
    }
    let single = tooling.parallel == Some(false);
    let mut choice = match tooling.choice.as_ref() {
        None if !single => return None,
        None | Some(ToolChoice::Auto) => serde_json::json!({"type": "auto"}),
        Some(ToolChoice::None) => return Some(serde_json::json!({"type": "none"})),
        Some(ToolChoice::Required) => serde_json::json!({"type": "any"}),
        Some(ToolChoice::Named(name)) => serde_json::json!({"type": "tool", "name": name}),
    };
    if single {
        choice["disable_parallel_tool_use"] = true.into();
    }
    Some(choice)
}

/// The forced tool a JSON answer is asked through, if one is asked for.
fn json_tool(format: &ResponseFormat) -> Option<serde_json::Value> {
    let (schema, description) = match format {
        ResponseFormat::Text => return None,
        ResponseFormat::JsonObject => (serde_json::json!({"type": "object"}), None),
        ResponseFormat::JsonSchema {
            schema,
            description,
            ..
        } => (schema.clone(), description.clone()),
    };
    let description =
        description.unwrap_or_else(|| "Give the answer as this tool's input.".to_owned());
    Some(serde_json::json!({
        "name": JSON_TOOL,
        "description": description,
        "input_schema": schema,
    }))
}

/// A whole answer: its text, or the JSON tool's input when JSON was asked for, and its calls.
fn answer(body: ResponseBody, json: bool) -> ChatResponse {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in body.content {
        match block {
            ContentBlock::Text { text: more } if !json => text.push_str(&more),
            ContentBlock::ToolUse { input, .. } if json => text = input.to_string(),
            ContentBlock::ToolUse { id, name, input } => tool_calls.push(ToolCall {
                id,
                name,
                arguments: input.to_string(),
                signature: None,
            }),
            ContentBlock::Text { .. } | ContentBlock::Other => {}
        }
    }
    ChatResponse {
        text,
        tool_calls,
        finish_reason: finish_reason(body.stop_reason.as_deref(), json),
        usage: body.usage.into(),
    }
}

#[async_trait]
impl ChatProvider for Anthropic {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Anthropic
    }

    async fn complete(&self, request: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let up = &self.upstream;
        let key = up.key()?;
        let http = up
            .http
            .post(up.url("/v1/messages"))
            .header("x-api-key", key.expose())
            .header("anthropic-version", API_VERSION)
            .json(&request_body(request));
        let body: ResponseBody = up.send_json(http, error_message).await?;
        Ok(answer(body, request.format.is_json()))
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, ProviderError> {
        let up = &self.upstream;
        let key = up.key()?;
        let mut body = request_body(request);
        body.stream = true;
        let http = up
            .http
            .post(up.url("/v1/messages"))
            .header("x-api-key", key.expose())
            .header("anthropic-version", API_VERSION)
            .json(&body);
        let parser = Parser {
            json: request.format.is_json(),
            ..Parser::default()
        };
        up.open_stream(http, error_message, parser).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_options_take_anthropics_names() {
        let request = crate::providers::sampled("claude-3-haiku-20240307", None);
        let json = serde_json::to_value(request_body(&request)).expect("json");
        assert_eq!(json["top_p"], 0.5);
        assert_eq!(json["stop_sequences"], serde_json::json!(["END"]));
        assert_eq!(json["metadata"]["user_id"], "u-1");
        assert!(json.get("stop").is_none() && json.get("seed").is_none());
    }

    #[test]
    fn system_prompt_is_top_level_and_temperature_clamped() {
        let request = crate::providers::brief_hi("claude-3-haiku-20240307", Some(1.5));
        let json = serde_json::to_value(request_body(&request)).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "model": "claude-3-haiku-20240307",
                "max_tokens": 100,
                "system": "Be brief.",
                "messages": [{"role": "user", "content": "Hi"}],
                "temperature": 1.0,
                "stream": false
            })
        );
    }

    #[test]
    fn tools_images_and_results_become_blocks() {
        let request = crate::providers::tool_round_trip("claude-3-haiku-20240307");
        let json = serde_json::to_value(request_body(&request)).expect("json");
        assert_eq!(
            json["messages"],
            serde_json::json!([
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"}
                ]}
            ])
        );
        assert_eq!(
            json["tools"][0]["input_schema"]["required"],
            serde_json::json!(["city"])
        );
        assert_eq!(
            json["tool_choice"],
            serde_json::json!({"type": "tool", "name": "weather", "disable_parallel_tool_use": true})
        );
    }

    #[test]
    fn tools_called_earlier_are_defined_again_and_not_offered() {
        let mut request = crate::providers::tool_round_trip("claude-3-haiku-20240307");
        request.tooling = Default::default();
        let json = serde_json::to_value(request_body(&request)).expect("json");
        assert_eq!(json["tools"][0]["name"], "weather");
        assert_eq!(json["tools"].as_array().map(Vec::len), Some(1));
        assert_eq!(json["tool_choice"], serde_json::json!({"type": "none"}));
    }

    #[test]
    fn json_answers_are_a_forced_tool_whose_input_is_the_text() {
        let mut request = crate::providers::brief_hi("claude-3-haiku-20240307", None);
        request.format = ResponseFormat::JsonSchema {
            name: "person".into(),
            description: None,
            schema: serde_json::json!({"type": "object", "required": ["name"]}),
            strict: None,
        };
        let json = serde_json::to_value(request_body(&request)).expect("json");
        assert_eq!(json["tools"][0]["name"], JSON_TOOL);
        assert_eq!(
            json["tools"][0]["input_schema"]["required"],
            serde_json::json!(["name"])
        );
        assert_eq!(
            json["tool_choice"],
            serde_json::json!({"type": "tool", "name": JSON_TOOL})
        );
        let body: ResponseBody = serde_json::from_value(serde_json::json!({
            "content": [{"type": "tool_use", "id": "toolu_1", "name": JSON_TOOL, "input": {"name": "Ada"}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 3, "output_tokens": 5}
        }))
        .expect("parses");
        let answer = answer(body, true);
        assert_eq!(answer.text, r#"{"name":"Ada"}"#);
        assert!(answer.tool_calls.is_empty());
        assert_eq!(answer.finish_reason, FinishReason::Stop);
    }

    fn event(data: serde_json::Value) -> SseEvent {
        SseEvent {
            event: None,
            data: data.to_string(),
        }
    }

    #[test]
    fn streamed_tool_use_becomes_call_pieces() {
        let mut parser = Parser::default();
        let mut events = Vec::new();
        for data in [
            serde_json::json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            serde_json::json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}}),
            serde_json::json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
            serde_json::json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}}),
            serde_json::json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
            serde_json::json!({"type": "content_block_stop", "index": 1}),
            serde_json::json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}}}),
            serde_json::json!({"type": "content_block_stop", "index": 2}),
            serde_json::json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
        ] {
            events.extend(parser.parse(event(data)).expect("parses"));
        }
        let calls: Vec<(u32, Option<&str>, &str)> = events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::ToolCall(c) => Some((c.index, c.id.as_deref(), c.arguments.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(
            calls,
            [
                (0, Some("toolu_1"), ""),
                (0, None, "{\"city\": "),
                (0, None, "\"Paris\"}"),
                (1, Some("toolu_2"), ""),
                (1, None, "{}")
            ]
        );
        assert_eq!(
            events.last(),
            Some(&StreamEvent::Finish(FinishReason::ToolCalls))
        );
    }

    #[test]
    fn unknown_content_blocks_are_skipped() {
        let body: ResponseBody = serde_json::from_value(serde_json::json!({
            "content": [{"type": "thinking", "thinking": "…"}, {"type": "text", "text": "Hi"}],
            "stop_reason": "max_tokens",
            "usage": {"input_tokens": 3, "output_tokens": 1, "cache_read_input_tokens": 2}
        }))
        .expect("parses");
        assert_eq!(body.content.len(), 2);
        assert_eq!(Usage::from(body.usage).input_tokens, 5);
        assert_eq!(
            finish_reason(body.stop_reason.as_deref(), false),
            FinishReason::Length
        );
    }
}

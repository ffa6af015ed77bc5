//! OpenAI Chat Completions: <https://platform.openai.com/docs/api-reference/chat/create>.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::sse::SseEvent;
use super::{
    ChatProvider, ChatRequest, ChatResponse, ChatStream, FinishReason, Image, ImageSource, Part,
    ProviderError, ProviderErrorKind, ResponseFormat, Speaker, StreamEvent, StreamParser, ToolCall,
    ToolCallDelta, ToolChoice, Turn, Upstream, Usage,
};
use crate::catalog::ProviderKind;

#[derive(Debug)]
pub struct OpenAi {
    upstream: Upstream,
}

impl OpenAi {
    pub(crate) fn new(upstream: Upstream) -> OpenAi {
        OpenAi { upstream }
    }
}

#[derive(Debug, Serialize)]
struct RequestBody<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    max_completion_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<serde_json::Value>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Debug, Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// A `chat.completion.chunk`.
#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: ChunkDelta,
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ChunkDelta {
    content: Option<String>,
    refusal: Option<String>,
    tool_calls: Option<Vec<DeltaCall>>,
}

/// A piece of a streamed tool call: id and name on the first piece of each call.
#[derive(Debug, Deserialize)]
struct DeltaCall {
    index: u32,
    id: Option<String>,
    function: Option<DeltaFunction>,
}

#[derive(Debug, Deserialize)]
struct DeltaFunction {
    name: Option<String>,
    arguments: Option<String>,
}

/// Chunks until `data: [DONE]`; usage arrives in the last chunk, with no choices.
#[derive(Debug, Default)]
struct Parser {
    done: bool,
}

impl StreamParser for Parser {
    fn parse(&mut self, event: SseEvent) -> Result<Vec<StreamEvent>, String> {
        if event.data.trim() == "[DONE]" {
            self.done = true;
            return Ok(Vec::new());
        }
        let value: serde_json::Value =
            serde_json::from_str(&event.data).map_err(|e| format!("unreadable chunk: {e}"))?;
        if let Some(message) = error_message(&value) {
            return Err(message);
        }
        let chunk: Chunk =
            serde_json::from_value(value).map_err(|e| format!("unreadable chunk: {e}"))?;
        let mut events = Vec::new();
        for choice in chunk.choices.into_iter().take(1) {
            if let Some(text) = choice.delta.content.or(choice.delta.refusal) {
                if !text.is_empty() {
                    events.push(StreamEvent::Delta(text));
                }
            }
            for call in choice.delta.tool_calls.unwrap_or_default() {
                let (name, arguments) = call
                    .function
                    .map_or((None, None), |f| (f.name, f.arguments));
                events.push(StreamEvent::ToolCall(ToolCallDelta {
                    index: call.index,
                    id: call.id,
                    name,
                    arguments: arguments.unwrap_or_default(),
                    signature: None,
                }));
            }
            if let Some(reason) = choice.finish_reason {
                events.push(StreamEvent::Finish(finish_reason(Some(&reason))));
            }
        }
        if let Some(usage) = chunk.usage {
            events.push(StreamEvent::Usage(usage.into()));
        }
        Ok(events)
    }

    fn finished(&self) -> bool {
        self.done
    }
}

#[derive(Debug, Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    /// Absent on an assistant message that only calls tools.
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<WireContent<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum WireContent<'a> {
    Text(&'a str),
    Joined(String),
    Parts(Vec<serde_json::Value>),
}

impl<'a> WireMessage<'a> {
    fn new(role: &'static str, content: WireContent<'a>) -> WireMessage<'a> {
        WireMessage {
            role,
            content: Some(content),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

#[derive(Debug, Deserialize)]
struct ResponseBody {
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    message: ChoiceMessage,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChoiceMessage {
    content: Option<String>,
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireCall>,
}

#[derive(Debug, Deserialize)]
struct WireCall {
    id: String,
    function: WireFunction,
}

#[derive(Debug, Deserialize)]
struct WireFunction {
    name: String,
    arguments: String,
}

#[derive(Debug, Deserialize)]
struct WireUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Usage {
        Usage {
            input_tokens: u.prompt_tokens,
            output_tokens: u.completion_tokens,
        }
    }
}

fn finish_reason(raw: Option<&str>) -> FinishReason {
    match raw {
        Some("stop") | None => FinishReason::Stop,
        Some("length") => FinishReason::Length,
        Some("content_filter") => FinishReason::ContentFilter,
        Some("tool_calls") | Some("function_call") => FinishReason::ToolCalls,
        Some(other) => FinishReason::Other(other.to_ascii_lowercase()),
    }
}

/// `{"error": {"message": "…", "type": "…"}}`
fn error_message(body: &serde_json::Value) -> Option<String> {
    body.pointer("/error/message")?.as_str().map(str::to_owned)
}

fn request_body(request: &ChatRequest) -> RequestBody<'_> {
    let mut messages = Vec::with_capacity(request.turns.len() + 1);
    if let Some(system) = &request.system {
        messages.push(WireMessage::new("system", WireContent::Text(system)));
    }
    for turn in &request.turns {
        push_turn(&mut messages, turn);
    }
    let tooling = &request.tooling;
    RequestBody {
        model: &request.upstream_model,
        messages,
        max_completion_tokens: request.max_tokens,
        temperature: request.temperature,
        top_p: request.sampling.top_p,
        stop: &request.sampling.stop,
        seed: request.sampling.seed,
        user: request.sampling.user.as_deref(),
        tools: tooling.tools.iter().map(wire_tool).collect(),
        // OpenAI refuses a tool choice without tools.
        tool_choice: tooling
            .choice
            .as_ref()
            .filter(|_| tooling.offered())
            .map(wire_tool_choice),
        parallel_tool_calls: tooling.parallel.filter(|_| tooling.offered()),
        response_format: wire_format(&request.format),
        stream: false,
        stream_options: None,
    }
}

/// A turn as OpenAI's messages: tool results each a `tool` message, the rest one message.
fn push_turn<'a>(messages: &mut Vec<WireMessage<'a>>, turn: &'a Turn) {
    if let Some(text) = turn.only_text() {
        let role = match turn.speaker {
            Speaker::User => "user",
            Speaker::Assistant => "assistant",
        };
        return messages.push(WireMessage::new(role, WireContent::Text(text)));
    }
    if turn.speaker == Speaker::Assistant {
        let text = turn.joined_text();
        let calls = turn.parts.iter().filter_map(|part| match part {
            Part::ToolCall(call) => Some(wire_call(call)),
            _ => None,
        });
        return messages.push(WireMessage {
            role: "assistant",
            content: (!text.is_empty()).then_some(WireContent::Joined(text)),
            tool_calls: calls.collect(),
            tool_call_id: None,
        });
    }
    let mut parts = Vec::new();
    for part in &turn.parts {
        match part {
            Part::ToolResult(result) => messages.push(WireMessage {
                tool_call_id: Some(call_id(&result.call_id)),
                ..WireMessage::new("tool", WireContent::Text(&result.content))
            }),
            Part::Text(text) => parts.push(text_part(text)),
            Part::Image(image) => parts.push(image_part(image)),
            Part::ToolCall(_) => {}
        }
    }
    if !parts.is_empty() {
        messages.push(WireMessage::new("user", WireContent::Parts(parts)));
    }
}

fn text_part(text: &str) -> serde_json::Value {
    serde_json::json!({"type": "text", "text": text})
}

fn image_part(image: &Image) -> serde_json::Value {
    let url = match &image.source {
        ImageSource::Inline { media_type, data } => format!("data:{media_type};base64,{data}"),
        ImageSource::Url(url) => url.clone(),
    };
    let mut part = serde_json::json!({"type": "image_url", "image_url": {"url": url}});
    if let Some(detail) = &image.detail {
        part["image_url"]["detail"] = detail.as_str().into();
    }
    part
}

/// The longest tool-call id OpenAI accepts.
const MAX_CALL_ID: usize = 40;

/// A call id as OpenAI accepts it: ids made elsewhere that are longer than it allows are replaced
/// by a digest of themselves, the same in the call and in its result.
fn call_id(id: &str) -> std::borrow::Cow<'_, str> {
    if id.len() <= MAX_CALL_ID {
        return id.into();
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(id.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("call_{hex}").into()
}

fn wire_call(call: &ToolCall) -> serde_json::Value {
    serde_json::json!({
        "id": call_id(&call.id),
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    })
}

fn wire_tool(tool: &super::Tool) -> serde_json::Value {
    let mut function = serde_json::json!({"name": tool.name, "parameters": tool.parameters});
    if let Some(description) = &tool.description {
        function["description"] = description.as_str().into();
    }
    if let Some(strict) = tool.strict {
        function["strict"] = strict.into();
    }
    serde_json::json!({"type": "function", "function": function})
}

fn wire_tool_choice(choice: &ToolChoice) -> serde_json::Value {
    match choice {
        ToolChoice::Auto => "auto".into(),
        ToolChoice::None => "none".into(),
        ToolChoice::Required => "required".into(),
        ToolChoice::Named(name) => {
            serde_json::json!({"type": "function", "function": {"name": name}})
        }
    }
}

fn wire_format(format: &ResponseFormat) -> Option<serde_json::Value> {
    match format {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => Some(serde_json::json!({"type": "json_object"})),
        ResponseFormat::JsonSchema {
            name,
            description,
            schema,
            strict,
        } => {
            let mut spec = serde_json::json!({"name": name, "schema": schema});
            if let Some(description) = description {
                spec["description"] = description.as_str().into();
            }
            if let Some(strict) = strict {
                spec["strict"] = (*strict).into();
            }
            Some(serde_json::json!({"type": "json_schema", "json_schema": spec}))
        }
    }
}

#[async_trait]
impl ChatProvider for OpenAi {
    fn kind(&self) -> ProviderKind {
        ProviderKind::OpenAi
    }

    async fn complete(&self, request: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let up = &self.upstream;
        let key = up.key()?;
        let http = up
            .http
            .post(up.url("/v1/chat/completions"))
            .bearer_auth(key.expose())
            .json(&request_body(request));
        let body: ResponseBody = up.send_json(http, error_message).await?;
        let usage = body.usage.ok_or_else(|| {
            up.error(ProviderErrorKind::InvalidResponse(
                "the response has no usage".into(),
            ))
        })?;
        let choice = body.choices.into_iter().next().ok_or_else(|| {
            up.error(ProviderErrorKind::InvalidResponse(
                "the response has no choices".into(),
            ))
        })?;
        let reason = finish_reason(choice.finish_reason.as_deref());
        let ChoiceMessage {
            content,
            refusal,
            tool_calls,
        } = choice.message;
        let text = match (content, refusal) {
            (Some(text), _) => text,
            (None, Some(refusal)) => refusal,
            (None, None) => String::new(),
        };
        let tool_calls = tool_calls
            .into_iter()
            .map(|call| ToolCall {
                id: call.id,
                name: call.function.name,
                arguments: call.function.arguments,
                signature: None,
            })
            .collect();
        Ok(ChatResponse {
            text,
            tool_calls,
            finish_reason: reason,
            usage: usage.into(),
        })
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, ProviderError> {
        let up = &self.upstream;
        let key = up.key()?;
        let mut body = request_body(request);
        body.stream = true;
        body.stream_options = Some(StreamOptions {
            include_usage: true,
        });
        let http = up
            .http
            .post(up.url("/v1/chat/completions"))
            .bearer_auth(key.expose())
            .json(&body);
        up.open_stream(http, error_message, Parser::default()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_options_keep_openais_names() {
        let request = crate::providers::sampled("gpt-4o-mini", Some(7));
        let json = serde_json::to_value(request_body(&request)).expect("json");
        assert_eq!(json["top_p"], 0.5);
        assert_eq!(json["stop"], serde_json::json!(["END"]));
        assert_eq!(json["seed"], 7);
        assert_eq!(json["user"], "u-1");
    }

    #[test]
    fn system_prompt_leads_the_messages() {
        let request = crate::providers::brief_hi("gpt-4o-mini", None);
        let json = serde_json::to_value(request_body(&request)).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"}
                ],
                "max_completion_tokens": 100,
                "stream": false
            })
        );
    }

    #[test]
    fn tools_images_and_results_keep_openais_shapes() {
        let mut request = crate::providers::tool_round_trip("gpt-4o-mini");
        request.format = ResponseFormat::JsonObject;
        let json = serde_json::to_value(request_body(&request)).expect("json");
        assert_eq!(
            json["messages"],
            serde_json::json!([
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K", "detail": "low"}}
                ]},
                {"role": "assistant", "tool_calls": [
                    {"id": "call 1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "content": "18C", "tool_call_id": "call 1"}
            ])
        );
        assert_eq!(json["tools"][0]["function"]["strict"], true);
        assert_eq!(
            json["tool_choice"],
            serde_json::json!({"type": "function", "function": {"name": "weather"}})
        );
        assert_eq!(json["parallel_tool_calls"], false);
        assert_eq!(
            json["response_format"],
            serde_json::json!({"type": "json_object"})
        );
    }

    #[test]
    fn ids_longer_than_openai_takes_are_replaced_alike_in_call_and_result() {
        let mut request = crate::providers::tool_round_trip("gpt-4o-mini");
        let long = "x".repeat(41);
        for part in request.turns.iter_mut().flat_map(|t| &mut t.parts) {
            match part {
                Part::ToolCall(call) => call.id = long.clone(),
                Part::ToolResult(result) => result.call_id = long.clone(),
                _ => {}
            }
        }
        let json = serde_json::to_value(request_body(&request)).expect("json");
        let id = &json["messages"][2]["tool_calls"][0]["id"];
        assert_eq!(id, &json["messages"][3]["tool_call_id"]);
        assert!(id
            .as_str()
            .is_some_and(|id| id.starts_with("call_") && id.len() <= 40));
    }

    #[test]
    fn streamed_tool_calls_keep_their_index() {
        let mut parser = Parser::default();
        let events = parser
            .parse(SseEvent {
                event: None,
                data: r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"time","arguments":""}}]},"finish_reason":null}]}"#.into(),
            })
            .expect("parses");
        assert_eq!(
            events,
            [StreamEvent::ToolCall(ToolCallDelta {
                index: 1,
                id: Some("call_b".into()),
                name: Some("time".into()),
                arguments: String::new(),
                signature: None,
            })]
        );
    }

    #[test]
    fn finish_reasons_map() {
        assert_eq!(finish_reason(Some("length")), FinishReason::Length);
        assert_eq!(
            finish_reason(Some("content_filter")),
            FinishReason::ContentFilter
        );
        assert_eq!(
            finish_reason(Some("new_reason")),
            FinishReason::Other("new_reason".into())
        );
    }
}

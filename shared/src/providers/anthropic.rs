//! Anthropic Messages: <https://docs.anthropic.com/en/api/messages>.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::sse::SseEvent;
use super::{
    ChatProvider, ChatRequest, ChatResponse, ChatStream, FinishReason, ProviderError, Speaker,
    StreamEvent, StreamParser, Upstream, Usage,
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
    stream: bool,
}

/// <https://docs.anthropic.com/en/api/messages>: `metadata.user_id` identifies the end user.
#[derive(Debug, Serialize)]
struct Metadata<'a> {
    user_id: &'a str,
}

#[derive(Debug, Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: &'a str,
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
    /// Tool use, thinking and block types added later carry no text for us.
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
    ContentBlockDelta {
        delta: BlockDelta,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        usage: Option<DeltaUsage>,
    },
    MessageStop,
    Error {
        error: WireError,
    },
    /// `ping`, `content_block_start`, `content_block_stop`, and types added later.
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
#[derive(Debug, Default)]
struct Parser {
    usage: Usage,
    done: bool,
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
            WireEvent::ContentBlockDelta {
                delta: BlockDelta::TextDelta { text },
            } => vec![StreamEvent::Delta(text)],
            WireEvent::ContentBlockDelta { .. } | WireEvent::Other => Vec::new(),
            WireEvent::MessageDelta { delta, usage } => {
                let mut events = Vec::new();
                if let Some(usage) = usage {
                    self.usage.output_tokens = usage.output_tokens;
                    events.push(StreamEvent::Usage(self.usage));
                }
                if let Some(reason) = delta.stop_reason {
                    events.push(StreamEvent::Finish(finish_reason(Some(&reason))));
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

fn finish_reason(raw: Option<&str>) -> FinishReason {
    match raw {
        Some("end_turn") | Some("stop_sequence") | None => FinishReason::Stop,
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
    RequestBody {
        model: &request.upstream_model,
        max_tokens: request.max_tokens,
        system: request.system.as_deref(),
        messages: request
            .turns
            .iter()
            .map(|turn| WireMessage {
                role: match turn.speaker {
                    Speaker::User => "user",
                    Speaker::Assistant => "assistant",
                },
                content: &turn.text,
            })
            .collect(),
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
        stream: false,
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
            .post(format!("{}/v1/messages", up.base_url))
            .header("x-api-key", key.expose())
            .header("anthropic-version", API_VERSION)
            .json(&request_body(request));
        let body: ResponseBody = up.send_json(http, error_message).await?;
        let text = body
            .content
            .into_iter()
            .filter_map(|block| match block {
                ContentBlock::Text { text } => Some(text),
                ContentBlock::Other => None,
            })
            .collect::<String>();
        Ok(ChatResponse {
            text,
            finish_reason: finish_reason(body.stop_reason.as_deref()),
            usage: body.usage.into(),
        })
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, ProviderError> {
        let up = &self.upstream;
        let key = up.key()?;
        let mut body = request_body(request);
        body.stream = true;
        let http = up
            .http
            .post(format!("{}/v1/messages", up.base_url))
            .header("x-api-key", key.expose())
            .header("anthropic-version", API_VERSION)
            .json(&body);
        up.open_stream(http, error_message, Parser::default()).await
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
            finish_reason(body.stop_reason.as_deref()),
            FinishReason::Length
        );
    }
}

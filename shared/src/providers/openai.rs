//! OpenAI Chat Completions: <https://platform.openai.com/docs/api-reference/chat/create>.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::sse::SseEvent;
use super::{
    ChatProvider, ChatRequest, ChatResponse, ChatStream, FinishReason, ProviderError,
    ProviderErrorKind, Speaker, StreamEvent, StreamParser, Upstream, Usage,
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
    content: &'a str,
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
        messages.push(WireMessage {
            role: "system",
            content: system,
        });
    }
    messages.extend(request.turns.iter().map(|turn| WireMessage {
        role: match turn.speaker {
            Speaker::User => "user",
            Speaker::Assistant => "assistant",
        },
        content: &turn.text,
    }));
    RequestBody {
        model: &request.upstream_model,
        messages,
        max_completion_tokens: request.max_tokens,
        temperature: request.temperature,
        top_p: request.sampling.top_p,
        stop: &request.sampling.stop,
        seed: request.sampling.seed,
        user: request.sampling.user.as_deref(),
        stream: false,
        stream_options: None,
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
            .post(format!("{}/v1/chat/completions", up.base_url))
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
        let text = match (choice.message.content, choice.message.refusal) {
            (Some(text), _) => text,
            (None, Some(refusal)) => refusal,
            (None, None) => String::new(),
        };
        Ok(ChatResponse {
            text,
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
            .post(format!("{}/v1/chat/completions", up.base_url))
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

//! OpenAI Chat Completions: <https://platform.openai.com/docs/api-reference/chat/create>.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{
    ChatProvider, ChatRequest, ChatResponse, FinishReason, ProviderError, ProviderErrorKind,
    Speaker, Upstream, Usage,
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
    stream: bool,
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
        stream: false,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Turn;

    #[test]
    fn system_prompt_leads_the_messages() {
        let request = ChatRequest {
            upstream_model: "gpt-4o-mini".into(),
            system: Some("Be brief.".into()),
            turns: vec![Turn {
                speaker: Speaker::User,
                text: "Hi".into(),
            }],
            max_tokens: 100,
            temperature: None,
        };
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

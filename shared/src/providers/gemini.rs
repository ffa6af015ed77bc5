//! Google Gemini `generateContent`:
//! <https://ai.google.dev/api/generate-content#method:-models.generatecontent>.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::sse::SseEvent;
use super::{
    ChatProvider, ChatRequest, ChatResponse, ChatStream, FinishReason, ProviderError,
    ProviderErrorKind, Speaker, StreamEvent, StreamParser, Upstream, Usage,
};
use crate::catalog::ProviderKind;

#[derive(Debug)]
pub struct Gemini {
    upstream: Upstream,
}

impl Gemini {
    pub(crate) fn new(upstream: Upstream) -> Gemini {
        Gemini { upstream }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestBody<'a> {
    contents: Vec<Content<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<SystemInstruction<'a>>,
    generation_config: GenerationConfig<'a>,
}

#[derive(Debug, Serialize)]
struct Content<'a> {
    role: &'static str,
    parts: Vec<Part<'a>>,
}

#[derive(Debug, Serialize)]
struct SystemInstruction<'a> {
    parts: Vec<Part<'a>>,
}

#[derive(Debug, Serialize)]
struct Part<'a> {
    text: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'a> {
    max_output_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResponseBody {
    #[serde(default)]
    candidates: Vec<Candidate>,
    usage_metadata: Option<UsageMetadata>,
    prompt_feedback: Option<PromptFeedback>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    content: Option<CandidateContent>,
    finish_reason: Option<String>,
}

/// The answer's text: every text part but the model's thoughts.
fn answer_text(content: Option<CandidateContent>) -> String {
    content
        .map(|c| {
            c.parts
                .into_iter()
                .filter(|p| !p.thought)
                .filter_map(|p| p.text)
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Debug, Deserialize)]
struct CandidateContent {
    #[serde(default)]
    parts: Vec<CandidatePart>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CandidatePart {
    text: Option<String>,
    /// Thought summaries of thinking models are not part of the answer.
    #[serde(default)]
    thought: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    /// Thinking models bill their thoughts as output.
    #[serde(default)]
    thoughts_token_count: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: Option<String>,
}

impl From<UsageMetadata> for Usage {
    fn from(u: UsageMetadata) -> Usage {
        Usage {
            input_tokens: u.prompt_token_count,
            output_tokens: u.candidates_token_count + u.thoughts_token_count,
        }
    }
}

/// Each `data:` is a whole `GenerateContentResponse` with the next piece of text and the usage so
/// far; there is no terminal event, so the answer is complete once a finish reason arrived.
#[derive(Debug, Default)]
struct Parser {
    done: bool,
}

impl StreamParser for Parser {
    fn parse(&mut self, event: SseEvent) -> Result<Vec<StreamEvent>, String> {
        let value: serde_json::Value =
            serde_json::from_str(&event.data).map_err(|e| format!("unreadable chunk: {e}"))?;
        if let Some(message) = error_message(&value) {
            return Err(message);
        }
        let body: ResponseBody =
            serde_json::from_value(value).map_err(|e| format!("unreadable chunk: {e}"))?;
        let mut events = Vec::new();
        if let Some(candidate) = body.candidates.into_iter().next() {
            let text = answer_text(candidate.content);
            if !text.is_empty() {
                events.push(StreamEvent::Delta(text));
            }
            if let Some(reason) = candidate.finish_reason {
                self.done = true;
                events.push(StreamEvent::Finish(finish_reason(Some(&reason))));
            }
        } else if body.prompt_feedback.and_then(|f| f.block_reason).is_some() {
            self.done = true;
            events.push(StreamEvent::Finish(FinishReason::ContentFilter));
        }
        if let Some(usage) = body.usage_metadata {
            events.push(StreamEvent::Usage(usage.into()));
        }
        Ok(events)
    }

    fn finished(&self) -> bool {
        self.done
    }
}

fn finish_reason(raw: Option<&str>) -> FinishReason {
    match raw {
        Some("STOP") | None => FinishReason::Stop,
        Some("MAX_TOKENS") => FinishReason::Length,
        Some("SAFETY")
        | Some("RECITATION")
        | Some("BLOCKLIST")
        | Some("PROHIBITED_CONTENT")
        | Some("SPII")
        | Some("IMAGE_SAFETY") => FinishReason::ContentFilter,
        Some("MALFORMED_FUNCTION_CALL") => FinishReason::ToolCalls,
        Some(other) => FinishReason::Other(other.to_ascii_lowercase()),
    }
}

/// `{"error": {"code": 400, "message": "…", "status": "INVALID_ARGUMENT"}}`
fn error_message(body: &serde_json::Value) -> Option<String> {
    let error = body.get("error").or_else(|| body.pointer("/0/error"))?;
    error.get("message")?.as_str().map(str::to_owned)
}

fn request_body(request: &ChatRequest) -> RequestBody<'_> {
    RequestBody {
        contents: request
            .turns
            .iter()
            .map(|turn| Content {
                role: match turn.speaker {
                    Speaker::User => "user",
                    Speaker::Assistant => "model",
                },
                parts: vec![Part { text: &turn.text }],
            })
            .collect(),
        system_instruction: request.system.as_deref().map(|text| SystemInstruction {
            parts: vec![Part { text }],
        }),
        generation_config: GenerationConfig {
            max_output_tokens: request.max_tokens,
            temperature: request.temperature,
            top_p: request.sampling.top_p,
            stop_sequences: &request.sampling.stop,
            seed: request.sampling.seed,
        },
    }
}

impl Gemini {
    /// A request to the model's `method`. The key goes in a header, never in the URL, so it
    /// cannot end up in a logged URL.
    fn post(
        &self,
        request: &ChatRequest,
        method: &str,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let up = &self.upstream;
        let key = up.key()?;
        Ok(up
            .http
            .post(format!(
                "{}/v1beta/models/{}:{method}",
                up.base_url, request.upstream_model
            ))
            .header("x-goog-api-key", key.expose())
            .json(&request_body(request)))
    }
}

#[async_trait]
impl ChatProvider for Gemini {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Google
    }

    async fn complete(&self, request: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let up = &self.upstream;
        let http = self.post(request, "generateContent")?;
        let body: ResponseBody = up.send_json(http, error_message).await?;
        let usage: Usage = body.usage_metadata.map(Usage::from).unwrap_or_default();
        let Some(candidate) = body.candidates.into_iter().next() else {
            // No candidate at all: the prompt itself was blocked.
            if let Some(reason) = body.prompt_feedback.and_then(|f| f.block_reason) {
                return Ok(ChatResponse {
                    text: String::new(),
                    finish_reason: FinishReason::ContentFilter,
                    usage: Usage {
                        input_tokens: usage.input_tokens,
                        output_tokens: 0,
                    },
                })
                .inspect(|_| tracing::info!(reason, "gemini blocked the prompt"));
            }
            return Err(up.error(ProviderErrorKind::InvalidResponse(
                "the response has no candidates".into(),
            )));
        };
        let text = answer_text(candidate.content);
        Ok(ChatResponse {
            text,
            finish_reason: finish_reason(candidate.finish_reason.as_deref()),
            usage,
        })
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, ProviderError> {
        let up = &self.upstream;
        let http = self.post(request, "streamGenerateContent?alt=sse")?;
        up.open_stream(http, error_message, Parser::default()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_options_go_in_the_generation_config() {
        let request = crate::providers::sampled("gemini-2.5-flash", Some(7));
        let json = serde_json::to_value(request_body(&request)).expect("json");
        let config = &json["generationConfig"];
        assert_eq!(config["topP"], 0.5);
        assert_eq!(config["stopSequences"], serde_json::json!(["END"]));
        assert_eq!(config["seed"], 7);
        assert!(json.get("user").is_none());
    }
    use crate::providers::Turn;

    #[test]
    fn assistant_is_model_and_system_is_an_instruction() {
        let request = ChatRequest {
            upstream_model: "gemini-2.5-flash".into(),
            system: Some("Be brief.".into()),
            turns: vec![
                Turn {
                    speaker: Speaker::User,
                    text: "Hi".into(),
                },
                Turn {
                    speaker: Speaker::Assistant,
                    text: "Hello".into(),
                },
            ],
            max_tokens: 100,
            temperature: Some(0.7),
            sampling: Default::default(),
        };
        let json = serde_json::to_value(request_body(&request)).expect("json");
        assert_eq!(json["contents"][1]["role"], "model");
        assert_eq!(json["systemInstruction"]["parts"][0]["text"], "Be brief.");
        assert_eq!(json["generationConfig"]["maxOutputTokens"], 100);
    }

    #[test]
    fn thoughts_count_as_output_but_are_not_text() {
        let body: ResponseBody = serde_json::from_value(serde_json::json!({
            "candidates": [{
                "content": {"parts": [{"text": "hmm", "thought": true}, {"text": "Hi"}], "role": "model"},
                "finishReason": "STOP"
            }],
            "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 1, "thoughtsTokenCount": 7, "totalTokenCount": 12}
        }))
        .expect("parses");
        assert_eq!(
            Usage::from(body.usage_metadata.expect("usage")),
            Usage {
                input_tokens: 4,
                output_tokens: 8
            }
        );
    }
}

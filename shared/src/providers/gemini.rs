//! Google Gemini `generateContent`:
//! <https://ai.google.dev/api/generate-content#method:-models.generatecontent>.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::sse::SseEvent;
use super::{
    new_call_id, schema, ChatProvider, ChatRequest, ChatResponse, ChatStream, FinishReason,
    ImageSource, Part as TurnPart, ProviderError, ProviderErrorKind, ResponseFormat, Speaker,
    StreamEvent, StreamParser, ToolCall, ToolCallDelta, ToolChoice, Tooling, Turn, Upstream, Usage,
};
use crate::catalog::ProviderKind;

/// What a call made by another model (or written by the client) carries back instead of a
/// thought signature: Gemini's thinking models refuse a call in the conversation without one,
/// and take this documented value as "none to check".
const NO_SIGNATURE: &str = "skip_thought_signature_validator";

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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<serde_json::Value>,
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
#[serde(untagged)]
enum Part<'a> {
    Text {
        text: &'a str,
    },
    /// Images, calls and results, built as JSON.
    Other(serde_json::Value),
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
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_schema: Option<serde_json::Value>,
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

/// The answer's text (every text part but the model's thoughts) and its function calls.
fn answer_parts(content: Option<CandidateContent>) -> (String, Vec<ToolCall>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for part in content.map(|c| c.parts).unwrap_or_default() {
        if let Some(call) = part.function_call {
            calls.push(ToolCall {
                id: call
                    .id
                    .filter(|id| !id.is_empty())
                    .unwrap_or_else(new_call_id),
                name: call.name,
                arguments: call
                    .args
                    .unwrap_or_else(|| serde_json::json!({}))
                    .to_string(),
                signature: part.thought_signature,
            });
        } else if let Some(more) = part.text.filter(|_| !part.thought) {
            text.push_str(&more);
        }
    }
    (text, calls)
}

/// Gemini says `STOP` when it calls functions: the gateway says `tool_calls`, as OpenAI does.
fn finish_with_calls(reason: Option<&str>, called: bool) -> FinishReason {
    match finish_reason(reason) {
        FinishReason::Stop if called => FinishReason::ToolCalls,
        other => other,
    }
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
    function_call: Option<FunctionCall>,
    /// Owed back to Gemini with the call on the next turn.
    thought_signature: Option<String>,
}

#[derive(Debug, Deserialize)]
struct FunctionCall {
    id: Option<String>,
    name: String,
    args: Option<serde_json::Value>,
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
    /// Function calls passed on so far (each arrives whole, in one chunk).
    calls: u32,
    /// At most one call per answer (`parallel_tool_calls: false`, which Gemini cannot be told).
    single_call: bool,
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
            let (text, calls) = answer_parts(candidate.content);
            if !text.is_empty() {
                events.push(StreamEvent::Delta(text));
            }
            for call in calls {
                if self.single_call && self.calls > 0 {
                    break;
                }
                events.push(StreamEvent::ToolCall(ToolCallDelta::whole(
                    self.calls, call,
                )));
                self.calls += 1;
            }
            if let Some(reason) = candidate.finish_reason {
                self.done = true;
                let reason = finish_with_calls(Some(&reason), self.calls > 0);
                events.push(StreamEvent::Finish(reason));
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
        Some(other) => FinishReason::Other(other.to_ascii_lowercase()),
    }
}

/// `{"error": {"code": 400, "message": "…", "status": "INVALID_ARGUMENT"}}`
fn error_message(body: &serde_json::Value) -> Option<String> {
    let error = body.get("error").or_else(|| body.pointer("/0/error"))?;
    error.get("message")?.as_str().map(str::to_owned)
}

fn request_body(request: &ChatRequest) -> RequestBody<'_> {
    let (response_mime_type, response_schema) = match &request.format {
        ResponseFormat::Text => (None, None),
        ResponseFormat::JsonObject => (Some("application/json"), None),
        // An object of any shape is all that an object schema without properties says.
        ResponseFormat::JsonSchema { schema, .. } => (
            Some("application/json"),
            Some(schema::gemini(schema)).filter(|s| s.get("properties").is_some()),
        ),
    };
    RequestBody {
        contents: request.turns.iter().map(content).collect(),
        system_instruction: request.system.as_deref().map(|text| SystemInstruction {
            parts: vec![Part::Text { text }],
        }),
        tools: function_declarations(&request.tooling),
        tool_config: tool_config(&request.tooling),
        generation_config: GenerationConfig {
            max_output_tokens: request.max_tokens,
            temperature: request.temperature,
            top_p: request.sampling.top_p,
            stop_sequences: &request.sampling.stop,
            seed: request.sampling.seed,
            response_mime_type,
            response_schema,
        },
    }
}

/// A turn as Gemini's content: calls carry their thought signature back; results go by the
/// called function's name, their content as the response object (wrapped when not one).
fn content(turn: &Turn) -> Content<'_> {
    let role = match turn.speaker {
        Speaker::User => "user",
        Speaker::Assistant => "model",
    };
    // Gemini signs only the first of parallel calls: a turn it made keeps its calls as they
    // were; a turn another model made is marked as having nothing to check.
    let made_by_gemini = turn
        .parts
        .iter()
        .any(|part| matches!(part, TurnPart::ToolCall(call) if call.signature.is_some()));
    let parts = turn.parts.iter().map(|part| match part {
        TurnPart::Text(text) => Part::Text { text },
        TurnPart::Image(image) => Part::Other(match &image.source {
            ImageSource::Inline { media_type, data } => serde_json::json!({
                "inlineData": {"mimeType": media_type, "data": data},
            }),
            // Refused before the call (`chat::check`): Gemini fetches no addresses.
            ImageSource::Url(url) => serde_json::json!({ "fileData": {"fileUri": url} }),
        }),
        TurnPart::ToolCall(call) => Part::Other(function_call(call, made_by_gemini)),
        TurnPart::ToolResult(result) => {
            let response = match serde_json::from_str::<serde_json::Value>(&result.content) {
                Ok(object @ serde_json::Value::Object(_)) => object,
                _ => serde_json::json!({ "result": result.content }),
            };
            Part::Other(serde_json::json!({
                "functionResponse": {"name": result.name, "response": response},
            }))
        }
    });
    Content {
        role,
        parts: parts.collect(),
    }
}

/// A `functionCall` part, with the call's thought signature, or [`NO_SIGNATURE`] for a call of
/// a turn Gemini did not make.
fn function_call(call: &ToolCall, made_by_gemini: bool) -> serde_json::Value {
    let args: serde_json::Value = serde_json::from_str(&call.arguments)
        .ok()
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| serde_json::json!({}));
    let mut part = serde_json::json!({"functionCall": {"name": call.name, "args": args}});
    match (&call.signature, made_by_gemini) {
        (Some(signature), _) => part["thoughtSignature"] = signature.as_str().into(),
        (None, false) => part["thoughtSignature"] = NO_SIGNATURE.into(),
        (None, true) => {}
    }
    part
}

/// The tools, their parameters in Gemini's schema subset; a function without parameters has
/// none (Gemini refuses an object schema without properties).
fn function_declarations(tooling: &Tooling) -> Vec<serde_json::Value> {
    if !tooling.offered() {
        return Vec::new();
    }
    let declarations: Vec<serde_json::Value> = tooling
        .tools
        .iter()
        .map(|tool| {
            let mut declaration = serde_json::json!({ "name": tool.name });
            if let Some(description) = &tool.description {
                declaration["description"] = description.as_str().into();
            }
            let parameters = schema::gemini(&tool.parameters);
            if parameters.get("properties").is_some() {
                declaration["parameters"] = parameters;
            }
            declaration
        })
        .collect();
    vec![serde_json::json!({ "functionDeclarations": declarations })]
}

/// `functionCallingConfig`: `AUTO`, `ANY` (limited to the named function), or `NONE`.
fn tool_config(tooling: &Tooling) -> Option<serde_json::Value> {
    let config = match tooling.choice.as_ref().filter(|_| tooling.offered())? {
        ToolChoice::Auto => serde_json::json!({"mode": "AUTO"}),
        ToolChoice::None => serde_json::json!({"mode": "NONE"}),
        ToolChoice::Required => serde_json::json!({"mode": "ANY"}),
        ToolChoice::Named(name) => {
            serde_json::json!({"mode": "ANY", "allowedFunctionNames": [name]})
        }
    };
    Some(serde_json::json!({ "functionCallingConfig": config }))
}

impl Gemini {
    /// A request to the model's `method`, with `query` if any. The key goes in a header, never in
    /// the URL, so it cannot end up in a logged URL.
    fn post(
        &self,
        request: &ChatRequest,
        method: &str,
        query: Option<&str>,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let up = &self.upstream;
        let key = up.key()?;
        let mut url = up.url(&format!(
            "/v1beta/models/{}:{method}",
            request.upstream_model
        ));
        url.set_query(query);
        Ok(up
            .http
            .post(url)
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
        let http = self.post(request, "generateContent", None)?;
        let body: ResponseBody = up.send_json(http, error_message).await?;
        let usage: Usage = body.usage_metadata.map(Usage::from).unwrap_or_default();
        let Some(candidate) = body.candidates.into_iter().next() else {
            // No candidate at all: the prompt itself was blocked.
            if let Some(reason) = body.prompt_feedback.and_then(|f| f.block_reason) {
                return Ok(ChatResponse {
                    text: String::new(),
                    tool_calls: Vec::new(),
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
        let (text, mut tool_calls) = answer_parts(candidate.content);
        if request.tooling.parallel == Some(false) {
            tool_calls.truncate(1);
        }
        Ok(ChatResponse {
            finish_reason: finish_with_calls(
                candidate.finish_reason.as_deref(),
                !tool_calls.is_empty(),
            ),
            text,
            tool_calls,
            usage,
        })
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, ProviderError> {
        let up = &self.upstream;
        let http = self.post(request, "streamGenerateContent", Some("alt=sse"))?;
        let parser = Parser {
            single_call: request.tooling.parallel == Some(false),
            ..Parser::default()
        };
        up.open_stream(http, error_message, parser).await
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

    #[test]
    fn assistant_is_model_and_system_is_an_instruction() {
        let request = ChatRequest {
            upstream_model: "gemini-2.5-flash".into(),
            system: Some("Be brief.".into()),
            turns: vec![
                Turn::text(Speaker::User, "Hi"),
                Turn::text(Speaker::Assistant, "Hello"),
            ],
            max_tokens: 100,
            temperature: Some(0.7),
            sampling: Default::default(),
            tooling: Default::default(),
            format: Default::default(),
        };
        let json = serde_json::to_value(request_body(&request)).expect("json");
        assert_eq!(json["contents"][1]["role"], "model");
        assert_eq!(json["systemInstruction"]["parts"][0]["text"], "Be brief.");
        assert_eq!(json["generationConfig"]["maxOutputTokens"], 100);
    }

    #[test]
    fn tools_images_and_results_become_parts() {
        let mut request = crate::providers::tool_round_trip("gemini-2.5-flash");
        request.format = ResponseFormat::JsonSchema {
            name: "weather".into(),
            description: None,
            schema: serde_json::json!({"type": "object", "properties": {"t": {"type": ["number", "null"]}}}),
            strict: None,
        };
        let json = serde_json::to_value(request_body(&request)).expect("json");
        assert_eq!(
            json["contents"],
            serde_json::json!([
                {"role": "user", "parts": [
                    {"text": "Weather here?"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBORw0K"}}
                ]},
                {"role": "model", "parts": [
                    {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": "sig-1"}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "weather", "response": {"result": "18C"}}}
                ]}
            ])
        );
        assert_eq!(
            json["tools"],
            serde_json::json!([{"functionDeclarations": [{
                "name": "weather",
                "description": "The weather",
                "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]}
            }]}])
        );
        assert_eq!(
            json["toolConfig"],
            serde_json::json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}})
        );
        let config = &json["generationConfig"];
        assert_eq!(config["responseMimeType"], "application/json");
        assert_eq!(
            config["responseSchema"],
            serde_json::json!({"type": "OBJECT", "properties": {"t": {"type": "NUMBER", "nullable": true}}})
        );
    }

    #[test]
    fn calls_gemini_did_not_make_say_there_is_no_signature() {
        let mut request = crate::providers::tool_round_trip("gemini-2.5-flash");
        for turn in &mut request.turns {
            for part in &mut turn.parts {
                if let TurnPart::ToolCall(call) = part {
                    call.signature = None;
                }
            }
        }
        let json = serde_json::to_value(request_body(&request)).expect("json");
        assert_eq!(
            json["contents"][1]["parts"][0]["thoughtSignature"],
            NO_SIGNATURE
        );
    }

    #[test]
    fn answered_calls_get_ids_signatures_and_the_tool_calls_finish() {
        let body = serde_json::json!({
            "candidates": [{
                "content": {"parts": [
                    {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2ln"},
                    {"functionCall": {"name": "time", "args": {}}}
                ], "role": "model"},
                "finishReason": "STOP"
            }],
            "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 6}
        });
        let mut parser = Parser {
            single_call: true,
            ..Parser::default()
        };
        let events = parser
            .parse(SseEvent {
                event: None,
                data: body.to_string(),
            })
            .expect("parses");
        let StreamEvent::ToolCall(call) = &events[0] else {
            panic!("a call first: {events:?}");
        };
        assert!(call.id.as_deref().is_some_and(|id| id.starts_with("call_")));
        assert_eq!(call.signature.as_deref(), Some("c2ln"));
        assert_eq!(call.arguments, r#"{"city":"Paris"}"#);
        // One call at a time was asked for: the second is not passed on.
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(events[1], StreamEvent::Finish(FinishReason::ToolCalls));
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

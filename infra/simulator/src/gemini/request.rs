//! A `generateContent` request, read and checked the way Gemini checks it: parts (text,
//! `functionCall` with its `thoughtSignature`, `functionResponse`, `inlineData`, `fileData`),
//! function declarations and the function calling config, the response format.
//!
//! Wire types follow <https://ai.google.dev/api/generate-content> and
//! <https://ai.google.dev/gemini-api/docs/function-calling>; thought signatures follow
//! <https://ai.google.dev/gemini-api/docs/thought-signatures>.

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::ApiError;
use crate::{
    media, schema,
    script::{Fnv, Output, Turn},
    tools::{Choice, Tool, ToolResult, Toolbox},
    Provider,
};

/// Google's JSON mapping accepts both the camelCase and the proto (snake_case) field names.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct GenerateContentRequest {
    contents: Option<Vec<Content>>,
    #[serde(alias = "system_instruction")]
    system_instruction: Option<Content>,
    #[serde(alias = "generation_config")]
    generation_config: Option<GenerationConfig>,
    tools: Option<Vec<ToolDefinition>>,
    #[serde(alias = "tool_config")]
    tool_config: Option<ToolConfig>,
}

#[derive(Debug, Deserialize)]
struct Content {
    /// "user" or "model"; absent means user.
    role: Option<String>,
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part {
    text: Option<String>,
    #[serde(alias = "function_call")]
    function_call: Option<FunctionCall>,
    #[serde(alias = "function_response")]
    function_response: Option<FunctionResponse>,
    #[serde(alias = "inline_data")]
    inline_data: Option<Blob>,
    #[serde(alias = "file_data")]
    file_data: Option<FileData>,
    /// Base64 bytes, a sibling of the part's `functionCall`.
    #[serde(alias = "thought_signature")]
    thought_signature: Option<String>,
}

#[derive(Debug, Deserialize)]
struct FunctionCall {
    name: String,
    args: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct FunctionResponse {
    name: String,
    response: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Blob {
    #[serde(alias = "mime_type")]
    mime_type: String,
    data: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileData {
    #[serde(alias = "mime_type")]
    mime_type: Option<String>,
    #[serde(alias = "file_uri")]
    file_uri: String,
}

impl Content {
    fn text(&self) -> String {
        self.parts
            .iter()
            .filter_map(|part| part.text.as_deref())
            .collect::<Vec<_>>()
            .join("")
    }

    /// Everything the model reads: text, then each function call and response.
    fn input_text(&self) -> String {
        let mut text = self.text();
        for part in &self.parts {
            let piece = match (&part.function_call, &part.function_response) {
                (Some(call), _) => format!("{} {}", call.name, spaced_or_empty(&call.args)),
                (None, Some(response)) => {
                    format!("{} {}", response.name, spaced_or_empty(&response.response))
                }
                (None, None) => continue,
            };
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&piece);
        }
        text
    }

    fn is_user(&self) -> bool {
        self.role.as_deref().is_none_or(|role| role == "user")
    }

    /// Whether this content holds nothing but function responses.
    fn only_responses(&self) -> bool {
        !self.parts.is_empty()
            && self
                .parts
                .iter()
                .all(|part| part.function_response.is_some())
    }

    fn calls(&self) -> impl Iterator<Item = (&Part, &FunctionCall)> {
        self.parts
            .iter()
            .filter_map(|part| part.function_call.as_ref().map(|call| (part, call)))
    }
}

fn spaced_or_empty(value: &Option<Value>) -> String {
    value.as_ref().map(schema::spaced).unwrap_or_default()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(alias = "max_output_tokens")]
    max_output_tokens: Option<u32>,
    #[serde(alias = "response_mime_type")]
    response_mime_type: Option<String>,
    #[serde(alias = "response_schema")]
    response_schema: Option<Value>,
    #[serde(alias = "response_json_schema")]
    response_json_schema: Option<Value>,
}

/// A tool: function declarations, or a built-in tool (search, code execution) left alone here.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolDefinition {
    #[serde(alias = "function_declarations")]
    function_declarations: Option<Vec<FunctionDeclaration>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FunctionDeclaration {
    name: String,
    description: Option<String>,
    /// Gemini's OpenAPI subset.
    parameters: Option<Value>,
    /// Plain JSON Schema.
    #[serde(alias = "parameters_json_schema")]
    parameters_json_schema: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig {
    #[serde(alias = "function_calling_config")]
    function_calling_config: Option<FunctionCallingConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FunctionCallingConfig {
    mode: Option<String>,
    #[serde(alias = "allowed_function_names")]
    allowed_function_names: Option<Vec<String>>,
}

/// A request read into the simulator's terms.
pub(super) struct Reading<'a> {
    max_tokens: Option<u32>,
    prompt: String,
    inputs: Vec<String>,
    toolbox: Toolbox<'a>,
    results: Vec<ToolResult>,
    output: Output<'a>,
    image_tokens: u32,
}

impl Reading<'_> {
    pub fn turn<'a>(&'a self, model: &'a str) -> Turn<'a> {
        Turn {
            provider: Provider::Gemini,
            model,
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

/// Reads and checks `request`; the error is what Gemini answers to the first problem found.
pub(super) fn read(request: &GenerateContentRequest) -> Result<Reading<'_>, ApiError> {
    let Some(contents) = request.contents.as_deref().filter(|c| !c.is_empty()) else {
        return Err(invalid(
            "* GenerateContentRequest.contents: contents is not specified\n",
        ));
    };
    let toolbox = toolbox(request)?;
    check_signatures(contents)?;
    check_response_counts(contents)?;
    let mut image_tokens = 0u32;
    for (index, content) in contents.iter().enumerate() {
        image_tokens = image_tokens.saturating_add(images(index, content)?);
    }
    let config = request.generation_config.as_ref();
    let output = output(config)?;
    let prompt = contents
        .iter()
        .rev()
        .find(|content| content.is_user() && !content.only_responses())
        .map(Content::text)
        .unwrap_or_default();
    let mut inputs: Vec<String> = request
        .system_instruction
        .iter()
        .map(Content::text)
        .collect();
    inputs.extend(contents.iter().map(Content::input_text));
    inputs.extend(definitions_input(request));
    if let Output::Json(Some(schema)) = output {
        inputs.push(schema::spaced(schema));
    }
    Ok(Reading {
        // Zero is what an unset proto field reads as: no limit.
        max_tokens: config
            .and_then(|config| config.max_output_tokens)
            .filter(|&limit| limit > 0),
        prompt,
        inputs,
        toolbox,
        results: trailing_results(contents),
        output,
        image_tokens,
    })
}

fn toolbox(request: &GenerateContentRequest) -> Result<Toolbox<'_>, ApiError> {
    let declarations = request
        .tools
        .iter()
        .flatten()
        .flat_map(|tool| tool.function_declarations.iter().flatten());
    let mut tools = Vec::new();
    for (index, declaration) in declarations.enumerate() {
        if !is_function_name(&declaration.name) {
            return Err(invalid(format!(
                "* GenerateContentRequest.tools[0].function_declarations[{index}].name: Invalid function name. Must start with a letter or an underscore. Must be alphameric (a-z, A-Z, 0-9), underscores (_), dots (.), colons (:), or dashes (-), with a maximum length of 64.\n"
            )));
        }
        tools.push(Tool {
            name: &declaration.name,
            schema: declaration
                .parameters_json_schema
                .as_ref()
                .or(declaration.parameters.as_ref()),
        });
    }
    let config = request
        .tool_config
        .as_ref()
        .and_then(|config| config.function_calling_config.as_ref());
    let mode = config.and_then(|config| config.mode.as_deref());
    let choice = match mode.unwrap_or("AUTO") {
        "AUTO" | "MODE_UNSPECIFIED" | "VALIDATED" => Choice::Auto,
        "ANY" => Choice::Required,
        "NONE" => Choice::None,
        other => {
            return Err(invalid(format!(
                "Invalid value at 'tool_config.function_calling_config.mode' (type.googleapis.com/google.ai.generativelanguage.v1beta.FunctionCallingConfig.Mode), \"{other}\""
            )))
        }
    };
    if choice == Choice::Required && tools.is_empty() {
        return Err(invalid(
            "* GenerateContentRequest.tool_config.function_calling_config.mode: function calling mode ANY requires at least one function declaration.\n",
        ));
    }
    let allowed: Vec<&str> = config
        .and_then(|config| config.allowed_function_names.as_deref())
        .unwrap_or_default()
        .iter()
        .map(String::as_str)
        .collect();
    if !allowed.is_empty() && !matches!(mode, Some("ANY" | "VALIDATED")) {
        return Err(invalid(
            "* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: allowed_function_names may only be set when the function calling mode is ANY or VALIDATED.\n",
        ));
    }
    if let Some(unknown) = allowed
        .iter()
        .find(|name| !tools.iter().any(|tool| tool.name == **name))
    {
        return Err(invalid(format!(
            "* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: function `{unknown}` is not declared in tools.\n"
        )));
    }
    Ok(Toolbox {
        tools,
        choice,
        allowed,
        parallel: true,
    })
}

/// Gemini's rule for thought signatures: in the current turn (everything after the last user
/// content that is more than function responses) the first `functionCall` part of every model
/// step carries the signature it was given; older turns are not checked for presence.
/// A signature that is there must be the one made for its step, anywhere in the history.
fn check_signatures(contents: &[Content]) -> Result<(), ApiError> {
    let turn_start = contents
        .iter()
        .rposition(|content| content.is_user() && !content.only_responses())
        .unwrap_or(0);
    for (index, content) in contents.iter().enumerate() {
        let mut calls = content.calls();
        let Some((first_part, first_call)) = calls.next() else {
            continue;
        };
        let step = signature(&first_call.name, first_call.args.as_ref());
        for (part, call) in std::iter::once((first_part, first_call)).chain(calls) {
            let Some(given) = part.thought_signature.as_deref() else {
                continue;
            };
            let own = signature(&call.name, call.args.as_ref());
            if !is_accepted(given, &[&step, &own]) {
                return Err(invalid("Corrupted thought signature."));
            }
        }
        if index > turn_start && first_part.thought_signature.is_none() {
            return Err(invalid(format!(
                "Function call is missing a thought_signature in functionCall parts. This is required for tools to work correctly, and missing thought_signature may lead to degraded model performance. Additional data, function call `default_api:{}` , position {}. Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more details.",
                first_call.name,
                index + 1
            )));
        }
    }
    Ok(())
}

/// The signature Gemini documents for calls it did not make (history from another model,
/// calls injected by the client), accepted in place of a real one.
const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

/// What a signature made by the simulator starts with once decoded.
const SIGNATURE_PREFIX: &[u8] = b"simsig1:";

/// The thought signature of a call: base64 of `simsig1:` and a 16-byte hash of the call's name
/// and arguments, so a signature moved to another call or altered in any way no longer matches.
pub(super) fn signature(name: &str, args: Option<&Value>) -> String {
    let canonical = args.map(canonical).unwrap_or_else(|| "{}".to_owned());
    let mut bytes = SIGNATURE_PREFIX.to_vec();
    for salt in ["thought_signature/1", "thought_signature/2"] {
        let hash = Fnv::new()
            .write(salt)
            .write(name)
            .write(&canonical)
            .finish();
        bytes.extend(hash.to_be_bytes());
    }
    media::encode_base64(&bytes)
}

/// Whether `given` is the dummy or decodes to one of `expected` (compared as bytes: clients
/// re-encode signatures, the Python SDK in the URL-safe alphabet).
fn is_accepted(given: &str, expected: &[&str]) -> bool {
    if given == SKIP_SIGNATURE {
        return true;
    }
    let Some(bytes) = media::decode_base64(given) else {
        return false;
    };
    bytes == SKIP_SIGNATURE.as_bytes()
        || expected
            .iter()
            .any(|expected| media::decode_base64(expected).is_some_and(|e| e == bytes))
}

/// Arguments written with sorted keys and numbers as `f64`, so a client that re-serialises them
/// (`1` as `1.0`, keys in another order) still presents the same call.
fn canonical(value: &Value) -> String {
    match value {
        Value::Number(number) => number
            .as_f64()
            .map_or_else(|| number.to_string(), |n| n.to_string()),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", items.join(","))
        }
        Value::Object(members) => {
            let mut members: Vec<(&String, &Value)> = members.iter().collect();
            members.sort_by(|a, b| a.0.cmp(b.0));
            let members: Vec<String> = members
                .into_iter()
                .map(|(key, value)| format!("{}:{}", Value::from(key.as_str()), canonical(value)))
                .collect();
            format!("{{{}}}", members.join(","))
        }
        scalar => scalar.to_string(),
    }
}

/// A step's function calls are answered by as many function responses in the next content.
fn check_response_counts(contents: &[Content]) -> Result<(), ApiError> {
    for pair in contents.windows(2) {
        let calls = pair[0].calls().count();
        let responses = pair[1]
            .parts
            .iter()
            .filter(|part| part.function_response.is_some())
            .count();
        if calls > 0 && responses > 0 && calls != responses {
            return Err(invalid(
                "Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn.",
            ));
        }
    }
    Ok(())
}

/// Checks the inline data and files of one content and returns the input tokens of its images.
fn images(index: usize, content: &Content) -> Result<u32, ApiError> {
    let mut tokens = 0u32;
    for (part_index, part) in content.parts.iter().enumerate() {
        if let Some(blob) = &part.inline_data {
            let mime_type = blob.mime_type.to_ascii_lowercase();
            if mime_type.starts_with("image/") && !is_gemini_image(&mime_type) {
                return Err(invalid(format!(
                    "Unsupported MIME type: {}",
                    blob.mime_type
                )));
            }
            if !media::is_base64_payload(&blob.data) {
                let shown: String = blob.data.chars().take(32).collect();
                return Err(invalid(format!(
                    "Invalid value at 'contents[{index}].parts[{part_index}].inline_data.data' (TYPE_BYTES), Base64 decoding failed for \"{shown}\""
                )));
            }
            if mime_type.starts_with("image/") {
                tokens = tokens.saturating_add(media::GEMINI_IMAGE_TOKENS);
            }
        }
        if let Some(file) = &part.file_data {
            if file.file_uri.is_empty() {
                return Err(invalid(format!(
                    "* GenerateContentRequest.contents[{index}].parts[{part_index}].file_data.file_uri: file_uri is required.\n"
                )));
            }
            let image = file
                .mime_type
                .as_deref()
                .is_none_or(|mime_type| mime_type.starts_with("image/"));
            if image {
                tokens = tokens.saturating_add(media::GEMINI_IMAGE_TOKENS);
            }
        }
    }
    Ok(tokens)
}

/// Gemini's image types: the common ones plus Apple's HEIC / HEIF.
fn is_gemini_image(mime_type: &str) -> bool {
    media::is_supported_image(mime_type) || matches!(mime_type, "image/heic" | "image/heif")
}

/// The function responses of the last content, when it holds some.
fn trailing_results(contents: &[Content]) -> Vec<ToolResult> {
    let Some(last) = contents.last() else {
        return Vec::new();
    };
    last.parts
        .iter()
        .filter_map(|part| part.function_response.as_ref())
        .map(|response| ToolResult {
            content: spaced_or_empty(&response.response),
            is_error: false,
        })
        .collect()
}

fn output(config: Option<&GenerationConfig>) -> Result<Output<'_>, ApiError> {
    let Some(config) = config else {
        return Ok(Output::Text);
    };
    let schema = config
        .response_json_schema
        .as_ref()
        .or(config.response_schema.as_ref());
    match config.response_mime_type.as_deref() {
        Some("application/json") => Ok(Output::Json(schema)),
        _ if schema.is_some() => Err(invalid(
            "* GenerateContentRequest.generation_config.response_mime_type: response_mime_type must be application/json when a response schema is set.\n",
        )),
        _ => Ok(Output::Text),
    }
}

/// The function declarations as input text: Gemini puts them in the prompt, so they cost input
/// tokens.
fn definitions_input(request: &GenerateContentRequest) -> Option<String> {
    let declarations: Vec<String> = request
        .tools
        .iter()
        .flatten()
        .flat_map(|tool| tool.function_declarations.iter().flatten())
        .map(|declaration| {
            let parameters = declaration
                .parameters_json_schema
                .as_ref()
                .or(declaration.parameters.as_ref());
            format!(
                "{} {} {}",
                declaration.name,
                declaration.description.as_deref().unwrap_or_default(),
                parameters.map(schema::spaced).unwrap_or_default()
            )
        })
        .collect();
    (!declarations.is_empty()).then(|| declarations.join("\n"))
}

/// Gemini's rule: a letter or underscore first, then letters, digits, `_`, `.`, `:` or `-`,
/// at most 64 characters.
fn is_function_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(contents: Value) -> Result<(), String> {
        let request: GenerateContentRequest =
            serde_json::from_value(json!({ "contents": contents })).expect("a request body");
        read(&request).map(|_| ()).map_err(|error| error.message)
    }

    fn call_turn(signature: Option<&str>) -> Value {
        let mut part = json!({"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}});
        if let Some(signature) = signature {
            part["thoughtSignature"] = json!(signature);
        }
        json!([
            {"role": "user", "parts": [{"text": "weather?"}]},
            {"role": "model", "parts": [part]},
            {"role": "user", "parts": [{"functionResponse": {"name": "get_weather",
                                                            "response": {"temp": 20}}}]}
        ])
    }

    #[test]
    fn the_simulators_signature_and_the_dummy_are_accepted() {
        let made = signature("get_weather", Some(&json!({"city": "Paris"})));
        assert_eq!(check(call_turn(Some(&made))), Ok(()));
        let url_safe = made.replace('+', "-").replace('/', "_");
        assert_eq!(check(call_turn(Some(&url_safe))), Ok(()));
        assert_eq!(check(call_turn(Some(SKIP_SIGNATURE))), Ok(()));
        let dummy_bytes = media::encode_base64(SKIP_SIGNATURE.as_bytes());
        assert_eq!(check(call_turn(Some(&dummy_bytes))), Ok(()));
    }

    #[test]
    fn a_missing_or_altered_signature_is_refused() {
        let missing = check(call_turn(None)).expect_err("refused");
        assert!(missing.starts_with("Function call is missing a thought_signature"));
        assert!(missing.contains("`default_api:get_weather` , position 2."));
        let other = signature("get_weather", Some(&json!({"city": "Rome"})));
        assert_eq!(
            check(call_turn(Some(&other))),
            Err("Corrupted thought signature.".to_owned())
        );
        assert!(check(call_turn(Some("bm9wZQ=="))).is_err());
    }

    #[test]
    fn older_turns_need_no_signature_and_counts_must_match() {
        let mut contents = call_turn(None);
        if let Some(turns) = contents.as_array_mut() {
            turns.push(json!({"role": "model", "parts": [{"text": "20 degrees"}]}));
            turns.push(json!({"role": "user", "parts": [{"text": "thanks"}]}));
        }
        assert_eq!(check(contents), Ok(()));
        let two_responses = json!([
            {"role": "user", "parts": [{"text": "weather?"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}},
                                         "thoughtSignature": SKIP_SIGNATURE}]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "f", "response": {}}},
                {"functionResponse": {"name": "f", "response": {}}}]}
        ]);
        assert!(check(two_responses).is_err_and(|m| m.contains("number of function response")));
    }

    #[test]
    fn canonical_arguments_ignore_key_order_and_number_spelling() {
        assert_eq!(
            canonical(&json!({"b": 1, "a": [1.5, "x"]})),
            canonical(&json!({"a": [1.5, "x"], "b": 1.0}))
        );
    }
}

//! What a conversation carries besides text, as the adapters receive it: images, tool calls and
//! their results, the tools offered, and the shape asked of the answer. Each adapter translates
//! these into its provider's wire format and back.

use serde_json::Value;

/// Who said a message. System prompts travel separately in [`super::ChatRequest::system`],
/// because two of the three providers take them outside the conversation; tool results are parts
/// of a user turn, as Anthropic and Gemini carry them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    User,
    Assistant,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub speaker: Speaker,
    pub parts: Vec<Part>,
}

impl Turn {
    /// A turn of plain text.
    pub fn text(speaker: Speaker, text: impl Into<String>) -> Turn {
        Turn {
            speaker,
            parts: vec![Part::Text(text.into())],
        }
    }

    /// The turn's text parts, joined by new lines.
    pub fn joined_text(&self) -> String {
        let texts: Vec<&str> = self
            .parts
            .iter()
            .filter_map(|part| match part {
                Part::Text(text) => Some(text.as_str()),
                _ => None,
            })
            .collect();
        texts.join("\n")
    }

    /// Whether the turn is nothing but text (adapters send those in their simplest form).
    pub fn only_text(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Text(text)] => Some(text),
            _ => None,
        }
    }
}

/// A piece of a turn.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    /// User turns only.
    Image(Image),
    /// Assistant turns only: a call the model made.
    ToolCall(ToolCall),
    /// User turns only: what a tool answered to an earlier call.
    ToolResult(ToolResult),
}

/// An image given with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub source: ImageSource,
    /// OpenAI's `detail` (`low`, `high`, `auto`): how finely the image is read, and so what it
    /// costs. Only OpenAI's models take it; the others read every image one way.
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// Bytes sent inline: a media type of [`IMAGE_TYPES`] and the bytes in standard base64.
    Inline { media_type: String, data: String },
    /// An `http(s)` address the provider fetches itself; not every provider does
    /// ([`crate::catalog::ProviderKind::fetches_image_urls`]).
    Url(String),
}

/// The image types every provider accepts inline.
pub const IMAGE_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// A call of one of the request's tools, as the model made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// Unique within the conversation; the tool's result refers to it.
    pub id: String,
    pub name: String,
    /// The arguments, a JSON object as text (as the model wrote it).
    pub arguments: String,
    /// Gemini's `thoughtSignature`: opaque, and owed back to Gemini with the call on later turns.
    pub signature: Option<String>,
}

/// A tool's answer to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolResult {
    pub call_id: String,
    /// The called tool's name (Gemini matches results by name).
    pub name: String,
    pub content: String,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// A JSON Schema of the arguments, an object.
    pub parameters: Value,
    /// OpenAI's `strict`: the arguments will match the schema exactly.
    pub strict: Option<bool>,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// No tool may be called.
    None,
    /// Some tool must be called.
    Required,
    /// This tool must be called.
    Named(String),
}

/// The tools a request offers and how the model may use them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tooling {
    pub tools: Vec<Tool>,
    /// `None`: the provider's default (`auto` when tools are offered).
    pub choice: Option<ToolChoice>,
    /// `Some(false)`: at most one call per answer.
    pub parallel: Option<bool>,
}

impl Tooling {
    pub fn offered(&self) -> bool {
        !self.tools.is_empty()
    }
}

/// The shape asked of the answer's text.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum ResponseFormat {
    #[default]
    Text,
    /// Some JSON object.
    JsonObject,
    /// A JSON value matching `schema`.
    JsonSchema {
        name: String,
        description: Option<String>,
        schema: Value,
        strict: Option<bool>,
    },
}

impl ResponseFormat {
    pub fn is_json(&self) -> bool {
        !matches!(self, ResponseFormat::Text)
    }
}

/// A piece of a streamed tool call: the first piece of each call carries its id and name, the
/// next ones more of its arguments. `index` tells the calls of one answer apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallDelta {
    pub index: u32,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
    pub signature: Option<String>,
}

impl ToolCallDelta {
    /// A whole call as one piece.
    pub fn whole(index: u32, call: ToolCall) -> ToolCallDelta {
        ToolCallDelta {
            index,
            id: Some(call.id),
            name: Some(call.name),
            arguments: call.arguments,
            signature: call.signature,
        }
    }
}

/// A fresh id for a tool call whose provider gave none (Gemini's often do not), in OpenAI's
/// shape.
pub fn new_call_id() -> String {
    format!("call_{}", uuid::Uuid::new_v4().simple())
}

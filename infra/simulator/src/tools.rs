//! Tool use, whatever the protocol: the tools a request offers, what it lets the model do with
//! them, the calls the simulated model makes, and how it answers a tool's result.
//!
//! A forced choice (a named tool, OpenAI `required`, Anthropic `any`, Gemini `ANY`) always calls;
//! `auto` calls only when the last user message asks with `[sim:tool]`, `[sim:tool=NAME]` or
//! `[sim:tools=N]`, and never right after a tool result, so a test's tool loop ends.

use serde_json::Value;

use crate::{
    schema,
    script::{split_tokens, Directives, Fnv, ToolAsk},
};

/// One tool the model may call.
#[derive(Clone, Debug, PartialEq)]
pub struct Tool<'a> {
    pub name: &'a str,
    /// JSON Schema (or Gemini's OpenAPI subset) of the arguments; none means no arguments.
    pub schema: Option<&'a Value>,
}

/// What the request lets the model do with its tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice<'a> {
    /// Never call (OpenAI / Anthropic `none`, Gemini `NONE`).
    None,
    /// Call when it sees fit (`auto`, Gemini `AUTO` / `VALIDATED`): here, when asked to.
    Auto,
    /// Call one or more tools (OpenAI `required`, Anthropic `any`, Gemini `ANY`).
    Required,
    /// Call this tool.
    Named(&'a str),
}

/// The tools of a request and how it lets the model use them.
#[derive(Clone, Debug, PartialEq)]
pub struct Toolbox<'a> {
    pub tools: Vec<Tool<'a>>,
    pub choice: Choice<'a>,
    /// The names the model may pick from (Gemini `allowedFunctionNames`, OpenAI `allowed_tools`);
    /// empty means every tool.
    pub allowed: Vec<&'a str>,
    /// Whether one answer may hold several calls.
    pub parallel: bool,
}

impl Default for Toolbox<'_> {
    fn default() -> Self {
        Self {
            tools: Vec::new(),
            choice: Choice::Auto,
            allowed: Vec::new(),
            parallel: true,
        }
    }
}

/// One call the simulated model makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub name: String,
    pub arguments: Value,
    /// The arguments as JSON text, as OpenAI sends them and as every stream spells them out.
    pub json: String,
    /// `json` cut into output tokens; the fragments a stream sends.
    pub fragments: Vec<String>,
}

impl Call {
    fn new(tool: &Tool<'_>) -> Self {
        let arguments = tool.schema.map(schema::example).unwrap_or_default();
        // Arguments are always an object, even when the schema says otherwise.
        let arguments = if arguments.is_object() {
            arguments
        } else {
            Value::Object(serde_json::Map::new())
        };
        let json = schema::spaced(&arguments);
        let fragments = split_tokens(&json).into_iter().map(str::to_owned).collect();
        Self {
            name: tool.name.to_owned(),
            arguments,
            json,
            fragments,
        }
    }
}

/// Most calls in one answer, whatever `[sim:tools=N]` says.
pub const MAX_CALLS: usize = 64;

/// The calls the model makes in answer, in order; empty when it answers with text.
///
/// `after_results` is whether the conversation ends with tool results: then only a forced choice
/// calls again (as the real models do), `auto` answers with text.
pub fn plan(toolbox: &Toolbox<'_>, directives: &Directives, after_results: bool) -> Vec<Call> {
    let candidates: Vec<&Tool<'_>> = toolbox
        .tools
        .iter()
        .filter(|tool| toolbox.allowed.is_empty() || toolbox.allowed.contains(&tool.name))
        .collect();
    let asked = directives.tool.is_some() || directives.tool_calls.is_some();
    let wanted = match (toolbox.choice, &directives.tool) {
        (Choice::Named(name), _) => Some(name),
        (_, Some(ToolAsk::Named(name))) => Some(name.as_str()),
        _ => None,
    };
    let forced = match toolbox.choice {
        Choice::None => return Vec::new(),
        Choice::Auto if after_results || !asked => return Vec::new(),
        Choice::Auto => false,
        Choice::Required | Choice::Named(_) => true,
    };
    let count = if toolbox.parallel {
        directives.tool_calls.unwrap_or(1).clamp(1, MAX_CALLS)
    } else {
        1
    };
    let named = wanted.and_then(|name| candidates.iter().find(|tool| tool.name == name));
    let picks: Vec<&Tool<'_>> = match (named, wanted) {
        (Some(tool), _) => vec![*tool; count],
        // A directive naming a tool that is not offered: a model cannot call it, so it answers
        // with text unless it must call something.
        (None, Some(_)) if !forced => return Vec::new(),
        _ => candidates.iter().copied().cycle().take(count).collect(),
    };
    picks.into_iter().map(Call::new).collect()
}

/// A tool call id: `prefix` then `length` letters and digits, derived from the request (`key`)
/// and the call's place in the answer, so ids are reproducible and unique within an answer.
pub fn call_id(prefix: &str, key: u64, index: usize, length: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut state = Fnv::new()
        .write(&key.to_string())
        .write(&index.to_string())
        .finish();
    let mut id = String::with_capacity(prefix.len() + length);
    id.push_str(prefix);
    for _ in 0..length {
        state = crate::script::xorshift(state);
        // The modulo keeps the index below the alphabet's length.
        id.push(char::from(
            ALPHABET[(state % ALPHABET.len() as u64) as usize],
        ));
    }
    id
}

/// The result of a tool call the conversation ends with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolResult {
    /// The result as text (JSON for Gemini's structured responses).
    pub content: String,
    /// Anthropic's `is_error`.
    pub is_error: bool,
}

/// The answer to the tool results a conversation ends with: each result quoted on its own line,
/// so an end-to-end test can check the result made the round trip.
pub fn results_text(results: &[ToolResult]) -> String {
    results
        .iter()
        .map(|result| {
            let verb = if result.is_error {
                "failed"
            } else {
                "returned"
            };
            format!("The tool {verb}: {}", result.content)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::script::parse_directives;

    fn toolbox<'a>(schemas: &'a [Value], choice: Choice<'a>) -> Toolbox<'a> {
        Toolbox {
            tools: ["get_weather", "get_time"]
                .iter()
                .zip(schemas)
                .map(|(name, schema)| Tool {
                    name,
                    schema: Some(schema),
                })
                .collect(),
            choice,
            ..Toolbox::default()
        }
    }

    fn schemas() -> Vec<Value> {
        vec![
            json!({"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}),
            json!({"type": "object", "properties": {}}),
        ]
    }

    #[test]
    fn auto_calls_only_when_asked_and_not_after_results() {
        let schemas = schemas();
        let auto = toolbox(&schemas, Choice::Auto);
        let (plain, _) = parse_directives("hi");
        let (asked, _) = parse_directives("[sim:tool] hi");
        assert!(plan(&auto, &plain, false).is_empty());
        let calls = plan(&auto, &asked, false);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(calls[0].json, r#"{"city": "simulated"}"#);
        assert_eq!(calls[0].fragments, vec![r#"{"city":"#, r#" "simulated"}"#]);
        assert!(plan(&auto, &asked, true).is_empty());
    }

    #[test]
    fn forced_choices_call_even_after_results() {
        let schemas = schemas();
        let (plain, _) = parse_directives("hi");
        let named = plan(&toolbox(&schemas, Choice::Named("get_time")), &plain, true);
        assert_eq!(named.len(), 1);
        assert_eq!(
            (named[0].name.as_str(), named[0].json.as_str()),
            ("get_time", "{}")
        );
        let required = plan(&toolbox(&schemas, Choice::Required), &plain, false);
        assert_eq!(required[0].name, "get_weather");
        assert!(plan(&toolbox(&schemas, Choice::None), &plain, false).is_empty());
    }

    #[test]
    fn several_calls_cycle_through_the_tools_unless_parallel_calls_are_off() {
        let schemas = schemas();
        let (three, _) = parse_directives("[sim:tools=3]");
        let names = |toolbox: &Toolbox<'_>| {
            plan(toolbox, &three, false)
                .into_iter()
                .map(|call| call.name)
                .collect::<Vec<_>>()
        };
        let mut auto = toolbox(&schemas, Choice::Auto);
        assert_eq!(names(&auto), ["get_weather", "get_time", "get_weather"]);
        auto.parallel = false;
        assert_eq!(names(&auto), ["get_weather"]);
        let (named, _) = parse_directives("[sim:tool=get_time][sim:tools=2]");
        assert_eq!(
            plan(&toolbox(&schemas, Choice::Auto), &named, false)
                .iter()
                .map(|call| call.name.as_str())
                .collect::<Vec<_>>(),
            ["get_time", "get_time"]
        );
        let (unknown, _) = parse_directives("[sim:tool=nope]");
        assert!(plan(&toolbox(&schemas, Choice::Auto), &unknown, false).is_empty());
        let mut allowed = toolbox(&schemas, Choice::Required);
        allowed.allowed = vec!["get_time"];
        assert_eq!(plan(&allowed, &unknown, false)[0].name, "get_time");
    }

    #[test]
    fn call_ids_are_reproducible_and_distinct() {
        let first = call_id("call_", 7, 0, 24);
        assert_eq!(first, call_id("call_", 7, 0, 24));
        assert_ne!(first, call_id("call_", 7, 1, 24));
        assert_eq!(first.len(), 29);
        assert!(first[5..].chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn results_are_quoted() {
        let results = [
            ToolResult {
                content: "sunny".to_owned(),
                is_error: false,
            },
            ToolResult {
                content: "timeout".to_owned(),
                is_error: true,
            },
        ];
        assert_eq!(
            results_text(&results),
            "The tool returned: sunny\nThe tool failed: timeout"
        );
    }
}

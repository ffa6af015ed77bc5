//! What a simulated model says and how it behaves: `[sim:…]` directives, the deterministic
//! answer, and the token counting every provider reports.
//!
//! Everything here is a pure function of the request (and the global [`SimulatorConfig`]), so a
//! test that sends the same prompt twice gets the same answer, the same usage and the same
//! failure, whichever provider protocol it went through.

use std::time::Duration;

use serde_json::Value;

use crate::{
    schema,
    tools::{self, Call, ToolResult, Toolbox},
    Provider, SimulatorConfig,
};

/// The per-request knobs, read from the last user message.
///
/// Each field overrides the matching [`SimulatorConfig`] default when present.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directives {
    /// `[sim:latency_ms=N]`: wait before the response headers.
    pub latency_ms: Option<u64>,
    /// `[sim:tps=N]`: tokens per second while streaming; 0 = unpaced.
    pub tokens_per_second: Option<u32>,
    /// `[sim:think_ms=N]`: when streaming, wait after the opening events before the first token.
    pub think_ms: Option<u64>,
    /// `[sim:tokens=N]`: length of the answer in output tokens.
    pub tokens: Option<usize>,
    /// `[sim:status=N]`: answer with this HTTP error status (400–599).
    pub status: Option<u16>,
    /// `[sim:cut=N]`: drop the connection after N streamed tokens (non-streaming: at once).
    pub cut_after: Option<usize>,
    /// `[sim:fail=N]`: after N streamed tokens, send the provider's in-stream error event.
    pub fail_after: Option<usize>,
    /// `[sim:echo]`: answer with the prompt itself.
    pub echo: bool,
    /// `[sim:flaky=N]` or `[sim:flaky=N:STATUS]`: fail the first N attempts of the same request
    /// with 503 (or STATUS).
    pub flaky: Option<(u32, u16)>,
    /// `[sim:retry_after=S]`: error answers carry `Retry-After: S`.
    pub retry_after: Option<u64>,
    /// `[sim:tool]` or `[sim:tool=NAME]`: under `auto` tool choice, call a tool.
    pub tool: Option<ToolAsk>,
    /// `[sim:tools=N]`: make N tool calls in one answer (under `auto`, also asks for them).
    pub tool_calls: Option<usize>,
}

/// Which tool `[sim:tool]` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolAsk {
    /// `[sim:tool]`: the first one offered.
    First,
    /// `[sim:tool=NAME]`: that one, when it is offered.
    Named(String),
}

/// Splits `text` into its directives and the text with every recognised directive removed.
///
/// Only the directive itself is removed, not the spaces around it, so `"[sim:echo] من"` echoes
/// `" من"`: that is how tests get a delta with a leading space. Anything that looks like a
/// directive but is not a known one with a valid value stays in the text, so a typo shows up
/// in the answer instead of being silently ignored.
pub fn parse_directives(text: &str) -> (Directives, String) {
    parse_directives_for(text, None)
}

/// As [`parse_directives`], for a request that arrived in `provider`'s protocol: a directive
/// suffixed `@openai`, `@anthropic` or `@gemini` applies only to requests in that protocol (it is
/// removed from the text either way).
pub fn parse_directives_for(text: &str, provider: Option<Provider>) -> (Directives, String) {
    const OPEN: &str = "[sim:";
    let mut directives = Directives::default();
    let mut stripped = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let after_open = &rest[start + OPEN.len()..];
        let Some(end) = after_open.find(']') else {
            break;
        };
        let body = &after_open[..end];
        let consumed = start + OPEN.len() + end + 1;
        // An unknown suffix leaves the body whole, so the directive reads as a typo.
        let (body, target) = match body.rsplit_once('@') {
            Some((inner, target)) => match Provider::named(target.trim()) {
                Some(target) => (inner, Some(target)),
                None => (body, None),
            },
            None => (body, None),
        };
        let mut elsewhere = Directives::default();
        let applies = target.is_none() || target == provider;
        let into = if applies {
            &mut directives
        } else {
            &mut elsewhere
        };
        if apply(into, body) {
            stripped.push_str(&rest[..start]);
        } else {
            stripped.push_str(&rest[..consumed]);
        }
        rest = &rest[consumed..];
    }
    stripped.push_str(rest);
    (directives, stripped)
}

/// Applies one directive body (`key` or `key=value`); false when it is not a valid directive.
fn apply(directives: &mut Directives, body: &str) -> bool {
    let (key, value) = match body.split_once('=') {
        Some((key, value)) => (key.trim(), Some(value.trim())),
        None => (body.trim(), None),
    };
    match (key, value) {
        ("echo", None) => directives.echo = true,
        ("latency_ms", Some(v)) => return set(&mut directives.latency_ms, v),
        ("tps", Some(v)) => return set(&mut directives.tokens_per_second, v),
        ("think_ms", Some(v)) => return set(&mut directives.think_ms, v),
        ("tokens", Some(v)) => return set(&mut directives.tokens, v),
        ("cut", Some(v)) => return set(&mut directives.cut_after, v),
        ("fail", Some(v)) => return set(&mut directives.fail_after, v),
        ("status", Some(v)) => match v.parse::<u16>() {
            Ok(status @ 400..=599) => directives.status = Some(status),
            _ => return false,
        },
        ("retry_after", Some(v)) => return set(&mut directives.retry_after, v),
        ("tool", None) => directives.tool = Some(ToolAsk::First),
        ("tool", Some(name)) if is_tool_name(name) => {
            directives.tool = Some(ToolAsk::Named(name.to_owned()));
        }
        ("tools", Some(v)) => match v.parse::<usize>() {
            Ok(count @ 1..=tools::MAX_CALLS) => directives.tool_calls = Some(count),
            _ => return false,
        },
        ("flaky", Some(v)) => {
            let (times, status) = v.split_once(':').unwrap_or((v, "503"));
            match (times.parse::<u32>(), status.parse::<u16>()) {
                (Ok(times), Ok(status @ 400..=599)) => directives.flaky = Some((times, status)),
                _ => return false,
            }
        }
        _ => return false,
    }
    true
}

/// Tool names as the providers allow them (Gemini also takes dots and colons).
fn is_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

fn set<T: std::str::FromStr>(slot: &mut Option<T>, value: &str) -> bool {
    match value.parse() {
        Ok(parsed) => {
            *slot = Some(parsed);
            true
        }
        Err(_) => false,
    }
}

/// What the conversation looks like to the simulator, once a provider module has read its own
/// request format.
#[derive(Debug)]
pub struct Turn<'a> {
    pub provider: Provider,
    pub model: &'a str,
    /// Text of the last user message, directives included. A message holding only tool results
    /// does not count: directives stay those of the message that started the tool loop.
    pub prompt: &'a str,
    /// Every piece of input text (system prompt, each message, tool calls and results, the tool
    /// definitions, the output schema), one entry per message or definition.
    pub inputs: Vec<&'a str>,
    /// The request's output limit (`max_tokens`, `maxOutputTokens`, …).
    pub max_tokens: Option<u32>,
    pub tools: Toolbox<'a>,
    /// The tool results the conversation ends with; empty when it ends otherwise.
    pub results: Vec<ToolResult>,
    pub output: Output<'a>,
    /// Input tokens of the request's images (a fixed price per image and provider).
    pub image_tokens: u32,
}

#[cfg(test)]
impl<'a> Turn<'a> {
    /// A plain text turn: no tools, no images, text output.
    pub fn text(
        provider: Provider,
        model: &'a str,
        prompt: &'a str,
        inputs: Vec<&'a str>,
        max_tokens: Option<u32>,
    ) -> Self {
        Self {
            provider,
            model,
            prompt,
            inputs,
            max_tokens,
            tools: Toolbox::default(),
            results: Vec::new(),
            output: Output::Text,
            image_tokens: 0,
        }
    }
}

/// The form the request wants the answer in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Output<'a> {
    Text,
    /// A JSON value: of this schema's type, or without one a small object (`{"answer": …}`).
    Json(Option<&'a Value>),
}

/// Why the answer ended, in provider-neutral terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The answer is complete.
    Stop,
    /// The request's output limit cut the answer.
    Length,
    /// The answer is tool calls, waiting for their results.
    ToolUse,
}

/// How a request is to be answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answer with this error status in the provider's error shape.
    Fail(u16),
    /// Close the connection without any response.
    Drop,
    /// Answer normally (a stream may still be cut or fail part-way, see [`Script`]).
    Answer,
}

/// The whole behaviour of one simulated call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    /// Delay before the response headers.
    pub latency: Duration,
    /// Delay between two streamed tokens, when paced.
    pub pacing: Option<Duration>,
    /// Delay between the opening events of a stream and its first token.
    pub think: Option<Duration>,
    pub status: Option<u16>,
    pub cut_after: Option<usize>,
    pub fail_after: Option<usize>,
    /// Fail the first N attempts of this same request with this status.
    pub flaky: Option<(u32, u16)>,
    /// Seconds an error answer tells the client to wait.
    pub retry_after: Option<u64>,
    /// The request, for counting its attempts: its protocol, model and every input.
    pub key: u64,
    /// The answer, one output token per entry; their concatenation is the answer text. Empty
    /// when the answer is tool calls.
    pub tokens: Vec<String>,
    /// The tool calls the answer makes instead of text.
    pub calls: Vec<Call>,
    pub finish: Finish,
    /// Every input token, images included.
    pub input_tokens: u32,
    /// The part of `input_tokens` that images account for.
    pub image_tokens: u32,
}

impl Script {
    /// Waits the latency asked for before the response headers, and not at all when it is zero:
    /// a zero-length sleep still waits for the runtime's next timer tick (up to a millisecond),
    /// which would make every answer of a provider meant to be instant take a millisecond.
    pub async fn wait_latency(&self) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }

    /// Plans the answer to `turn`: directives in the prompt win over the global config.
    pub fn new(config: &SimulatorConfig, turn: &Turn<'_>) -> Self {
        let (directives, prompt) = parse_directives_for(turn.prompt, Some(turn.provider));
        let tokens_per_second = directives
            .tokens_per_second
            .unwrap_or(config.tokens_per_second);
        let calls = tools::plan(&turn.tools, &directives, !turn.results.is_empty());
        let (mut tokens, mut finish) = if calls.is_empty() {
            (
                text_answer(config, turn, &directives, &prompt),
                Finish::Stop,
            )
        } else {
            (Vec::new(), Finish::ToolUse)
        };
        // Tool calls are never cut: a half-written call is of no use to a test.
        if let Some(limit) = turn.max_tokens.filter(|_| finish == Finish::Stop) {
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            if tokens.len() > limit {
                tokens.truncate(limit);
                finish = Finish::Length;
            }
        }
        Self {
            latency: Duration::from_millis(directives.latency_ms.unwrap_or(config.latency_ms)),
            pacing: (tokens_per_second > 0)
                .then(|| Duration::from_secs_f64(1.0 / f64::from(tokens_per_second))),
            think: directives.think_ms.map(Duration::from_millis),
            status: directives.status.or(config.status),
            cut_after: directives.cut_after.or(config.cut_after),
            fail_after: directives.fail_after.or(config.fail_after),
            flaky: directives.flaky,
            retry_after: directives.retry_after,
            key: turn
                .inputs
                .iter()
                .fold(
                    Fnv::new().write(turn.provider.label()).write(turn.model),
                    |h, input| h.write(input),
                )
                .finish(),
            tokens,
            calls,
            finish,
            input_tokens: input_tokens(&turn.inputs).saturating_add(turn.image_tokens),
            image_tokens: turn.image_tokens,
        }
    }

    /// What to do once the latency has passed.
    pub fn outcome(&self, stream: bool) -> Outcome {
        if let Some(status) = self.status {
            return Outcome::Fail(status);
        }
        if !stream && self.cut_after.is_some() {
            return Outcome::Drop;
        }
        Outcome::Answer
    }

    /// The complete answer text.
    pub fn text(&self) -> String {
        self.tokens.concat()
    }

    /// Output tokens: the answer's tokens, or the tokens of every call's arguments.
    pub fn output_tokens(&self) -> u32 {
        let calls: usize = self.calls.iter().map(|call| call.fragments.len()).sum();
        u32::try_from(self.tokens.len() + calls).unwrap_or(u32::MAX)
    }

    /// How a stream of this script ends.
    pub fn ending(&self) -> crate::sse::Ending {
        // A cut wins over a failure at the same point: a dropped connection cannot send anything.
        match (self.cut_after, self.fail_after) {
            (Some(cut), Some(fail)) if fail < cut => crate::sse::Ending::Fail(fail),
            (Some(cut), _) => crate::sse::Ending::Cut(cut),
            (None, Some(fail)) => crate::sse::Ending::Fail(fail),
            (None, None) => crate::sse::Ending::Complete,
        }
    }
}

/// The text (or JSON) answer, before any output limit cuts it.
fn text_answer(
    config: &SimulatorConfig,
    turn: &Turn<'_>,
    directives: &Directives,
    prompt: &str,
) -> Vec<String> {
    let after_results = (!turn.results.is_empty()).then(|| tools::results_text(&turn.results));
    let owned =
        |text: &str| -> Vec<String> { split_tokens(text).into_iter().map(str::to_owned).collect() };
    if let Output::Json(schema) = turn.output {
        let json = match schema {
            Some(schema) => schema::example(schema),
            None => {
                let answer =
                    after_results.unwrap_or_else(|| header(turn.provider, turn.model, prompt));
                serde_json::json!({ "answer": answer })
            }
        };
        return owned(&schema::spaced(&json));
    }
    if let Some(text) = after_results {
        return owned(&text);
    }
    if directives.echo || config.echo {
        return owned(prompt);
    }
    let target = directives
        .tokens
        .unwrap_or(config.answer_tokens)
        .min(MAX_ANSWER_TOKENS);
    answer_tokens(turn.provider, turn.model, prompt, target)
}

/// Splits text into output tokens: each token is a run of whitespace followed by a run of
/// non-whitespace (a word with its leading space), so the tokens concatenate back to the exact
/// text. Trailing whitespace stays with the last word.
pub fn split_tokens(text: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let mut start = 0;
    let mut in_word = false;
    for (index, ch) in text.char_indices() {
        if ch.is_whitespace() {
            if in_word {
                tokens.push(&text[start..index]);
                start = index;
                in_word = false;
            }
        } else {
            in_word = true;
        }
    }
    if start < text.len() {
        if in_word || tokens.is_empty() {
            tokens.push(&text[start..]);
        } else if let Some(last) = tokens.last_mut() {
            // Only whitespace is left: widen the last token over it rather than emitting a
            // token with no word in it.
            let begin = start - last.len();
            *last = &text[begin..];
        }
    }
    tokens
}

/// Input tokens: about four characters per token, plus a small overhead per message and per
/// request, like the providers' own chat templates. Directives are not counted.
pub fn input_tokens(inputs: &[&str]) -> u32 {
    const PER_MESSAGE: usize = 3;
    const PER_REQUEST: usize = 3;
    let total: usize = inputs
        .iter()
        .map(|text| {
            let (_, stripped) = parse_directives(text);
            stripped.chars().count().div_ceil(4) + PER_MESSAGE
        })
        .sum();
    u32::try_from(total + PER_REQUEST).unwrap_or(u32::MAX)
}

/// Words the filler is drawn from: plain ASCII so the token count of an answer is obvious.
const FILLER: &[&str] = &[
    "the",
    "model",
    "answers",
    "with",
    "simulated",
    "text",
    "so",
    "tests",
    "can",
    "count",
    "every",
    "token",
    "that",
    "streams",
    "through",
    "gateway",
    "and",
    "check",
    "usage",
    "matches",
    "what",
    "was",
    "sent",
    "to",
    "client",
    "while",
    "latency",
    "stays",
    "low",
    "each",
    "word",
    "is",
    "one",
    "chunk",
    "in",
    "order",
    "deterministic",
    "output",
    "helps",
    "debugging",
    "quota",
    "limits",
    "hold",
    "under",
    "load",
    "billing",
    "stays",
    "exact",
];

/// Longest generated answer: a typo like `[sim:tokens=1000000000]` must not exhaust memory.
pub const MAX_ANSWER_TOKENS: usize = 100_000;

/// How many words of the prompt the answer quotes.
const QUOTED_WORDS: usize = 8;

/// The deterministic answer: a header quoting the prompt, then filler words chosen by a PRNG
/// seeded from the provider, model and prompt, up to `target` tokens.
fn answer_tokens(provider: Provider, model: &str, prompt: &str, target: usize) -> Vec<String> {
    let header = header(provider, model, prompt);
    let mut tokens: Vec<String> = split_tokens(&header)
        .into_iter()
        .take(target)
        .map(str::to_owned)
        .collect();
    let mut rng = Fnv::new()
        .write(provider.label())
        .write(model)
        .write(prompt)
        .finish();
    let mut sentence_start = true;
    while tokens.len() < target {
        rng = xorshift(rng);
        let index = usize::try_from(rng % FILLER.len() as u64).unwrap_or(0);
        let word = FILLER[index];
        let last = tokens.len() + 1 == target;
        // Every eighth word closes a sentence so long answers read like text, not a word list.
        let closes = last || (tokens.len() % 8 == 7);
        let mut token = String::with_capacity(word.len() + 2);
        token.push(' ');
        if sentence_start {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                token.extend(first.to_uppercase());
                token.push_str(chars.as_str());
            }
        } else {
            token.push_str(word);
        }
        if closes {
            token.push('.');
        }
        sentence_start = closes;
        tokens.push(token);
    }
    tokens
}

/// The answer's first sentence, quoting the prompt's first words.
fn header(provider: Provider, model: &str, prompt: &str) -> String {
    let words: Vec<&str> = prompt.split_whitespace().collect();
    let mut quote = words
        .iter()
        .take(QUOTED_WORDS)
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    if quote.is_empty() {
        format!("Simulated {} answer ({model}).", provider.label())
    } else {
        if words.len() > QUOTED_WORDS {
            quote.push('…');
        } else {
            let trimmed = quote.trim_end_matches(['.', '!', '?', ',', ';', ':']).len();
            quote.truncate(trimmed);
            quote.push('.');
        }
        format!(
            "Simulated {} answer ({model}) to: {quote}",
            provider.label()
        )
    }
}

/// FNV-1a: a stable hash (unlike `DefaultHasher`, whose algorithm may change between Rust
/// releases) so answers stay the same across builds.
pub struct Fnv(u64);

impl Fnv {
    pub fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    #[must_use]
    pub fn write(mut self, text: &str) -> Self {
        for byte in text.bytes().chain(std::iter::once(0xff)) {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv {
    fn default() -> Self {
        Self::new()
    }
}

pub fn xorshift(mut x: u64) -> u64 {
    // xorshift needs a non-zero state.
    if x == 0 {
        x = 0x9e37_79b9_7f4a_7c15;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flaky_retry_after_and_provider_suffixes_are_read() {
        let (d, text) = parse_directives("[sim:flaky=2][sim:retry_after=3] hi");
        assert_eq!(
            (d.flaky, d.retry_after, text.as_str()),
            (Some((2, 503)), Some(3), " hi")
        );
        let (d, _) = parse_directives("[sim:flaky=1:529]");
        assert_eq!(d.flaky, Some((1, 529)));
        let prompt = "[sim:status=503@openai][sim:latency_ms=5@gemini] hi";
        let (openai, text) = parse_directives_for(prompt, Some(Provider::OpenAi));
        assert_eq!(
            (openai.status, openai.latency_ms, text.as_str()),
            (Some(503), None, " hi")
        );
        let (gemini, text) = parse_directives_for(prompt, Some(Provider::Gemini));
        assert_eq!(
            (gemini.status, gemini.latency_ms, text.as_str()),
            (None, Some(5), " hi")
        );
        let (typo, text) = parse_directives("[sim:flaky=x] [sim:status=503@nobody]");
        assert_eq!(typo, Directives::default());
        assert_eq!(text, "[sim:flaky=x] [sim:status=503@nobody]");
    }

    fn turn<'a>(prompt: &'a str, max_tokens: Option<u32>) -> Turn<'a> {
        Turn::text(
            Provider::OpenAi,
            "gpt-4o-mini",
            prompt,
            vec![prompt],
            max_tokens,
        )
    }

    #[test]
    fn directives_are_parsed_and_only_they_are_stripped() {
        // GIVEN a prompt mixing known directives, an unknown one and a bad value
        let prompt = "[sim:echo] hi [sim:tokens=5][sim:tps=0] [sim:nope=1] [sim:status=200] x";
        // WHEN it is parsed
        let (directives, text) = parse_directives(prompt);
        // THEN known directives are read and removed, the rest stays verbatim
        assert!(directives.echo);
        assert_eq!(directives.tokens, Some(5));
        assert_eq!(directives.tokens_per_second, Some(0));
        assert_eq!(directives.status, None);
        assert_eq!(text, " hi  [sim:nope=1] [sim:status=200] x");
    }

    #[test]
    fn unterminated_directive_is_kept() {
        let (directives, text) = parse_directives("a [sim:echo");
        assert_eq!(directives, Directives::default());
        assert_eq!(text, "a [sim:echo");
    }

    #[test]
    fn tokens_concatenate_back_to_the_text() {
        for text in [
            "",
            " ",
            "one",
            " من",
            "hello  world\n\nnext line  ",
            "\tleading tab",
            "émoji 🎉 mixed",
        ] {
            let tokens = split_tokens(text);
            assert_eq!(tokens.concat(), text, "{text:?}");
            assert!(tokens.iter().all(|t| !t.is_empty()), "{text:?}");
        }
        assert_eq!(split_tokens(" من و"), vec![" من", " و"]);
        assert_eq!(split_tokens("a b  "), vec!["a", " b  "]);
    }

    #[test]
    fn answer_has_the_target_length_and_is_deterministic() {
        // GIVEN the default config and a prompt asking for 40 tokens
        let config = SimulatorConfig::default();
        let prompt = "Tell me a story about a dragon [sim:tokens=40]";
        // WHEN it is scripted twice
        let first = Script::new(&config, &turn(prompt, None));
        let second = Script::new(&config, &turn(prompt, None));
        // THEN both answers are identical, 40 tokens long, and quote the prompt
        assert_eq!(first, second);
        assert_eq!(first.tokens.len(), 40);
        assert_eq!(first.finish, Finish::Stop);
        assert!(first.text().starts_with(
            "Simulated OpenAI answer (gpt-4o-mini) to: Tell me a story about a dragon."
        ));
        assert!(first.text().ends_with('.'));
    }

    #[test]
    fn default_answer_is_about_24_tokens() {
        let script = Script::new(&SimulatorConfig::default(), &turn("Hi!", None));
        assert_eq!(script.tokens.len(), 24);
        assert_eq!(script.output_tokens(), 24);
    }

    #[test]
    fn huge_token_requests_are_capped() {
        let script = Script::new(
            &SimulatorConfig::default(),
            &turn("[sim:tokens=18446744073709551615]", None),
        );
        assert_eq!(script.tokens.len(), MAX_ANSWER_TOKENS);
    }

    #[test]
    fn max_tokens_cuts_the_answer() {
        let script = Script::new(&SimulatorConfig::default(), &turn("Hi", Some(5)));
        assert_eq!(script.tokens.len(), 5);
        assert_eq!(script.finish, Finish::Length);
    }

    #[test]
    fn echo_returns_the_prompt_without_directives() {
        let script = Script::new(&SimulatorConfig::default(), &turn("[sim:echo] من", None));
        assert_eq!(script.text(), " من");
        assert_eq!(script.tokens, vec![" من"]);
    }

    #[test]
    fn input_tokens_ignore_directives() {
        assert_eq!(input_tokens(&["abcd"]), 1 + 3 + 3);
        assert_eq!(input_tokens(&["abcde [sim:echo]"]), 2 + 3 + 3);
        assert_eq!(input_tokens(&["من", ""]), 1 + 3 + 3 + 3);
    }

    #[test]
    fn tool_directives_are_read_and_bad_ones_kept() {
        let (d, text) = parse_directives("[sim:tool] a [sim:tool=get_weather][sim:tools=3]");
        assert_eq!(
            (d.tool, d.tool_calls, text.as_str()),
            (
                Some(ToolAsk::Named("get_weather".to_owned())),
                Some(3),
                " a "
            )
        );
        let (d, text) = parse_directives("[sim:tools=0][sim:tools=65][sim:tool=a b]");
        assert_eq!(d, Directives::default());
        assert_eq!(text, "[sim:tools=0][sim:tools=65][sim:tool=a b]");
    }

    #[test]
    fn tool_calls_count_their_arguments_and_ignore_max_tokens() {
        let schema = serde_json::json!({"type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"]});
        let mut turn = turn("Weather? [sim:tool]", Some(1));
        turn.tools = Toolbox {
            tools: vec![crate::tools::Tool {
                name: "get_weather",
                schema: Some(&schema),
            }],
            ..Toolbox::default()
        };
        let script = Script::new(&SimulatorConfig::default(), &turn);
        assert_eq!(script.finish, Finish::ToolUse);
        assert!(script.tokens.is_empty());
        assert_eq!(script.calls[0].json, r#"{"city": "simulated", "days": 1}"#);
        assert_eq!(script.output_tokens(), 4);
    }

    #[test]
    fn results_json_and_images_shape_the_answer() {
        let config = SimulatorConfig::default();
        let mut after = turn("[sim:tool] Weather?", None);
        after.results = vec![ToolResult {
            content: "sunny".to_owned(),
            is_error: false,
        }];
        assert_eq!(
            Script::new(&config, &after).text(),
            "The tool returned: sunny"
        );
        after.output = Output::Json(None);
        assert_eq!(
            Script::new(&config, &after).text(),
            r#"{"answer": "The tool returned: sunny"}"#
        );
        let schema = serde_json::json!({"type": "object", "properties": {"n": {"type": "number"}}});
        let mut json = turn("Hi", None);
        json.output = Output::Json(Some(&schema));
        json.image_tokens = 85;
        let script = Script::new(&config, &json);
        assert_eq!(script.text(), r#"{"n": 1.5}"#);
        assert_eq!(script.tokens, vec![r#"{"n":"#, " 1.5}"]);
        assert_eq!(script.input_tokens, input_tokens(&["Hi"]) + 85);
        assert_eq!(script.image_tokens, 85);
    }

    #[test]
    fn outcome_follows_directives() {
        let config = SimulatorConfig::default();
        let failing = Script::new(&config, &turn("[sim:status=429]", None));
        assert_eq!(failing.outcome(true), Outcome::Fail(429));
        let cut = Script::new(&config, &turn("[sim:cut=3]", None));
        assert_eq!(cut.outcome(false), Outcome::Drop);
        assert_eq!(cut.outcome(true), Outcome::Answer);
        assert_eq!(cut.ending(), crate::sse::Ending::Cut(3));
    }
}

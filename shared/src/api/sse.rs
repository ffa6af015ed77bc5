//! The one SSE encoder: what the stream endpoint writes. Framing follows the SSE standard: a delta
//! with line breaks becomes several `data:` lines, and the single space after `data:` is the
//! separator, so a delta that starts with a space keeps it (`data:  من`).

use bytes::Bytes;

/// One unnamed event carrying `text` (what `onmessage` clients receive).
pub fn data(text: &str) -> Bytes {
    event(None, text)
}

/// One event named `name`.
pub fn named(name: &str, text: &str) -> Bytes {
    event(Some(name), text)
}

/// The end of the stream, as OpenAI's clients expect it.
pub fn done() -> Bytes {
    data("[DONE]")
}

fn event(name: Option<&str>, text: &str) -> Bytes {
    let mut out = String::with_capacity(text.len() + 16);
    if let Some(name) = name {
        out.push_str("event: ");
        out.push_str(name);
        out.push('\n');
    }
    // Every line ending an SSE parser knows (CRLF, CR, LF) splits the text into data lines.
    let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
    for line in normalized.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::sse::SseDecoder;

    #[test]
    fn frames_follow_the_standard() {
        assert_eq!(data("Hello"), "data: Hello\n\n");
        assert_eq!(data(" من"), "data:  من\n\n");
        assert_eq!(data("a\nb\r\nc"), "data: a\ndata: b\ndata: c\n\n");
        assert_eq!(data(""), "data: \n\n");
        assert_eq!(named("usage", "{}"), "event: usage\ndata: {}\n\n");
        assert_eq!(done(), "data: [DONE]\n\n");
    }

    #[test]
    fn every_delta_round_trips_through_a_standard_decoder() {
        for text in [
            " من",
            "line\nbreak",
            "\n\nleading",
            "trailing\n",
            "  two spaces",
            "tab\tx",
        ] {
            let mut decoder = SseDecoder::new();
            let events = decoder.push(&data(text));
            assert_eq!(events.len(), 1, "{text:?}");
            assert_eq!(events[0].data, text, "{text:?}");
        }
    }
}

//! The one SSE encoder: what the stream endpoint writes. Framing follows the SSE standard: a delta
//! with line breaks becomes several `data:` lines, and the single space after `data:` is the
//! separator, so a delta that starts with a space keeps it (`data:  من`).

use bytes::Bytes;

/// One unnamed event carrying `text` (what `onmessage` clients receive).
pub fn data(text: &str) -> Bytes {
    event(None, text)
}

/// One piece of an answer's text, as unnamed events. A piece that reads as the end of the stream
/// (`[DONE]`, give or take surrounding whitespace) is sent as two events, split inside the marker,
/// so no answer can forge the terminator: clients concatenate the pieces back.
pub fn text(text: &str) -> Bytes {
    const DONE: &str = "[DONE]";
    if text.trim() != DONE {
        return data(text);
    }
    let split = text.find(DONE).map_or(0, |at| at + DONE.len() / 2);
    let (head, tail) = text.split_at(split);
    let mut both = bytes::BytesMut::from(data(head).as_ref());
    both.extend_from_slice(&data(tail));
    both.freeze()
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
    fn no_piece_of_text_forges_the_terminator() {
        for forged in ["[DONE]", " [DONE]", "[DONE] ", "\n[DONE]\n", "  [DONE]\t"] {
            let mut decoder = SseDecoder::new();
            let events = decoder.push(&text(forged));
            assert!(events.len() >= 2, "{forged:?}");
            assert!(
                events.iter().all(|e| e.data.trim() != "[DONE]"),
                "{forged:?}: {events:?}"
            );
            let joined: String = events.iter().map(|e| e.data.as_str()).collect();
            assert_eq!(joined, forged.replace('\r', ""), "{forged:?}");
        }
        assert_eq!(text("not [DONE] yet"), data("not [DONE] yet"));
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

//! The one upstream Server-Sent Events decoder: bytes as they arrive off the network in, whole
//! events out. Lines are cut on raw bytes and only decoded once complete, so a multi-byte UTF-8
//! character split across network chunks comes out whole.
//! Follows <https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation>.

/// One event: its `event:` name (if any) and its `data:` lines joined with `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// The longest line a stream may send: past it the stream is refused, not buffered for ever.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// The most data one event may carry.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// Accumulates bytes and yields complete events. Work is linear in the bytes however they are
/// split: a line is scanned once, and consumed lines leave the buffer together.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buffer: Vec<u8>,
    /// Where the search for the next line end resumes (bytes before it hold none).
    scanned: usize,
    event: Option<String>,
    data: Vec<String>,
    data_bytes: usize,
    has_data: bool,
    overflowed: bool,
}

impl SseDecoder {
    pub fn new() -> SseDecoder {
        SseDecoder::default()
    }

    /// Feeds a chunk; returns the events it completed. Nothing more once a line or an event
    /// went past its cap (see [`SseDecoder::overflowed`]).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        if self.overflowed {
            return events;
        }
        self.buffer.extend_from_slice(chunk);
        let mut start = 0;
        while !self.overflowed {
            let from = self.scanned.max(start);
            let Some(offset) = self.buffer[from..]
                .iter()
                .position(|b| *b == b'\n' || *b == b'\r')
            else {
                self.scanned = self.buffer.len();
                break;
            };
            let end = from + offset;
            // A CR LF pair is one line ending; a lone CR at the very end may be the first half of
            // one, so wait for the next byte.
            let mut next = end + 1;
            if self.buffer[end] == b'\r' {
                match self.buffer.get(end + 1) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => {
                        self.scanned = end;
                        break;
                    }
                }
            }
            let line = String::from_utf8_lossy(&self.buffer[start..end]).into_owned();
            start = next;
            self.scanned = next;
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
        }
        self.buffer.drain(..start.min(self.buffer.len()));
        self.scanned = self.scanned.saturating_sub(start);
        if self.buffer.len() > MAX_LINE_BYTES {
            self.overflow();
        }
        events
    }

    /// Whether a line or an event went past its cap: the stream is not to be trusted further.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    fn overflow(&mut self) {
        self.overflowed = true;
        self.buffer = Vec::new();
        self.data = Vec::new();
        self.has_data = false;
    }

    /// What is left when the stream ends: an event not terminated by a blank line is dropped, as
    /// the standard says; the caller learns the stream was cut from the missing terminal event.
    pub fn has_partial_event(&self) -> bool {
        self.has_data || !self.buffer.is_empty()
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            if !self.has_data {
                self.event = None;
                return None;
            }
            self.has_data = false;
            self.data_bytes = 0;
            return Some(SseEvent {
                event: self.event.take(),
                data: std::mem::take(&mut self.data).join("\n"),
            });
        }
        if line.starts_with(':') {
            return None; // A comment, such as a keep-alive.
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => {
                self.data_bytes = self.data_bytes.saturating_add(value.len() + 1);
                if self.data_bytes > MAX_EVENT_BYTES {
                    self.overflow();
                    return None;
                }
                self.data.push(value.to_owned());
                self.has_data = true;
            }
            _ => {} // id, retry and unknown fields carry nothing we use.
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_by_byte_gives_what_one_chunk_gives() {
        let stream = b"event: a\r\ndata: x\r\n\r\ndata: y\ndata: z\n\n: ping\rdata: w\r\r\n";
        let whole = SseDecoder::new().push(stream);
        let mut decoder = SseDecoder::new();
        let pieces: Vec<SseEvent> = stream.iter().flat_map(|b| decoder.push(&[*b])).collect();
        assert_eq!(pieces, whole);
        assert_eq!(whole.len(), 3);
    }

    #[test]
    fn a_line_or_an_event_past_its_cap_stops_the_stream() {
        let mut decoder = SseDecoder::new();
        let line = vec![b'a'; MAX_LINE_BYTES + 1];
        assert!(decoder.push(b"data: ").is_empty());
        assert!(decoder.push(&line).is_empty());
        assert!(decoder.overflowed());
        assert!(decoder.push(b"\n\ndata: late\n\n").is_empty());

        let mut decoder = SseDecoder::new();
        let piece = format!("data: {}\n", "b".repeat(MAX_LINE_BYTES / 2));
        for _ in 0..(MAX_EVENT_BYTES / (MAX_LINE_BYTES / 2)) + 1 {
            decoder.push(piece.as_bytes());
        }
        assert!(decoder.overflowed());
    }

    #[test]
    fn decodes_named_multiline_events_with_any_line_ending() {
        let mut decoder = SseDecoder::new();
        let events = decoder.push(b"event: ping\r\ndata: {}\r\n\r\n: keep-alive\n\ndata: a\ndata:  b\n\ndata: c\rdata: d\r\r\n");
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: Some("ping".into()),
                    data: "{}".into()
                },
                SseEvent {
                    event: None,
                    data: "a\n b".into()
                },
                SseEvent {
                    event: None,
                    data: "c\nd".into()
                },
            ]
        );
        assert!(!decoder.has_partial_event());
    }

    #[test]
    fn utf8_split_across_chunks_comes_out_whole() {
        let text = "data: من ünï\n\n".as_bytes();
        let mut decoder = SseDecoder::new();
        let mut events = Vec::new();
        for byte in text {
            events.extend(decoder.push(std::slice::from_ref(byte)));
        }
        assert_eq!(
            events,
            vec![SseEvent {
                event: None,
                data: "من ünï".into()
            }]
        );
    }

    #[test]
    fn a_cut_event_is_not_emitted() {
        let mut decoder = SseDecoder::new();
        assert!(decoder.push(b"data: {\"partial\"").is_empty());
        assert!(decoder.has_partial_event());
    }

    #[test]
    fn crlf_split_between_chunks_is_one_line_ending() {
        let mut decoder = SseDecoder::new();
        assert!(decoder.push(b"data: x\r").is_empty());
        assert!(decoder.push(b"\n").is_empty());
        assert_eq!(decoder.push(b"\r\n").len(), 1);
    }
}

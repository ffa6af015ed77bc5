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

/// Accumulates bytes and yields complete events.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buffer: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
    has_data: bool,
}

impl SseDecoder {
    pub fn new() -> SseDecoder {
        SseDecoder::default()
    }

    /// Feeds a chunk; returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n' || *b == b'\r') {
            // A CR LF pair is one line ending; a lone CR at the very end may be the first half of
            // one, so wait for the next byte.
            let mut consumed = end + 1;
            if self.buffer[end] == b'\r' {
                match self.buffer.get(end + 1) {
                    Some(b'\n') => consumed += 1,
                    Some(_) => {}
                    None => break,
                }
            }
            let line: Vec<u8> = self.buffer.drain(..consumed).take(end).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
        }
        events
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

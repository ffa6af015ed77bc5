//! The one stream writer: Server-Sent Events framing, and the paced playback of a scripted
//! stream (latency between tokens, a cut connection, an in-stream error).

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// A `data:` event, the only kind OpenAI sends.
pub fn data(payload: &impl Serialize) -> Bytes {
    Bytes::from(format!("data: {}\n\n", to_json(payload)))
}

/// A `data:` event ended with CRLFs, as Gemini's `alt=sse` stream writes them.
pub fn data_crlf(payload: &impl Serialize) -> Bytes {
    Bytes::from(format!("data: {}\r\n\r\n", to_json(payload)))
}

/// A named event, as Anthropic sends every event.
pub fn event(name: &str, payload: &impl Serialize) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {}\n\n", to_json(payload)))
}

/// OpenAI's end-of-stream sentinel.
pub fn done() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

/// Serialises a wire type; our own wire types cannot fail to serialise (no maps with non-string
/// keys, no custom serializers), so a failure is a bug worth seeing in the stream, not a panic.
pub fn to_json(payload: &impl Serialize) -> String {
    serde_json::to_string(payload)
        .unwrap_or_else(|error| format!("{{\"simulator_error\":\"{error}\"}}"))
}

/// How a stream ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Every token, then the provider's closing events.
    Complete,
    /// After this many tokens the connection drops: no closing events, no clean end of body.
    Cut(usize),
    /// After this many tokens the provider's in-stream error event, then a clean end.
    Fail(usize),
}

/// A stream to play: opening frames, one frame per token, closing frames.
#[derive(Debug)]
pub struct Playback {
    pub head: Vec<Bytes>,
    pub tokens: Vec<Bytes>,
    pub tail: Vec<Bytes>,
    /// Frames sent instead of the tail when the stream fails.
    pub error: Vec<Bytes>,
    /// Delay before every token frame but the first.
    pub pacing: Option<Duration>,
    /// Delay before the first token frame, after the opening ones.
    pub think: Option<Duration>,
    pub ending: Ending,
}

/// Time given to the socket to flush what was written before a cut: the HTTP server buffers
/// frames that are ready together, and a body error discards whatever is still buffered.
const FLUSH_BEFORE_CUT: Duration = Duration::from_millis(25);

impl Playback {
    /// The response body. Frames are produced by a task so pacing never holds up the server, and
    /// the task stops as soon as the client goes away (the channel closes).
    pub fn into_body(self) -> Body {
        let (sender, receiver) = mpsc::channel(16);
        tokio::spawn(async move {
            // An error only means the client left; nothing is left to do.
            let _ = self.play(&sender).await;
        });
        Body::from_stream(ReceiverStream::new(receiver))
    }

    async fn play(
        self,
        sender: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) -> Result<(), mpsc::error::SendError<Result<Bytes, std::io::Error>>> {
        for frame in self.head {
            sender.send(Ok(frame)).await?;
        }
        let limit = match self.ending {
            Ending::Complete => usize::MAX,
            Ending::Cut(after) | Ending::Fail(after) => after,
        };
        for (index, frame) in self.tokens.into_iter().take(limit).enumerate() {
            let wait = if index == 0 { self.think } else { self.pacing };
            if let Some(wait) = wait {
                tokio::time::sleep(wait).await;
            }
            sender.send(Ok(frame)).await?;
        }
        match self.ending {
            Ending::Complete => {
                for frame in self.tail {
                    sender.send(Ok(frame)).await?;
                }
            }
            Ending::Fail(_) => {
                for frame in self.error {
                    sender.send(Ok(frame)).await?;
                }
            }
            Ending::Cut(_) => {
                tokio::time::sleep(FLUSH_BEFORE_CUT).await;
                // A body error makes the server abort the connection without the final chunk,
                // which is what a client sees when a provider's connection drops.
                sender
                    .send(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "simulated connection cut",
                    )))
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_follow_each_providers_framing() {
        let payload = serde_json::json!({"a": 1});
        assert_eq!(&data(&payload)[..], b"data: {\"a\":1}\n\n");
        assert_eq!(&data_crlf(&payload)[..], b"data: {\"a\":1}\r\n\r\n");
        assert_eq!(
            &event("ping", &payload)[..],
            b"event: ping\ndata: {\"a\":1}\n\n"
        );
    }
}

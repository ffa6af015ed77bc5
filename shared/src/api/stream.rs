//! `POST /api/v1/ai/chat/stream`: the same checks and accounting as `/chat`, the answer as
//! Server-Sent Events written the moment each piece arrives from the provider.

use std::convert::Infallible;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use lambda_http::{Request, RequestExt};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::extract::principal;
use super::{chat_input, respond, sse};
use crate::error::GatewayError;
use crate::limits;
use crate::metered::{self, MeteredStream, Piece, StreamEnd, StreamSummary};
use crate::providers::{FinishReason, ToolCallDelta};
use crate::state::AppState;

/// Every response of the stream endpoint, errors included: a body Lambda can stream.
pub type StreamingBody = BoxBody<Bytes, Infallible>;
pub type StreamingResponse = Response<StreamingBody>;

/// Frames buffered between the provider and a slow client; past that, reading upstream waits.
const CHANNEL_FRAMES: usize = 64;
/// Time kept back from a stream's deadline to settle it and close the body.
const SETTLE_MARGIN: Duration = Duration::from_secs(10);
/// How long a closing event waits for room in front of a client that stopped reading.
const CLOSING_WAIT: Duration = Duration::from_secs(2);

/// When a stream must be cut so that it is still settled: before the Lambda invocation's deadline
/// (the function is killed then, and an unsettled request is charged nothing), and before its
/// token hold would count as abandoned.
pub(crate) fn stream_deadline(request: &Request, started: Instant) -> Instant {
    let hold_ends = started + Duration::from_secs(limits::HOLD_SECONDS.unsigned_abs());
    let invocation_ends = request.lambda_context_ref().and_then(|context| {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_millis();
        // A deadline already past at the start is no deadline (the local Runtime API emulator
        // sends a fixed 600,000 ms since 1970): the hold's end bounds the stream instead.
        let left_ms = u128::from(context.deadline)
            .checked_sub(now_ms)
            .filter(|left| *left > 0)?;
        Some(started + Duration::from_millis(u64::try_from(left_ms).ok()?))
    });
    let ends = invocation_ends.map_or(hold_ends, |ends| ends.min(hold_ends));
    ends.checked_sub(SETTLE_MARGIN)
        .unwrap_or(started)
        .max(started)
}

/// A plain (non-streamed) response, as every error before the stream opens is.
pub(crate) fn plain(response: respond::HttpResponse) -> StreamingResponse {
    let (parts, body) = response.into_parts();
    let bytes = Bytes::copy_from_slice(body.as_ref());
    Response::from_parts(parts, Full::new(bytes).boxed())
}

/// `POST /api/v1/ai/chat/stream`.
pub async fn chat_stream(
    state: &AppState,
    request: Request,
) -> Result<StreamingResponse, lambda_http::Error> {
    Ok(match open(state, &request).await {
        Ok(response) => response,
        Err(err) => plain(respond::error(err)),
    })
}

async fn open(state: &AppState, request: &Request) -> Result<StreamingResponse, GatewayError> {
    let (party, org) = principal(state, request).await?;
    let input = chat_input(request, |_| Ok(()));
    let admitted = metered::admit(state, &party, org, input).await?;
    let deadline = stream_deadline(request, Instant::now());
    let stream = match admitted.open_stream(deadline).await {
        Ok(stream) => stream,
        Err((err, rate)) => {
            // Refused before any output: a plain error; the message was given back.
            let mut response = respond::error(err.into());
            respond::rate_headers(&mut response, rate);
            return Ok(plain(response));
        }
    };
    let mut headers = respond::HttpResponse::default();
    respond::rate_headers(&mut headers, stream.rate());
    event_stream(stream, NativeEvents, deadline, headers.headers())
}

/// How a stream's pieces are written for its client.
pub(crate) trait Framing: Send + 'static {
    /// What goes out as soon as the stream opens, before any text.
    fn opening(&mut self) -> Option<Bytes> {
        None
    }
    /// One piece of the answer's text.
    fn text(&mut self, text: &str) -> Bytes;
    /// One piece of a tool call; nothing where the client cannot ask for tools.
    fn tool_call(&mut self, _call: &ToolCallDelta) -> Option<Bytes> {
        None
    }
    /// What ends the stream once it is settled: an error if it was cut, the usage, the end.
    fn closing(&mut self, summary: &StreamSummary) -> Vec<Bytes>;
}

/// `/api/v1/ai/chat/stream`'s events: each delta as an unnamed event, then `event: error` if the
/// answer was cut, `event: usage`, and `data: [DONE]`.
struct NativeEvents;

/// The `event: usage` body.
#[derive(Debug, Serialize)]
struct UsageEvent<'a> {
    input_tokens: u64,
    output_tokens: u64,
    total_tokens: u64,
    /// US cents.
    cost: f64,
    /// True when the provider never reported usage (the stream was cut) and this is our count.
    estimated: bool,
    finish_reason: Option<&'a str>,
}

impl Framing for NativeEvents {
    fn text(&mut self, text: &str) -> Bytes {
        sse::text(text)
    }

    fn closing(&mut self, summary: &StreamSummary) -> Vec<Bytes> {
        let mut frames = Vec::with_capacity(3);
        if let Some(detail) = &summary.interrupted {
            let detail = serde_json::json!({ "detail": detail }).to_string();
            frames.push(sse::named("error", &detail));
        }
        let usage = UsageEvent {
            input_tokens: summary.usage.input_tokens,
            output_tokens: summary.usage.output_tokens,
            total_tokens: summary.usage.total(),
            cost: summary.cost.as_cents(),
            estimated: summary.estimated,
            finish_reason: summary.finish_reason.as_ref().map(FinishReason::as_str),
        };
        if let Ok(json) = serde_json::to_string(&usage) {
            frames.push(sse::named("usage", &json));
        }
        frames.push(sse::done());
        frames
    }
}

/// The `200 text/event-stream` answer of an opened stream, with `headers`; a task moves the
/// provider's text to it as it comes, framed by `framing`, until `deadline`.
pub(crate) fn event_stream(
    stream: MeteredStream,
    framing: impl Framing,
    deadline: Instant,
    headers: &http::HeaderMap,
) -> Result<StreamingResponse, GatewayError> {
    let (sender, receiver) = mpsc::channel::<Bytes>(CHANNEL_FRAMES);
    tokio::spawn(pump(stream, framing, sender, deadline));
    let body = StreamBody::new(
        ReceiverStream::new(receiver).map(|bytes| Ok::<_, Infallible>(Frame::data(bytes))),
    );
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(CACHE_CONTROL, "no-cache")
        // Tells reverse proxies (nginx and the like) not to hold the stream back.
        .header("x-accel-buffering", "no")
        .body(BodyExt::boxed(body))
        .map_err(|e| GatewayError::Internal(format!("building the stream response: {e}")))?;
    response.headers_mut().extend(headers.clone());
    Ok(response)
}

/// Moves the provider's text to the client as it comes, then settles what was consumed and closes
/// the stream. When the client goes away the upstream stream is dropped, which cancels the
/// provider request.
async fn pump(
    mut stream: MeteredStream,
    mut framing: impl Framing,
    sender: mpsc::Sender<Bytes>,
    deadline: Instant,
) {
    let cut_at = tokio::time::sleep_until(deadline.into());
    tokio::pin!(cut_at);
    let end = 'read: {
        if let Some(frame) = framing.opening() {
            if sender.send(frame).await.is_err() {
                break 'read StreamEnd::ClientGone;
            }
        }
        loop {
            let piece = tokio::select! {
                _ = sender.closed() => break 'read StreamEnd::ClientGone,
                () = &mut cut_at => break 'read StreamEnd::OutOfTime,
                piece = stream.next_piece() => piece,
            };
            let frame = match piece {
                None => break 'read StreamEnd::Drained,
                Some(Piece::Text(text)) => framing.text(&text),
                Some(Piece::ToolCall(call)) => match framing.tool_call(&call) {
                    Some(frame) => frame,
                    None => continue,
                },
            };
            // A client that stops reading fills the channel; the deadline still holds.
            let sent = tokio::select! {
                sent = sender.send(frame) => sent.is_ok(),
                () = &mut cut_at => break 'read StreamEnd::OutOfTime,
            };
            if !sent {
                break 'read StreamEnd::ClientGone;
            }
        }
    };
    let request_id = stream.request_id().to_owned();
    let summary = stream.finish(end).await;
    if end == StreamEnd::ClientGone {
        return;
    }
    if let Some(detail) = &summary.interrupted {
        tracing::warn!(%request_id, %detail, "stream interrupted");
    }
    for frame in framing.closing(&summary) {
        send_closing(&sender, frame).await;
    }
}

/// Sends one of the closing events, giving up on a client that has stopped reading: the
/// request is settled by then, and the task must end.
async fn send_closing(sender: &mpsc::Sender<Bytes>, frame: Bytes) {
    let _ = tokio::time::timeout(CLOSING_WAIT, sender.send(frame)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::ChatBody;
    use crate::config::Settings;
    use crate::ids::{OrgId, PlanId, UserId};
    use crate::providers::{ChatStream, StreamEvent};
    use crate::store::memory::MemoryStore;
    use crate::store::{MeterStore, OrgRecord, OrgStore, Outcome, Party, Stores};
    use std::sync::Arc;

    fn in_lambda(deadline_in: Duration) -> Request {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970");
        let mut context = lambda_http::Context::default();
        context.deadline = u64::try_from((now + deadline_in).as_millis()).expect("ms");
        Request::default().with_lambda_context(context)
    }

    fn close(a: Instant, b: Instant) -> bool {
        a.max(b) - a.min(b) < Duration::from_secs(1)
    }

    #[test]
    fn a_stream_ends_before_the_invocation_or_its_hold_does() {
        let started = Instant::now();
        // Outside Lambda: before the hold could be taken for abandoned.
        let local = stream_deadline(&Request::default(), started);
        assert!(close(local, started + Duration::from_secs(890)));
        // In Lambda: ten seconds before the invocation's deadline.
        let lambda = stream_deadline(&in_lambda(Duration::from_secs(60)), started);
        assert!(close(lambda, started + Duration::from_secs(50)));
        // With less than ten seconds left: at once.
        let late = stream_deadline(&in_lambda(Duration::from_secs(5)), started);
        assert_eq!(late, started);
    }

    /// An admitted request on a memory store, ready to be pumped: the call, the store, the org
    /// and the month.
    async fn admitted() -> (metered::Admitted, Arc<MemoryStore>, OrgId, String) {
        let settings = Settings::local("stream-unit-secret-stream-unit-secret", "http://x", None);
        let store = Arc::new(MemoryStore::new());
        let state = AppState::new(&settings, Stores::from(store.clone())).expect("state");
        let (org, user) = (OrgId::from("org-1"), UserId::from("user-1"));
        let record = OrgRecord {
            id: org.clone(),
            name: "Org".into(),
            slug: "org-1".into(),
            plan: PlanId::from("free"),
            owner_id: user.clone(),
            created_at: "2026-11-01T00:00:00Z".into(),
        };
        store
            .create_org(&record, &record.created_at)
            .await
            .expect("org");
        let body: ChatBody = serde_json::from_value(serde_json::json!({
            "messages": [{"role": "user", "content": "tell me everything"}],
            "model": "gemini-1.5-flash"
        }))
        .expect("body");
        let input = crate::chat::validate(body);
        let admitted = metered::admit(&state, &Party::User(user), org.clone(), input)
            .await
            .expect("admitted");
        let month = crate::clock::month_of(state.clock.now());
        (admitted, store, org, month)
    }

    /// Pumps `stream` for `admitted` to `sender` until `deadline`; fails if it takes `limit`.
    async fn pumped(
        admitted: metered::Admitted,
        stream: ChatStream,
        sender: mpsc::Sender<Bytes>,
        deadline: Instant,
        limit: Duration,
    ) -> Result<(), tokio::time::error::Elapsed> {
        let metered = MeteredStream::new(admitted, stream);
        tokio::time::timeout(limit, pump(metered, NativeEvents, sender, deadline)).await
    }

    #[tokio::test]
    async fn a_stream_cut_at_its_deadline_is_settled_and_closed_cleanly() {
        // GIVEN an admitted request whose provider sends one delta and then nothing more
        let (admitted, store, org, month) = admitted().await;
        let stream: ChatStream = Box::pin(
            futures::stream::iter([Ok(StreamEvent::Delta("Once".to_owned()))])
                .chain(futures::stream::pending()),
        );
        let (sender, mut receiver) = mpsc::channel(CHANNEL_FRAMES);

        // WHEN its deadline passes
        let deadline = Instant::now() + Duration::from_millis(100);
        pumped(admitted, stream, sender, deadline, Duration::from_secs(10))
            .await
            .expect("the pump stops at the deadline");

        // THEN the client got the delta, an error saying why, the usage, then [DONE]
        let mut body = String::new();
        while let Ok(frame) = receiver.try_recv() {
            body.push_str(std::str::from_utf8(&frame).expect("UTF-8"));
        }
        assert!(body.starts_with("data: Once\n\nevent: error\n"), "{body}");
        assert!(body.contains("time limit"), "{body}");
        assert!(body.contains("event: usage\n"), "{body}");
        assert!(body.contains("\"estimated\":true"), "{body}");
        assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
        // AND what was consumed is on record, marked as an estimate
        let records = store.requests(&org, &month).await.expect("records");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].outcome, Outcome::Success);
        assert_eq!(
            records[0].error_message.as_deref(),
            Some("usage estimated: the stream reached its time limit")
        );
        assert!(records[0].input_tokens > 0 && records[0].output_tokens > 0);
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_does_not_hold_the_stream_past_its_deadline() {
        // GIVEN a provider that streams without end, and a client that reads nothing
        let (admitted, store, org, month) = admitted().await;
        let stream: ChatStream = Box::pin(futures::stream::repeat_with(|| {
            Ok(StreamEvent::Delta("and so on ".to_owned()))
        }));
        let (sender, _unread) = mpsc::channel(4);

        // WHEN the deadline passes with the channel full
        let deadline = Instant::now() + Duration::from_millis(100);
        pumped(admitted, stream, sender, deadline, Duration::from_secs(20))
            .await
            .expect("the pump ends although nobody reads");

        // THEN the request is settled as cut at its time limit
        let records = store.requests(&org, &month).await.expect("records");
        assert_eq!(records.len(), 1);
        assert_eq!(
            records[0].error_message.as_deref(),
            Some("usage estimated: the stream reached its time limit")
        );
    }
}

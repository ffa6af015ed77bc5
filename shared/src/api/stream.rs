//! `POST /api/v1/ai/chat/stream`: the same checks and accounting as `/chat`, the answer as
//! Server-Sent Events written the moment each piece arrives from the provider.

use std::convert::Infallible;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use lambda_http::Request;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::extract::caller;
use super::{admit_chat, respond, sse, AdmittedChat};
use crate::chat::PreparedChat;
use crate::error::GatewayError;
use crate::ids::{OrgId, UserId};
use crate::limits::{self, Ticket};
use crate::providers::{ChatStream, FinishReason, ProviderError, StreamEvent, Usage};
use crate::state::AppState;
use crate::store::Outcome;
use crate::usage;

/// Every response of the stream endpoint, errors included: a body Lambda can stream.
pub type StreamingBody = BoxBody<Bytes, Infallible>;
pub type StreamingResponse = Response<StreamingBody>;

/// Frames buffered between the provider and a slow client; past that, reading upstream waits.
const CHANNEL_FRAMES: usize = 64;

/// A plain (non-streamed) response, as every error before the stream opens is.
fn plain(response: respond::HttpResponse) -> StreamingResponse {
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
    let caller = caller(state, request)?;
    let AdmittedChat {
        membership,
        prepared,
        ticket,
    } = admit_chat(state, request, &caller, |_| Ok(())).await?;
    let org = membership.org.id.clone();

    let started = Instant::now();
    let provider = state.providers.get(prepared.model.provider);
    let stream = match provider.stream(&prepared.request).await {
        Ok(stream) => stream,
        Err(err) => {
            // Refused before any output: a plain error, and the message is given back.
            let metered = Metered {
                state: state.clone(),
                ticket: ticket.clone(),
                org,
                user: caller.user_id,
                chat: prepared,
                started,
            };
            metered
                .settle(Outcome::Failed, Usage::default(), Some(err.to_string()))
                .await;
            let mut response = respond::error(err.into());
            respond::rate_headers(&mut response, ticket.rate);
            return Ok(plain(response));
        }
    };

    let (sender, receiver) = mpsc::channel::<Bytes>(CHANNEL_FRAMES);
    let metered = Metered {
        state: state.clone(),
        ticket: ticket.clone(),
        org,
        user: caller.user_id,
        chat: prepared,
        started,
    };
    tokio::spawn(pump(stream, sender, metered));

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
    let mut headers_only = respond::HttpResponse::default();
    respond::rate_headers(&mut headers_only, ticket.rate);
    response
        .headers_mut()
        .extend(headers_only.headers().clone());
    Ok(response)
}

/// What settling a streamed request needs, moved into the task that drives the stream.
struct Metered {
    state: AppState,
    ticket: Ticket,
    org: OrgId,
    user: UserId,
    chat: PreparedChat,
    started: Instant,
}

impl Metered {
    async fn settle(&self, outcome: Outcome, used: Usage, error_message: Option<String>) {
        let settlement = usage::settlement_of(
            &self.ticket,
            &self.org,
            &self.user,
            &self.chat.model,
            (outcome, used, error_message),
            self.started.elapsed(),
            self.state.clock.now(),
            self.state.request_retention,
        );
        usage::settle(self.state.stores.meter.as_ref(), &settlement).await;
    }
}

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

/// Moves the provider's events to the client as they come, then settles what was consumed. When
/// the client goes away the upstream stream is dropped, which cancels the provider request.
async fn pump(mut stream: ChatStream, sender: mpsc::Sender<Bytes>, metered: Metered) {
    let mut reported: Option<Usage> = None;
    let mut finish: Option<FinishReason> = None;
    let mut failure: Option<ProviderError> = None;
    let mut text_bytes = 0usize;
    let mut client_gone = false;
    loop {
        let next = tokio::select! {
            _ = sender.closed() => {
                client_gone = true;
                break;
            }
            next = stream.next() => next,
        };
        match next {
            Some(Ok(StreamEvent::Delta(text))) => {
                text_bytes += text.len();
                if sender.send(sse::data(&text)).await.is_err() {
                    client_gone = true;
                    break;
                }
            }
            Some(Ok(StreamEvent::Usage(usage))) => reported = Some(usage),
            Some(Ok(StreamEvent::Finish(reason))) => finish = Some(reason),
            Some(Err(err)) => {
                failure = Some(err);
                break;
            }
            None => break,
        }
    }
    drop(stream);

    let complete = finish.is_some() && failure.is_none() && !client_gone;
    let (outcome, used, estimated, note) = if text_bytes == 0 && !complete && !client_gone {
        // The provider failed before any output: like a refusal, nothing is used. (A client that
        // leaves first is charged what the provider was sent: the provider did that work.)
        (Outcome::Failed, Usage::default(), false, None)
    } else if complete && reported.is_some() {
        (Outcome::Success, reported.unwrap_or_default(), false, None)
    } else {
        let why = match (&failure, client_gone) {
            (Some(err), _) => err.to_string(),
            (None, true) => "the client disconnected".to_owned(),
            (None, false) => "the provider reported no usage".to_owned(),
        };
        let used = estimate(&metered, reported, text_bytes);
        (
            Outcome::Success,
            used,
            true,
            Some(format!("usage estimated: {why}")),
        )
    };
    let error_message = match (&outcome, &failure) {
        (Outcome::Failed, Some(err)) => Some(err.to_string()),
        (Outcome::Failed, None) if client_gone => Some("the client disconnected".to_owned()),
        _ => note,
    };
    if client_gone {
        tracing::info!(request_id = %metered.ticket.request_id, "client went away; upstream cancelled");
    }
    metered.settle(outcome, used, error_message).await;
    if client_gone {
        return;
    }

    if let Some(err) = &failure {
        tracing::warn!(request_id = %metered.ticket.request_id, error = %err, "stream interrupted");
        let detail = serde_json::json!({ "detail": err.to_string() }).to_string();
        let _ = sender.send(sse::named("error", &detail)).await;
    }
    let usage_event = UsageEvent {
        input_tokens: used.input_tokens,
        output_tokens: used.output_tokens,
        total_tokens: used.total(),
        cost: metered
            .chat
            .model
            .cost(used.input_tokens, used.output_tokens)
            .as_cents(),
        estimated,
        finish_reason: finish.as_ref().map(FinishReason::as_str),
    };
    if let Ok(json) = serde_json::to_string(&usage_event) {
        let _ = sender.send(sse::named("usage", &json)).await;
    }
    let _ = sender.send(sse::done()).await;
}

/// Usage for a stream the provider never finished reporting: the provider's counts where it gave
/// them, otherwise about four bytes a token, never more than the request's hold allows.
fn estimate(metered: &Metered, reported: Option<Usage>, text_bytes: usize) -> Usage {
    let bound = limits::input_upper_bound(&metered.chat.request);
    let input = reported
        .map(|u| u.input_tokens)
        .filter(|n| *n > 0)
        .unwrap_or_else(|| bound.div_ceil(4));
    let output = (text_bytes as u64)
        .div_ceil(4)
        .max(reported.map_or(0, |u| u.output_tokens))
        .min(u64::from(metered.ticket.max_tokens));
    Usage {
        input_tokens: input,
        output_tokens: output,
    }
}

//! The work queue between `POST /api/v1/ai/jobs` and the worker: SQS in AWS, an in-process
//! channel in the local server. Each message names one job item.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::ids::JobId;

/// One item to work on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobMessage {
    pub job_id: JobId,
    pub item_id: String,
    /// When the item first found its org's minute window full (epoch seconds); set while it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<i64>,
}

/// Some messages could not be queued: which, and why.
#[derive(Debug, thiserror::Error)]
#[error("the job queue is unavailable: {reason}")]
pub struct QueueError {
    pub reason: String,
    /// The messages that were not queued; the others were.
    pub unsent: Vec<JobMessage>,
}

#[async_trait]
pub trait JobQueue: Send + Sync + std::fmt::Debug {
    /// Queues every message it can, each delivered no sooner than `delay` from now (at most 15
    /// minutes); on failure the error names the ones it could not.
    async fn enqueue_after(
        &self,
        messages: &[JobMessage],
        delay: Duration,
    ) -> Result<(), QueueError>;

    /// Queues every message it can, for delivery at once.
    async fn enqueue(&self, messages: &[JobMessage]) -> Result<(), QueueError> {
        self.enqueue_after(messages, Duration::ZERO).await
    }
}

/// SQS delays a message by at most 15 minutes.
const MAX_DELAY: Duration = Duration::from_secs(900);

/// Amazon SQS (or anything speaking its API, as `AWS_ENDPOINT_URL_SQS` points).
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> SqsQueue {
        SqsQueue {
            client,
            url: url.into(),
        }
    }
}

#[async_trait]
impl JobQueue for SqsQueue {
    async fn enqueue_after(
        &self,
        messages: &[JobMessage],
        delay: Duration,
    ) -> Result<(), QueueError> {
        let delay_seconds = delay.min(MAX_DELAY).as_secs() as i32;
        // SQS takes at most ten messages a call and can refuse some entries of a call it accepts:
        // every chunk is tried, and every message not taken is reported.
        let mut unsent = Vec::new();
        let mut reason = None;
        for chunk in messages.chunks(10) {
            match self.send_chunk(chunk, delay_seconds).await {
                Ok(refused) => {
                    for (i, why) in refused {
                        if let Some(message) = chunk.get(i) {
                            unsent.push(message.clone());
                        }
                        reason.get_or_insert(why);
                    }
                }
                Err(why) => {
                    unsent.extend_from_slice(chunk);
                    reason.get_or_insert(why);
                }
            }
        }
        match reason {
            None => Ok(()),
            Some(reason) => Err(QueueError { reason, unsent }),
        }
    }
}

impl SqsQueue {
    /// Sends up to ten messages in one call; the positions SQS refused, with why.
    async fn send_chunk(
        &self,
        chunk: &[JobMessage],
        delay_seconds: i32,
    ) -> Result<Vec<(usize, String)>, String> {
        let mut request = self.client.send_message_batch().queue_url(&self.url);
        for (i, message) in chunk.iter().enumerate() {
            let body = serde_json::to_string(message).map_err(|e| e.to_string())?;
            request = request.entries(
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body)
                    .delay_seconds(delay_seconds)
                    .build()
                    .map_err(|e| e.to_string())?,
            );
        }
        let out = request
            .send()
            .await
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())?;
        Ok(out
            .failed
            .into_iter()
            .filter_map(|f| {
                let why = format!(
                    "SQS refused a message: {}",
                    f.message.as_deref().unwrap_or(&f.code)
                );
                f.id.parse().ok().map(|i| (i, why))
            })
            .collect())
    }
}

/// The local server's queue: a channel its in-process worker reads.
#[derive(Debug, Clone)]
pub struct LocalQueue {
    sender: mpsc::UnboundedSender<JobMessage>,
}

impl LocalQueue {
    pub fn new() -> (LocalQueue, mpsc::UnboundedReceiver<JobMessage>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (LocalQueue { sender }, receiver)
    }
}

#[async_trait]
impl JobQueue for LocalQueue {
    async fn enqueue_after(
        &self,
        messages: &[JobMessage],
        delay: Duration,
    ) -> Result<(), QueueError> {
        if !delay.is_zero() {
            if self.sender.is_closed() {
                return Err(QueueError {
                    reason: "the local worker has stopped".into(),
                    unsent: messages.to_vec(),
                });
            }
            let (queue, messages) = (self.clone(), messages.to_vec());
            tokio::spawn(async move {
                tokio::time::sleep(delay.min(MAX_DELAY)).await;
                let _ = queue.enqueue(&messages).await;
            });
            return Ok(());
        }
        for (i, message) in messages.iter().enumerate() {
            if self.sender.send(message.clone()).is_err() {
                return Err(QueueError {
                    reason: "the local worker has stopped".into(),
                    unsent: messages[i..].to_vec(),
                });
            }
        }
        Ok(())
    }
}

/// A shareable queue handle.
pub type Queue = Arc<dyn JobQueue>;

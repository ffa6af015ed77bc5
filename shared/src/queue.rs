//! The work queue between `POST /api/v1/ai/jobs` and the worker: SQS in AWS, an in-process
//! channel in the local server. Each message names one job item.

use std::sync::Arc;

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
}

#[derive(Debug, thiserror::Error)]
#[error("the job queue is unavailable: {0}")]
pub struct QueueError(pub String);

#[async_trait]
pub trait JobQueue: Send + Sync + std::fmt::Debug {
    async fn enqueue(&self, messages: &[JobMessage]) -> Result<(), QueueError>;
}

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

    pub async fn from_env(url: impl Into<String>) -> SqsQueue {
        let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        SqsQueue::new(aws_sdk_sqs::Client::new(&config), url)
    }
}

#[async_trait]
impl JobQueue for SqsQueue {
    async fn enqueue(&self, messages: &[JobMessage]) -> Result<(), QueueError> {
        // SQS takes at most ten messages a call; a batch can half-succeed, so failures are checked.
        for chunk in messages.chunks(10) {
            let mut request = self.client.send_message_batch().queue_url(&self.url);
            for (i, message) in chunk.iter().enumerate() {
                let body = serde_json::to_string(message).map_err(|e| QueueError(e.to_string()))?;
                request = request.entries(
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .build()
                        .map_err(|e| QueueError(e.to_string()))?,
                );
            }
            let out = request
                .send()
                .await
                .map_err(|e| QueueError(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))?;
            if let Some(failed) = out.failed.first() {
                return Err(QueueError(format!(
                    "SQS refused a message: {}",
                    failed.message.as_deref().unwrap_or(&failed.code)
                )));
            }
        }
        Ok(())
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
    async fn enqueue(&self, messages: &[JobMessage]) -> Result<(), QueueError> {
        for message in messages {
            self.sender
                .send(message.clone())
                .map_err(|_| QueueError("the local worker has stopped".into()))?;
        }
        Ok(())
    }
}

/// A shareable queue handle.
pub type Queue = Arc<dyn JobQueue>;

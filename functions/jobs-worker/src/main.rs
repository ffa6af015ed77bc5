//! Lambda entry point for the job worker, triggered by SQS. Each message names one job item; only
//! the messages that failed are reported back, so the event source mapping must enable
//! `ReportBatchItemFailures` (template.yaml does).

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

// One request at a time per instance: one thread does it, and starts sooner with less memory.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    gateway::telemetry::init_json();
    let environment = gateway::Environment::load().await?;
    let state = environment
        .state()?
        .with_providers(&environment.settings.providers)?
        .with_queue_of(&environment);
    run(service_fn(|event: LambdaEvent<SqsEvent>| {
        let state = &state;
        async move {
            Ok::<SqsBatchResponse, Error>(
                gateway::jobs::handle_batch(state, event.payload, state.jobs_max_receives).await,
            )
        }
    }))
    .await
}

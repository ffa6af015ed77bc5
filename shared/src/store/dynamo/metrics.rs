//! What the DynamoDB store has asked of DynamoDB: round trips, steps in sequence and the capacity
//! units DynamoDB reported, so a benchmark measures a request's cost rather than derives it.

use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_dynamodb::operation as op;
use aws_sdk_dynamodb::types::ConsumedCapacity;

/// What this store has asked of DynamoDB since it was built: requests sent and the capacity units
/// DynamoDB reported for them, so a benchmark can measure a request's cost rather than derive it.
///
/// A round trip is one `send()` of ours, counting every pass of our own retry loops (unprocessed
/// batch keys, conflicting transactions); the SDK's internal retries of one `send()` are not seen.
/// DynamoDB reports no capacity with an error, yet a refused conditional write still consumes
/// write units: on refusal paths the units are a lower bound.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    round_trips: AtomicU64,
    steps: AtomicU64,
    in_flight: AtomicU64,
    /// Capacity in thousandths of a unit: DynamoDB's units are multiples of 0.5, so nothing is lost.
    read_milli_units: AtomicU64,
    write_milli_units: AtomicU64,
}

/// A reading of [`StoreMetrics`]; subtract two to get what happened in between.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MetricsSnapshot {
    pub round_trips: u64,
    /// Round trips one after the other: requests sent while none was in flight. Requests sent
    /// together count once, so for one request alone this is its wait on DynamoDB in round trips.
    pub steps: u64,
    pub read_units: f64,
    pub write_units: f64,
}

impl std::ops::Add for MetricsSnapshot {
    type Output = MetricsSnapshot;
    fn add(self, other: MetricsSnapshot) -> MetricsSnapshot {
        MetricsSnapshot {
            round_trips: self.round_trips + other.round_trips,
            steps: self.steps + other.steps,
            read_units: self.read_units + other.read_units,
            write_units: self.write_units + other.write_units,
        }
    }
}

impl std::ops::Sub for MetricsSnapshot {
    type Output = MetricsSnapshot;
    fn sub(self, earlier: MetricsSnapshot) -> MetricsSnapshot {
        MetricsSnapshot {
            round_trips: self.round_trips.saturating_sub(earlier.round_trips),
            steps: self.steps.saturating_sub(earlier.steps),
            read_units: self.read_units - earlier.read_units,
            write_units: self.write_units - earlier.write_units,
        }
    }
}

/// Which units an operation consumes. DynamoDB's `TOTAL` answer may carry only `CapacityUnits`;
/// then the operation says whether they were read or write units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Units {
    Read,
    Write,
}

impl StoreMetrics {
    pub fn snapshot(&self) -> MetricsSnapshot {
        let units = |milli: &AtomicU64| milli.load(Ordering::Relaxed) as f64 / 1000.0;
        MetricsSnapshot {
            round_trips: self.round_trips.load(Ordering::Relaxed),
            steps: self.steps.load(Ordering::Relaxed),
            read_units: units(&self.read_milli_units),
            write_units: units(&self.write_milli_units),
        }
    }

    /// Marks a request sent until the guard is dropped: a new step if none was in flight.
    fn take_off(&self) -> InFlight<'_> {
        if self.in_flight.fetch_add(1, Ordering::SeqCst) == 0 {
            self.steps.fetch_add(1, Ordering::Relaxed);
        }
        InFlight(self)
    }

    /// Counts one round trip and the capacity its answer reports.
    fn record(&self, units: Units, consumed: &[ConsumedCapacity]) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let milli = |value: Option<f64>| (value.unwrap_or(0.0) * 1000.0).round() as u64;
        for c in consumed {
            let (read, write) = match (c.read_capacity_units, c.write_capacity_units) {
                (None, None) => match units {
                    Units::Read => (c.capacity_units, None),
                    Units::Write => (None, c.capacity_units),
                },
                split => split,
            };
            self.read_milli_units
                .fetch_add(milli(read), Ordering::Relaxed);
            self.write_milli_units
                .fetch_add(milli(write), Ordering::Relaxed);
        }
    }
}

/// An operation's answer as metering sees it: the capacity DynamoDB says it consumed.
trait ReportsCapacity {
    fn consumed(&self) -> &[ConsumedCapacity];
}

macro_rules! reports_capacity {
    (one: $($output:ty),*) => {$(
        impl ReportsCapacity for $output {
            fn consumed(&self) -> &[ConsumedCapacity] {
                self.consumed_capacity().map(std::slice::from_ref).unwrap_or_default()
            }
        }
    )*};
    (per table: $($output:ty),*) => {$(
        impl ReportsCapacity for $output {
            fn consumed(&self) -> &[ConsumedCapacity] {
                self.consumed_capacity()
            }
        }
    )*};
    (none: $($output:ty),*) => {$(
        impl ReportsCapacity for $output {
            fn consumed(&self) -> &[ConsumedCapacity] {
                &[]
            }
        }
    )*};
}

reports_capacity!(one: op::get_item::GetItemOutput, op::put_item::PutItemOutput,
    op::update_item::UpdateItemOutput, op::query::QueryOutput);
reports_capacity!(per table: op::batch_get_item::BatchGetItemOutput,
    op::transact_write_items::TransactWriteItemsOutput);
reports_capacity!(none: op::describe_table::DescribeTableOutput,
    op::create_table::CreateTableOutput, op::update_time_to_live::UpdateTimeToLiveOutput);

/// A request in flight, for [`StoreMetrics`]' steps; landed when dropped (cancelled or answered).
struct InFlight<'a>(&'a StoreMetrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Records a request in [`StoreMetrics`] as it is sent: `client.op()….send().metered(…).await`.
pub(super) trait Metered<T, E> {
    async fn metered(self, metrics: &StoreMetrics, units: Units) -> Result<T, E>;
}

impl<F, T, E> Metered<T, E> for F
where
    F: std::future::Future<Output = Result<T, E>>,
    T: ReportsCapacity,
{
    async fn metered(self, metrics: &StoreMetrics, units: Units) -> Result<T, E> {
        let flight = metrics.take_off();
        let result = self.await;
        drop(flight);
        // An error carries no consumed capacity (not even a refused conditional write, which is
        // charged): the round trip still counts.
        let consumed = result.as_ref().map_or(&[][..], ReportsCapacity::consumed);
        metrics.record(units, consumed);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity(total: f64, read: Option<f64>, write: Option<f64>) -> ConsumedCapacity {
        ConsumedCapacity::builder()
            .table_name("t")
            .capacity_units(total)
            .set_read_capacity_units(read)
            .set_write_capacity_units(write)
            .build()
    }

    #[test]
    fn a_bare_total_counts_as_the_operations_kind_of_units() {
        // GIVEN answers that report only CapacityUnits, as DynamoDB's TOTAL may
        let metrics = StoreMetrics::default();
        // WHEN a read and a write are recorded
        metrics.record(Units::Read, &[capacity(0.5, None, None)]);
        metrics.record(Units::Write, &[capacity(2.0, None, None)]);
        // THEN each lands on its side
        let want = MetricsSnapshot {
            round_trips: 2,
            steps: 0,
            read_units: 0.5,
            write_units: 2.0,
        };
        assert_eq!(metrics.snapshot(), want);
    }

    #[test]
    fn a_reported_split_wins_over_the_operations_kind() {
        // GIVEN a write whose answer splits its units (a transaction with a condition check)
        let metrics = StoreMetrics::default();
        let split = [capacity(3.0, Some(1.0), Some(2.0))];
        // WHEN it is recorded
        metrics.record(Units::Write, &split);
        // THEN the split is kept as reported
        assert_eq!(metrics.snapshot().read_units, 1.0);
        assert_eq!(metrics.snapshot().write_units, 2.0);
    }

    #[tokio::test]
    async fn a_failed_request_is_a_round_trip_without_units() {
        // GIVEN a request that failed (errors carry no consumed capacity)
        let metrics = StoreMetrics::default();
        let before = metrics.snapshot();
        let failed = async { Err::<op::put_item::PutItemOutput, &str>("refused") };
        // WHEN it is metered
        let _ = failed.metered(&metrics, Units::Write).await;
        // THEN it counts once and consumes nothing we can see
        let delta = metrics.snapshot() - before;
        assert_eq!((delta.round_trips, delta.steps), (1, 1));
        assert_eq!(delta.write_units, 0.0);
    }

    #[tokio::test]
    async fn requests_sent_together_are_one_step() {
        // GIVEN two requests in flight at once, then one after them
        let metrics = StoreMetrics::default();
        let answer = || async {
            tokio::task::yield_now().await;
            Ok::<_, &str>(op::get_item::GetItemOutput::builder().build())
        };
        // WHEN they are metered
        let (a, b) = tokio::join!(
            answer().metered(&metrics, Units::Read),
            answer().metered(&metrics, Units::Read)
        );
        let c = answer().metered(&metrics, Units::Read).await;
        assert!(a.is_ok() && b.is_ok() && c.is_ok());
        // THEN three round trips took two steps
        let seen = metrics.snapshot();
        assert_eq!((seen.round_trips, seen.steps), (3, 2));
    }
}

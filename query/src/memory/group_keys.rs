//! The copies an aggregation makes of its grouping keys, counted before it makes them.
//!
//! An aggregation takes a batch, copies its new grouping keys into its groups' store (whose
//! buffer doubles as it grows, copying what it held), and only then resizes its reservation.
//! A key computed by the aggregation itself is checked as three times its size when it is
//! made (`guard::counted_key`); a key that arrives as a column was made below (a projection's
//! `user_id || repeat('x', 400000)`, pushed into the scan) or read from a file, and nothing
//! counted its copies: `SELECT DISTINCT` over 200 MB of such keys per batch grew the server by
//! 790–890 MB at a 256 MiB limit, and by 1.9–2.0 GB at 1 GiB, before the refusal came.
//! Accumulators that keep the values they are given (`DISTINCT` ones, `array_agg`, …) copy
//! them the same way, and so does an aggregation that merges partial ones' groups and states.
//!
//! Here each aggregation that copies columns of its input takes it through [`KeysCopied`]: a
//! batch of at least [`CLAIMED_FROM`] bytes has twice the size of those columns taken from the
//! query's pool before the aggregation sees it (refused as any value is, naming the limit),
//! and given back when the aggregation asks for the next batch, by which time its own
//! reservation counts what it kept. The batch itself is claimed as it travels (`claims`):
//! three times in all, as for a computed key. Every key is counted as if it were new: a batch
//! of wide keys that repeat may be refused where its groups would have fitted (at the 1 GiB
//! default, a batch's keys must pass about 340 MB, 43 KB a row in 8,192 rows, for that).

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};

use arrow::array::Array;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::Result;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateInputMode};
use datafusion::physical_plan::expressions::Column;
use futures::{Stream, StreamExt};

use super::QueryPool;
use super::claims::CLAIMED_FROM;
use crate::groups::DictionaryGroupsExec;
use crate::pass_through::{PassThrough, Wrap};

/// Copies of a key the aggregation makes before it checks its memory: the new key in its
/// groups' store, and the store's buffer as it doubles (the old one beside the new while
/// its keys are moved; both showed in `perf record -e page-faults`), or Arrow's row format
/// for key types its columnar store does not take.
const COPIES: usize = 2;

/// Aggregate functions whose accumulators keep every argument they are given, as those of
/// `DISTINCT` aggregates keep each new one.
pub(super) const KEEPING: &[&str] = &["array_agg", "string_agg", "median", "percentile_cont"];

/// `node` with its input taken through [`KeysCopied`] if it is an aggregation that copies
/// columns of its input (DataFusion's, or Floe's over dictionaries: `groups`); otherwise
/// `node` as it is.
pub(super) fn counted(node: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let any = node.as_any();
    let copied = if let Some(aggregate) = any.downcast_ref::<AggregateExec>() {
        copied_by(aggregate)
    } else if let Some(groups) = any.downcast_ref::<DictionaryGroupsExec>() {
        columns(groups.copied_groups())
    } else {
        return Ok(node);
    };
    let [input] = node.children()[..] else {
        return Ok(node);
    };
    if copied.is_empty() {
        return Ok(node);
    }
    let input = Arc::new(PassThrough::new(
        input.clone(),
        KeysCopied {
            keys: copied.into(),
        },
    ));
    node.with_new_children(vec![input])
}

/// The columns of its input that `aggregate` copies before it checks its memory: its grouping
/// keys, and the arguments its accumulators keep (of `DISTINCT` aggregates and [`KEEPING`]);
/// or, merging partial aggregations, all of them (their groups and their states, which for
/// those aggregates are lists of the values kept).
fn copied_by(aggregate: &AggregateExec) -> Vec<usize> {
    if aggregate.mode().input_mode() != AggregateInputMode::Raw {
        return (0..aggregate.input().schema().fields().len()).collect();
    }
    let keys = aggregate.group_expr().expr().iter().map(|(e, _)| e);
    let kept = aggregate
        .aggr_expr()
        .iter()
        .filter(|a| a.is_distinct() || KEEPING.contains(&a.fun().name()))
        .flat_map(|a| a.expressions());
    let mut copied = columns(keys);
    copied.extend(columns(kept.collect::<Vec<_>>().iter()));
    copied.sort_unstable();
    copied.dedup();
    copied
}

/// The indices of the bare columns among `exprs`.
fn columns<'a>(exprs: impl Iterator<Item = &'a Arc<dyn PhysicalExpr>>) -> Vec<usize> {
    exprs
        .filter_map(|expr| expr.as_any().downcast_ref::<Column>())
        .map(Column::index)
        .collect()
}

/// What takes the copies of an aggregation's key columns (`keys`, by index) from the query's
/// pool as each large batch goes in.
#[derive(Debug, Clone)]
pub struct KeysCopied {
    keys: Arc<[usize]>,
}

impl Wrap for KeysCopied {
    const NAME: &'static str = "KeysCopied";

    fn wrap(
        &self,
        input: SendableRecordBatchStream,
        context: &Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let Some(pool) = context.session_config().get_extension::<QueryPool>() else {
            return Ok(input);
        };
        Ok(Box::pin(KeysStream {
            input,
            keys: self.keys.clone(),
            pool: Arc::downgrade(&pool),
            taken: 0,
        }))
    }
}

struct KeysStream {
    input: SendableRecordBatchStream,
    keys: Arc<[usize]>,
    pool: Weak<QueryPool>,
    /// Taken for the batch the aggregation is grouping, until it asks for the next.
    taken: usize,
}

impl KeysStream {
    fn give_back(&mut self) {
        if self.taken > 0
            && let Some(pool) = self.pool.upgrade()
        {
            pool.give_back(self.taken);
        }
        self.taken = 0;
    }

    /// Takes the copies of `batch`'s keys, if it is large enough to count.
    fn hold_copies(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.get_array_memory_size() < CLAIMED_FROM {
            return Ok(());
        }
        let Some(pool) = self.pool.upgrade() else {
            return Ok(());
        };
        let bytes = COPIES.saturating_mul(key_bytes(batch, &self.keys));
        if bytes == 0 {
            return Ok(());
        }
        pool.try_take(
            bytes,
            "an aggregation's copies of its grouping keys and of the values it keeps",
        )?;
        self.taken = bytes;
        Ok(())
    }
}

/// The bytes of `batch`'s columns at `keys`: what a slice holds, where Arrow can tell (else
/// its buffers whole).
fn key_bytes(batch: &RecordBatch, keys: &[usize]) -> usize {
    keys.iter()
        .filter_map(|&i| batch.columns().get(i))
        .map(|column| {
            column
                .to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| column.get_array_memory_size())
        })
        .fold(0, usize::saturating_add)
}

impl Stream for KeysStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Asked again: the aggregation has grouped the last batch and counts what it kept.
        self.give_back();
        let next = ready!(self.input.poll_next_unpin(cx));
        Poll::Ready(next.map(|batch| {
            let batch = batch?;
            self.hold_copies(&batch)?;
            Ok(batch)
        }))
    }
}

impl RecordBatchStream for KeysStream {
    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }
}

impl Drop for KeysStream {
    fn drop(&mut self) {
        self.give_back();
    }
}

#[cfg(test)]
mod tests;

//! Short steps for nested loop joins.
//!
//! DataFusion's nested loop join buffers its build side, then, for each batch of its probe
//! side, joins every build row with it in one poll, asking its input for the next probe batch
//! only when that product is done, and returning only when an output batch is full. Under a
//! selective filter (`regexp_like(a.x || b.y, …)` over 20,000 × 8,192 pairs) that poll ran
//! for a minute: no slot of [`super`] was given back, no other tenant's step went ahead, and a
//! query stopped by its time limit ran on until the poll ended (its runtime can only be shut
//! down between polls), holding its tenant's slot and the core.
//!
//! [`ProbeInSlices`] sits between the join and its probe input and hands the probe batches on
//! in slices whose size follows the time the join took over the last one: halved when it took
//! longer than the CPU slice, doubled when it took less than a quarter of it, from one row up to
//! the whole batch. The join thus asks its input again every slice or so, where the slot's
//! gate can make it give way to a tenant that has had less, and where, every
//! [`YIELD_SLICES`] slices, the slice answers "not yet" (waking itself at once) so that the
//! poll unwinds: a stopped query's work ends within that, plus one slice of work. The smallest
//! slice is one probe row, which the join still joins with its whole build side in one go: a
//! build side of millions of rows under a costly filter can make that one slice long.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::pass_through::{PassThrough, Wrap};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::Result;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::joins::NestedLoopJoinExec;
use futures::{Stream, StreamExt};

/// Every this many CPU slices of one step, the probe input of a nested loop join answers "not
/// yet" once, so that the step ends (and a stopped query with it).
pub const YIELD_SLICES: u32 = 20;

/// `plan` with the probe input of every nested loop join handed on in slices of about `slice`
/// of the join's work each.
pub fn slice_probes(
    plan: Arc<dyn ExecutionPlan>,
    slice: Duration,
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        if node.as_any().downcast_ref::<NestedLoopJoinExec>().is_none() {
            return Ok(Transformed::no(node));
        }
        let mut children: Vec<_> = node.children().into_iter().cloned().collect();
        // The right input is the one probed; the left is buffered whole.
        let Some(probe) = children.pop() else {
            return Ok(Transformed::no(node));
        };
        children.push(Arc::new(PassThrough::new(probe, ProbeInSlices::new(slice))));
        node.with_new_children(children).map(Transformed::yes)
    })
    .map(|t| t.data)
}

/// What makes a plan node hand its input's batches on in slices (see the module's
/// documentation): the probe input of a nested loop join.
#[derive(Debug, Clone)]
pub struct ProbeInSlices {
    slice: Duration,
}

impl ProbeInSlices {
    fn new(slice: Duration) -> ProbeInSlices {
        ProbeInSlices {
            slice: slice.max(Duration::from_micros(100)),
        }
    }
}

impl Wrap for ProbeInSlices {
    const NAME: &'static str = "ProbeInSlices";

    fn wrap(
        &self,
        input: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        Ok(Box::pin(Slices::new(input, self.slice)))
    }
}

/// The stream of [`ProbeInSlices`].
struct Slices {
    input: SendableRecordBatchStream,
    /// The work one slice should give the join.
    target: Duration,
    /// The batch being handed on, and how far.
    batch: Option<(RecordBatch, usize)>,
    /// Rows in the next slice.
    rows: usize,
    /// When the last slice was handed on (none after "not yet": the time until the next poll
    /// was not the join's work).
    handed: Option<Instant>,
    /// When this step began (the last "not yet").
    step: Instant,
}

impl Slices {
    fn new(input: SendableRecordBatchStream, target: Duration) -> Slices {
        Slices {
            input,
            target,
            batch: None,
            rows: 1,
            handed: None,
            step: Instant::now(),
        }
    }

    /// Sizes the next slice after the time the join took over the last one.
    fn adapt(&mut self, now: Instant) {
        let Some(handed) = self.handed.take() else {
            return;
        };
        if let Some(began) = super::step_began()
            && began > handed
        {
            // The step gave its slot back since (its gate made it yield) and began again: the
            // time includes the wait for a slot, not only the join's work. So does this step's.
            self.step = self.step.max(began);
            return;
        }
        let took = now.saturating_duration_since(handed);
        if took > self.target {
            self.rows = (self.rows / 2).max(1);
        } else if took < self.target / 4 {
            self.rows = self.rows.saturating_mul(2);
        }
    }
}

impl Stream for Slices {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let now = Instant::now();
        self.adapt(now);
        if now.saturating_duration_since(self.step) >= self.target * YIELD_SLICES {
            self.step = now;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        loop {
            if let Some((batch, offset)) = self.batch.take()
                && offset < batch.num_rows()
            {
                let n = self.rows.min(batch.num_rows() - offset);
                let slice = batch.slice(offset, n);
                self.batch = Some((batch, offset + n));
                self.handed = Some(Instant::now());
                return Poll::Ready(Some(Ok(slice)));
            }
            match self.input.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(batch))) => self.batch = Some((batch, 0)),
                Poll::Ready(other) => return Poll::Ready(other),
                Poll::Pending => {
                    // The input waits: the step ends here.
                    self.step = Instant::now();
                    return Poll::Pending;
                }
            }
        }
    }
}

impl RecordBatchStream for Slices {
    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }
}

#[cfg(test)]
mod tests;

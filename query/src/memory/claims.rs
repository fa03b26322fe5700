//! Large batches held in a query's pool for as long as they live.
//!
//! DataFusion's operators count what they keep (a sort's buffer, a join's build side, the
//! groups of an aggregation, a repartition's queue), and the guard checks each value an
//! expression makes when it is made. What nothing counts is a batch in flight: handed from
//! one operator to the next and kept by it while it works (an aggregation's input while it
//! is grouped, a repartition's while it is hashed and cut, the groups an aggregation hands
//! on when it ends or is short of memory). A batch of ordinary rows is small; one of wide
//! values is not: a join on `a.user_id || repeat('x', 500000)` makes 250 MB of keys for a
//! file of 500 events, checked when made and then given back; the repartition's copy of them
//! and the join's probe held them uncounted, and the query ran with the server 870 MB larger
//! at a 1 GiB limit.
//!
//! Arrow's buffers can carry a reservation that goes back when the buffer is freed
//! (`Array::claim`, arrow's `pool` feature). Every node of a running plan hands its batches
//! on through [`Held`]: a batch of at least [`CLAIMED_FROM`] bytes is claimed in its query's
//! pool, so it counts until the last operator holding it (or a slice of it) drops it. A
//! buffer handed on unchanged is claimed once (a claim replaces the one before). A claim is
//! forced, as the batch exists already: what refuses is the next reservation that does not
//! fit beside it, an operator's (which then spills or fails) or a value's (`guard`). A claim
//! holds the pool weakly: a buffer that outlives its query holds nothing of a budget.

use std::sync::{Arc, Weak};

use arrow::array::Array;
use arrow::record_batch::RecordBatch;
use datafusion::common::Result;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

use super::QueryPool;
use crate::pass_through::{PassThrough, Wrap};

/// Batches smaller than this are not claimed: an ordinary one (8,192 rows of 2 KB) is not,
/// so an operator that counts the batches it keeps (a sort's buffer, a join's build side)
/// does not count them twice; what travels unclaimed below it is small beside any limit.
/// (Pages not fetched yet leave a claimed batch to its claim: `trino::query`.)
pub(crate) const CLAIMED_FROM: usize = 16 << 20;

/// `plan` with every node's batches handed on through [`Held`], each aggregation's input
/// through `group_keys::KeysCopied`, and each window computing under its ledger
/// (`window_values::Polled`). The query's pool is the session's extension ([`QueryPool`]);
/// without one, batches are handed on as they are.
pub fn held(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let node = super::window_values::polled(super::group_keys::counted(node)?);
        Ok(Transformed::yes(
            Arc::new(PassThrough::new(node, Held)) as Arc<dyn ExecutionPlan>
        ))
    })
    .map(|t| t.data)
}

/// Runs `df` with its batches held ([`held`]) and collects them.
pub async fn collect(df: datafusion::prelude::DataFrame) -> Result<Vec<RecordBatch>> {
    let task = Arc::new(df.task_ctx());
    let plan = held(df.create_physical_plan().await?)?;
    datafusion::physical_plan::collect(plan, task).await
}

/// What makes a plan node's batches of [`CLAIMED_FROM`] bytes or more claimed in the query's
/// pool as they are handed on.
#[derive(Debug, Clone)]
pub struct Held;

impl Wrap for Held {
    const NAME: &'static str = "Held";

    fn wrap(
        &self,
        input: SendableRecordBatchStream,
        context: &Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let Some(pool) = context.session_config().get_extension::<QueryPool>() else {
            return Ok(input);
        };
        let claims = Claims {
            pool: Arc::downgrade(&pool),
        };
        let schema = input.schema();
        let batches = input.map(move |batch| {
            if let Ok(batch) = &batch {
                claims.claim(batch);
            }
            batch
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}

/// A query's pool as Arrow's buffers see it.
#[derive(Debug)]
struct Claims {
    pool: Weak<QueryPool>,
}

impl Claims {
    /// Claims `batch`'s buffers for as long as they live, if it is at least
    /// [`CLAIMED_FROM`] bytes.
    fn claim(&self, batch: &RecordBatch) {
        if batch.get_array_memory_size() < CLAIMED_FROM {
            return;
        }
        for column in batch.columns() {
            column.claim(self);
        }
    }
}

impl arrow_buffer::MemoryPool for Claims {
    fn reserve(&self, size: usize) -> Box<dyn arrow_buffer::MemoryReservation> {
        if let Some(pool) = self.pool.upgrade() {
            pool.force(size);
        }
        Box::new(Claim {
            pool: self.pool.clone(),
            size,
        })
    }

    fn available(&self) -> isize {
        let Some(pool) = self.pool.upgrade() else {
            return 0;
        };
        isize::try_from(pool.limit())
            .unwrap_or(isize::MAX)
            .saturating_sub(isize::try_from(pool.reserved()).unwrap_or(isize::MAX))
    }

    fn used(&self) -> usize {
        self.pool.upgrade().map_or(0, |pool| pool.reserved())
    }

    fn capacity(&self) -> usize {
        self.pool.upgrade().map_or(0, |pool| pool.limit())
    }
}

/// One buffer's claim: given back when the buffer is freed.
#[derive(Debug)]
struct Claim {
    pool: Weak<QueryPool>,
    size: usize,
}

impl arrow_buffer::MemoryReservation for Claim {
    fn size(&self) -> usize {
        self.size
    }

    fn resize(&mut self, new_size: usize) {
        if let Some(pool) = self.pool.upgrade() {
            match new_size > self.size {
                true => pool.force(new_size - self.size),
                false => pool.give_back(self.size - new_size),
            }
        }
        self.size = new_size;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // A pool that is gone gave everything back when it went.
        if let Some(pool) = self.pool.upgrade() {
            pool.give_back(self.size);
        }
    }
}

#[cfg(test)]
mod tests;

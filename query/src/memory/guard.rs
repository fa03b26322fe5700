//! The size of every batch a projection makes, checked against the query's memory.
//!
//! Functions that can outgrow their arguments are bounded one by one (`functions::bounded`), but
//! operators make values too: `s || s` doubles a string, and a chain of common table
//! expressions doubles it again at each step while the SQL text grows by a line. No operator
//! reserves memory for a projection's output, so each one is followed by a check that the
//! batch it made fits in what the query may still take (reserved, then given back at once: the
//! batch then travels downstream as any other). A chain of doublings is stopped at the first
//! step past the limit, having made at most twice what the limit allows.

use std::sync::Arc;

use crate::pass_through::{PassThrough, Wrap};
use datafusion::common::Result;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

/// `plan` with a size check after each of its projections.
pub fn check_projections(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        if node.as_any().is::<ProjectionExec>() {
            Ok(Transformed::yes(
                Arc::new(PassThrough::new(node, Checked)) as _
            ))
        } else {
            Ok(Transformed::no(node))
        }
    })
    .map(|t| t.data)
}

/// What makes a plan node check its output batches against the query's memory.
#[derive(Debug, Clone)]
struct Checked;

impl Wrap for Checked {
    const NAME: &'static str = "CheckedSize";

    fn wrap(
        &self,
        input: SendableRecordBatchStream,
        context: &Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let schema = input.schema();
        let reservation =
            MemoryConsumer::new("values made by a projection").register(context.memory_pool());
        let checked = input.map(move |batch| {
            let batch = batch?;
            let bytes = batch.get_array_memory_size();
            reservation.try_grow(bytes)?;
            reservation.shrink(bytes);
            Ok(batch)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, checked)))
    }
}

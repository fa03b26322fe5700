//! A plan node that hands on its one input's batches through a stream of its own: the CPU
//! share's slots (`cpu::share`), the nested loop join's probe slices (`cpu::probe`),
//! `unnest`'s input in pieces (`memory::unnest_pieces`) and large batches claimed in the
//! query's memory as they are handed on (`memory::claims`) are each such a node. What differs
//! is only what wraps the input's stream; the rest (properties, order, children) is the
//! input's.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use datafusion::common::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};

/// What a [`PassThrough`] node does to its input's stream.
pub trait Wrap: fmt::Debug + Clone + Send + Sync + 'static {
    /// The node's name in plans (`EXPLAIN`).
    const NAME: &'static str;

    fn wrap(
        &self,
        input: SendableRecordBatchStream,
        context: &Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream>;
}

/// A plan node with one input, the same schema, partitioning and order, whose streams are the
/// input's wrapped by `W`.
#[derive(Debug)]
pub struct PassThrough<W> {
    input: Arc<dyn ExecutionPlan>,
    wrap: W,
    properties: Arc<PlanProperties>,
}

impl<W: Wrap> PassThrough<W> {
    pub fn new(input: Arc<dyn ExecutionPlan>, wrap: W) -> PassThrough<W> {
        let properties = input.properties().clone();
        PassThrough {
            input,
            wrap,
            properties,
        }
    }
}

impl<W: Wrap> DisplayAs for PassThrough<W> {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(W::NAME)
    }
}

impl<W: Wrap> ExecutionPlan for PassThrough<W> {
    fn name(&self) -> &str {
        W::NAME
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(PassThrough::new(
            children.swap_remove(0),
            self.wrap.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context.clone())?;
        self.wrap.wrap(input, &context)
    }
}

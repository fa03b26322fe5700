//! The values a window's aggregates hand out, counted as they are made.
//!
//! A window evaluates an aggregate once for each row, and each row gets the aggregate's value
//! as it stands: `array_agg(x) OVER (ORDER BY x)` hands the n-th row a list of n values, n²/2
//! for n rows (40 GB for 100,000 numbers), and `array_agg(x) OVER ()` one list copied into
//! every row. DataFusion keeps a batch's values in a list and then copies them into the
//! output column, counting neither: that query grew the server by 4.4 GB at a 1 GiB limit
//! before the next operator's reservation refused it.
//!
//! So each aggregate a window calls is planned with an accumulator that counts the values it
//! hands out ([`WindowValues`], a logical rule, and `copies::Counted`): a value's bytes (its
//! list or text, not the fixed part every scalar has) once for itself and once for each row
//! that entered the frame since the last value, which it will be copied into (one row as a
//! frame moves, the partition's rows for a value the whole partition shares). They go to the
//! ledger of the window that is computing them ([`Ledger`]), which takes from the query's pool
//! a MiB at a time, refused like any value, naming the limit. The window computes its values
//! while it is asked for a batch, so [`Polled`] puts its ledger in place for that call and
//! gives everything back when it returns: by then each value is in the output (claimed as it
//! travels, `claims`) or dropped.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::Result;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::expr::WindowFunction;
use datafusion::logical_expr::{Expr, LogicalPlan, WindowFunctionDefinition};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
use futures::{Stream, StreamExt};

use super::QueryPool;
use crate::pass_through::{PassThrough, Wrap};

/// What a ledger takes from the pool at a time, so that a window of small values (a running
/// text, a short list) does not go to the pool for each row.
const STEP: usize = 1 << 20;

/// What a refusal names.
const WHAT: &str = "a window's aggregate values";

/// The rule that gives every aggregate a window calls an accumulator counting its values
/// (see the module comment).
#[derive(Debug, Default)]
pub struct WindowValues;

impl OptimizerRule for WindowValues {
    fn name(&self) -> &str {
        "floe_window_values"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        if !matches!(plan, LogicalPlan::Window(_)) {
            return Ok(Transformed::no(plan));
        }
        // The window's schema stays: the functions keep their names and types.
        plan.map_expressions(|expr| {
            expr.transform_up(|e| match e {
                Expr::WindowFunction(call) => {
                    Ok(counting(*call).update_data(|call| Expr::WindowFunction(Box::new(call))))
                }
                other => Ok(Transformed::no(other)),
            })
        })
    }
}

/// `call` with its aggregate counting its values, if it calls an aggregate that does not yet.
fn counting(call: WindowFunction) -> Transformed<WindowFunction> {
    let WindowFunctionDefinition::AggregateUDF(function) = &call.fun else {
        return Transformed::no(call);
    };
    match super::copies::in_window(function) {
        Some(counted) => Transformed::yes(WindowFunction {
            fun: WindowFunctionDefinition::AggregateUDF(counted),
            params: call.params,
        }),
        None => Transformed::no(call),
    }
}

thread_local! {
    /// The ledger of the window computing on this thread, for as long as it is asked for a
    /// batch ([`Polled`]).
    static COMPUTING: RefCell<Option<Arc<Ledger>>> = const { RefCell::new(None) };
}

/// Counts `bytes` of values an aggregate hands out in the window computing on this thread;
/// outside a window's call (a plan run without `claims::held`), counts nothing.
pub(super) fn count(bytes: usize) -> Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    COMPUTING.with(|computing| match computing.borrow().as_ref() {
        Some(ledger) => ledger.count(bytes),
        None => Ok(()),
    })
}

/// What one window stream's values hold of the query's pool while it computes.
#[derive(Debug)]
struct Ledger {
    pool: Arc<QueryPool>,
    /// Counted since the call began.
    used: AtomicUsize,
    /// Taken from the pool for them (`STEP` at a time).
    taken: AtomicUsize,
}

impl Ledger {
    fn count(&self, bytes: usize) -> Result<()> {
        let used = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let taken = self.taken.load(Ordering::Relaxed);
        if used > taken {
            let more = (used - taken).max(STEP);
            self.pool.try_take(more, WHAT)?;
            self.taken.fetch_add(more, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The call is over: its values are in the output or gone.
    fn settle(&self) {
        self.used.store(0, Ordering::Relaxed);
        let taken = self.taken.swap(0, Ordering::Relaxed);
        if taken > 0 {
            self.pool.give_back(taken);
        }
    }
}

/// `node` with its streams computing under a ledger ([`Polled`]) if it is a window; otherwise
/// `node` as it is.
pub(super) fn polled(node: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    let any = node.as_any();
    if any.is::<BoundedWindowAggExec>() || any.is::<WindowAggExec>() {
        Arc::new(PassThrough::new(node, Polled))
    } else {
        node
    }
}

/// What puts a window stream's ledger in place while the window is asked for a batch.
#[derive(Debug, Clone)]
pub struct Polled;

impl Wrap for Polled {
    const NAME: &'static str = "WindowValuesCounted";

    fn wrap(
        &self,
        input: SendableRecordBatchStream,
        context: &Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let Some(pool) = context.session_config().get_extension::<QueryPool>() else {
            return Ok(input);
        };
        Ok(Box::pin(PolledStream {
            input,
            ledger: Arc::new(Ledger {
                pool,
                used: AtomicUsize::new(0),
                taken: AtomicUsize::new(0),
            }),
        }))
    }
}

struct PolledStream {
    input: SendableRecordBatchStream,
    ledger: Arc<Ledger>,
}

/// Puts back the ledger a call found in place (an outer window's, or none) when the call
/// ends, also by a panic.
struct Restore(Option<Arc<Ledger>>);

impl Drop for Restore {
    fn drop(&mut self) {
        let outer = self.0.take();
        COMPUTING.with(|computing| *computing.borrow_mut() = outer);
    }
}

impl Stream for PolledStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = {
            let outer = COMPUTING.with(|c| c.borrow_mut().replace(self.ledger.clone()));
            let _restore = Restore(outer);
            self.input.poll_next_unpin(cx)
        };
        self.ledger.settle();
        next
    }
}

impl RecordBatchStream for PolledStream {
    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }
}

impl Drop for PolledStream {
    fn drop(&mut self) {
        self.ledger.settle();
    }
}

#[cfg(test)]
mod tests;

//! A DataFusion function wrapped to run differently, and otherwise the same function: its name,
//! signature, types, ordering, bounds, simplifications, configuration and documentation are the
//! inner function's. A wrapper says only how a call runs ([`Run`]): the memory bounds of
//! functions' values (`bounded.rs`), the step bounds of functions whose work outgrows their
//! arguments (`pieces.rs`) and the UTC arithmetic of `date_trunc` (`trunc.rs`).

use std::any::Any;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use crate::memory::QueryPool;
use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExpressionPlacement, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature,
};

/// How a wrapped function's calls run.
pub(super) trait Run: Debug + Clone + PartialEq + Eq + Hash + Send + Sync + 'static {
    /// Runs `args` through `inner` (the wrapped function), in this wrapper's way.
    fn run(&self, inner: &ScalarUDF, args: ScalarFunctionArgs) -> Result<ColumnarValue>;

    /// Whether the simplifier may rewrite a call as the inner function would be (into another
    /// expression, which this wrapper no longer runs).
    fn simplified(&self) -> bool {
        true
    }
}

/// The query's pool, compared by identity (a function's equality must not look inside it).
#[derive(Debug, Clone)]
pub(super) struct PoolRef(pub(super) Arc<QueryPool>);

impl PartialEq for PoolRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for PoolRef {}

impl std::hash::Hash for PoolRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as usize).hash(state)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Wrapped<R> {
    pub(super) inner: Arc<ScalarUDF>,
    pub(super) run: R,
}

impl<R: Run> Wrapped<R> {
    /// `expr` (what the inner function simplified a call into) with every call of the inner
    /// function in it calling this wrapper instead.
    fn rewrapped(&self, expr: Expr) -> Result<Expr> {
        expr.transform_up(|e| match e {
            Expr::ScalarFunction(call) if *call.func == *self.inner => {
                let again = Arc::new(ScalarUDF::new_from_impl(self.clone()));
                Ok(Transformed::yes(Expr::ScalarFunction(
                    ScalarFunction::new_udf(again, call.args),
                )))
            }
            other => Ok(Transformed::no(other)),
        })
        .map(|t| t.data)
    }
}

impl<R: Run> ScalarUDFImpl for Wrapped<R> {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.schema_name(args)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn output_ordering(&self, input: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(input)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.run.run(&self.inner, args)
    }

    /// The inner function's configured instance (`now()` in the session's time zone), wrapped
    /// the same way.
    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        let inner = self.inner.inner().with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(Wrapped {
            inner: Arc::new(inner),
            run: self.run.clone(),
        }))
    }

    /// The inner function's rewrites, which some need before they can run (`coalesce` and
    /// `nvl2` become `CASE`, `arrow_cast` a cast, `now()` a constant), unless the wrapper must
    /// stay ([`Run::simplified`]); a call of the inner function in the rewrite calls this
    /// wrapper again.
    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        if !self.run.simplified() {
            return Ok(ExprSimplifyResult::Original(args));
        }
        Ok(match self.inner.simplify(args, info)? {
            ExprSimplifyResult::Simplified(expr) => {
                ExprSimplifyResult::Simplified(self.rewrapped(expr)?)
            }
            original => original,
        })
    }

    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> Result<PreimageResult> {
        self.inner.preimage(args, lit_expr, info)
    }

    fn conditional_arguments<'a>(
        &self,
        args: &'a [Expr],
    ) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.conditional_arguments(args)
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.inner.evaluate_bounds(input)
    }

    fn propagate_constraints(
        &self,
        interval: &Interval,
        inputs: &[&Interval],
    ) -> Result<Option<Vec<Interval>>> {
        self.inner.propagate_constraints(interval, inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.preserves_lex_ordering(inputs)
    }

    fn placement(&self, args: &[ExpressionPlacement]) -> ExpressionPlacement {
        self.inner.placement(args)
    }
}

//! A DataFusion function wrapped to run differently, and otherwise the same function: its name,
//! signature, types, ordering and documentation are the inner function's. A wrapper says only
//! how a call runs ([`Run`]): the memory bounds of growing functions (`bounded.rs`), the step
//! bounds of functions whose work outgrows their arguments (`pieces.rs`) and the UTC arithmetic
//! of `date_trunc` (`trunc.rs`).

use std::any::Any;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use crate::memory::QueryPool;
use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::Result;
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};

/// How a wrapped function's calls run.
pub(super) trait Run: Debug + PartialEq + Eq + Hash + Send + Sync + 'static {
    /// Runs `args` through `inner` (the wrapped function), in this wrapper's way.
    fn run(&self, inner: &ScalarUDF, args: ScalarFunctionArgs) -> Result<ColumnarValue>;
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

#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct Wrapped<R> {
    pub(super) inner: Arc<ScalarUDF>,
    pub(super) run: R,
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
}

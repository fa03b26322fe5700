//! A DataFusion function wrapped to run differently, and otherwise the same function: its name,
//! signature, types, ordering and documentation are the inner function's. A wrapper says only
//! how a call runs ([`Run`]); the memory bounds of growing functions (`bounded.rs`) and the
//! UTC arithmetic of `date_trunc` (`trunc.rs`) are the two.

use std::any::Any;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

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

//! Trino's `||` as a function, `floe_concat(a, b)`: the dialect rewrites every `a || b` into it
//! so that the values it makes are bounded like any growing function's (`bounded.rs`), at run
//! time and when the planner folds constants alike. Text: null if either side is null (unlike
//! `concat`, which skips nulls). Arrays: `array_concat`.

use std::any::Any;
use std::sync::Arc;

use arrow::array::Array;
use arrow::compute::cast;
use arrow::compute::kernels::concat_elements::concat_elements_dyn;
use arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// The name the dialect calls `||` by.
pub const NAME: &str = "floe_concat";

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Concat {
    signature: Signature,
    arrays: Arc<ScalarUDF>,
}

impl Default for Concat {
    fn default() -> Concat {
        Concat {
            signature: Signature::user_defined(Volatility::Immutable),
            arrays: datafusion::functions_nested::concat::array_concat_udf(),
        }
    }
}

fn is_list(t: &DataType) -> bool {
    matches!(
        t,
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..)
    )
}

/// The text type both sides are cast to: the widest of theirs (views stay views, so that a
/// column read as `Utf8View` is not copied).
fn text_type(types: &[DataType]) -> DataType {
    if types.contains(&DataType::LargeUtf8) {
        DataType::LargeUtf8
    } else if types.contains(&DataType::Utf8View) {
        DataType::Utf8View
    } else {
        DataType::Utf8
    }
}

impl ScalarUDFImpl for Concat {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.len() != 2 {
            return exec_err!("|| takes two operands");
        }
        if arg_types.iter().any(is_list) {
            return self.arrays.coerce_types(arg_types);
        }
        let text = text_type(arg_types);
        Ok(vec![text.clone(), text])
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        if arg_types.iter().any(is_list) {
            return self.arrays.return_type(arg_types);
        }
        Ok(text_type(arg_types))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if args.args.iter().any(|a| is_list(&a.data_type())) {
            return self.arrays.invoke_with_args(args);
        }
        let scalars = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let rows = if scalars { 1 } else { args.number_rows };
        let text = text_type(&[args.args[0].data_type(), args.args[1].data_type()]);
        let left = cast(&args.args[0].to_array(rows)?, &text)?;
        let right = cast(&args.args[1].to_array(rows)?, &text)?;
        let joined = concat_elements_dyn(left.as_ref(), right.as_ref())?;
        if scalars {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                joined.as_ref(),
                0,
            )?));
        }
        debug_assert_eq!(joined.len(), rows);
        Ok(ColumnarValue::Array(joined))
    }
}

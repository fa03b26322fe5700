//! Trino's `||` as a function, `floe_concat(a, b)`: the dialect rewrites every `a || b` into it
//! so that the values it makes are bounded like any growing function's (`bounded.rs`), at run
//! time and when the planner folds constants alike. Text: null if either side is null (unlike
//! `concat`, which skips nulls). Arrays: `array_concat`.

use std::any::Any;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, LargeStringArray, LargeStringBuilder, StringArray, StringArrayType,
    StringBuilder, StringViewArray, StringViewBuilder,
};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use super::bounded::total_length;

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
        let columns = args
            .args
            .iter()
            .map(|a| match a {
                ColumnarValue::Array(a) => cast(a, &text).map(Some),
                ColumnarValue::Scalar(_) => Ok(None),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let left = Side::of(&args.args[0], columns[0].as_ref())?;
        let right = Side::of(&args.args[1], columns[1].as_ref())?;
        // The text both sides hold over the rows: the output's size, nulls aside.
        let mut bytes = 0u128;
        for (value, column) in args.args.iter().zip(&columns) {
            bytes += match column {
                Some(column) => total_length(&ColumnarValue::Array(column.clone()), rows)?,
                None => total_length(value, rows)?,
            };
        }
        let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        let joined = joined(&left, &right, rows, bytes, &text)?;
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

/// One operand of `||` over text. A constant is read as it is in every row: it is not copied
/// into an array of the batch's rows first (a 1 MB constant beside a column of 1,000 rows
/// would otherwise make 1 GB that no estimate counts besides the result).
enum Side<'a> {
    Constant(Option<&'a str>),
    Utf8(&'a StringArray),
    Large(&'a LargeStringArray),
    View(&'a StringViewArray),
}

impl<'a> Side<'a> {
    /// `value`, whose column (if it is one) is `column`, already cast to the text type.
    fn of(value: &'a ColumnarValue, column: Option<&'a ArrayRef>) -> Result<Side<'a>> {
        let Some(column) = column else {
            let ColumnarValue::Scalar(s) = value else {
                return exec_err!("|| lost a column operand");
            };
            return match s.try_as_str() {
                Some(text) => Ok(Side::Constant(text)),
                None if s.is_null() => Ok(Side::Constant(None)),
                None => exec_err!("|| over text got a {} constant", s.data_type()),
            };
        };
        Ok(match column.data_type() {
            DataType::Utf8 => Side::Utf8(column.as_string::<i32>()),
            DataType::LargeUtf8 => Side::Large(column.as_string::<i64>()),
            DataType::Utf8View => Side::View(column.as_string_view()),
            other => return exec_err!("|| over text got a {other} column"),
        })
    }

    fn get(&self, row: usize) -> Option<&'a str> {
        fn at<'a, A: StringArrayType<'a>>(a: A, row: usize) -> Option<&'a str> {
            a.is_valid(row).then(|| a.value(row))
        }
        match self {
            Side::Constant(text) => *text,
            Side::Utf8(a) => at(*a, row),
            Side::Large(a) => at(*a, row),
            Side::View(a) => at(*a, row),
        }
    }
}

/// `left || right` in each of `rows` rows, as `text` (null where either is null), in buffers
/// of `bytes`.
fn joined(
    left: &Side,
    right: &Side,
    rows: usize,
    bytes: usize,
    text: &DataType,
) -> Result<ArrayRef> {
    let mut buffer = String::new();
    let mut each = |append: &mut dyn FnMut(Option<&str>)| {
        for row in 0..rows {
            match (left.get(row), right.get(row)) {
                (Some(l), Some(r)) => {
                    buffer.clear();
                    buffer.push_str(l);
                    buffer.push_str(r);
                    append(Some(&buffer));
                }
                _ => append(None),
            }
        }
    };
    Ok(match text {
        DataType::Utf8View => {
            let mut b = StringViewBuilder::with_capacity(rows);
            each(&mut |v| b.append_option(v));
            Arc::new(b.finish())
        }
        DataType::LargeUtf8 => {
            let mut b = LargeStringBuilder::with_capacity(rows, bytes);
            each(&mut |v| b.append_option(v));
            Arc::new(b.finish())
        }
        _ => {
            if i32::try_from(bytes).is_err() {
                return exec_err!(
                    "|| would make {bytes} bytes of text in one batch, more than a text column \
                     holds (2 GiB)"
                );
            }
            let mut b = StringBuilder::with_capacity(rows, bytes);
            each(&mut |v| b.append_option(v));
            Arc::new(b.finish())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;

    fn call(left: ColumnarValue, right: ColumnarValue, rows: usize) -> ColumnarValue {
        let fields = [&left, &right]
            .iter()
            .map(|a| Arc::new(Field::new("a", a.data_type(), true)))
            .collect();
        let text = text_type(&[left.data_type(), right.data_type()]);
        Concat::default()
            .invoke_with_args(ScalarFunctionArgs {
                args: vec![left, right],
                arg_fields: fields,
                number_rows: rows,
                return_field: Arc::new(Field::new("r", text, true)),
                config_options: Arc::new(Default::default()),
            })
            .unwrap()
    }

    fn texts(v: ColumnarValue) -> Vec<Option<String>> {
        let a = cast(&v.to_array(1).unwrap(), &DataType::Utf8).unwrap();
        a.as_string::<i32>()
            .iter()
            .map(|t| t.map(str::to_string))
            .collect()
    }

    #[test]
    fn a_constant_beside_a_column_is_joined_in_every_row_of_each_text_type() {
        let strings = [
            Some("a"),
            None,
            Some("a much longer text than twelve bytes"),
        ];
        let columns: [ArrayRef; 3] = [
            Arc::new(StringArray::from(strings.to_vec())),
            Arc::new(LargeStringArray::from(strings.to_vec())),
            Arc::new(StringViewArray::from(strings.to_vec())),
        ];
        for column in columns {
            let null = ScalarValue::try_from(column.data_type()).unwrap();
            let x = ScalarValue::Utf8(Some("-x".into()))
                .cast_to(column.data_type())
                .unwrap();
            let made = call(
                ColumnarValue::Array(column.clone()),
                ColumnarValue::Scalar(x.clone()),
                3,
            );
            assert_eq!(made.data_type(), *column.data_type());
            assert_eq!(
                texts(made),
                [
                    Some("a-x".to_string()),
                    None,
                    Some("a much longer text than twelve bytes-x".to_string())
                ]
            );
            let made = call(
                ColumnarValue::Scalar(x.clone()),
                ColumnarValue::Array(column.clone()),
                3,
            );
            assert_eq!(texts(made)[0].as_deref(), Some("-xa"));
            // A null constant makes every row null.
            let made = call(
                ColumnarValue::Array(column.clone()),
                ColumnarValue::Scalar(null),
                3,
            );
            assert_eq!(texts(made), [None, None, None]);
            // Two columns, and two constants (one value, not an array).
            let made = call(
                ColumnarValue::Array(column.clone()),
                ColumnarValue::Array(column),
                3,
            );
            assert_eq!(texts(made)[0].as_deref(), Some("aa"));
            let made = call(
                ColumnarValue::Scalar(x.clone()),
                ColumnarValue::Scalar(x),
                3,
            );
            assert!(matches!(made, ColumnarValue::Scalar(_)));
            assert_eq!(texts(made), [Some("-x-x".to_string())]);
        }
    }
}

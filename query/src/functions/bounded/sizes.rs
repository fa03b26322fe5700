//! How large a function's arguments are: per row or in all, in bytes or in list elements, and
//! the numbers some of them hold (a range's bounds, a repeat's count).

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, IntervalMonthDayNano, TimeUnit};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::ColumnarValue;

/// Whether every value of `data_type` takes the same few bytes.
pub(super) fn fixed_width(data_type: &DataType) -> bool {
    data_type.is_primitive() || matches!(data_type, DataType::Boolean | DataType::Null)
}

/// What one element of `data_type` takes in an array, for a null made to pad a list
/// (`arrays_zip`): its width, an offset or a view, each child's for a struct; and its bit of
/// validity, counted as a byte.
pub(super) fn padded_bytes(data_type: &DataType) -> u128 {
    let own = match data_type {
        DataType::Null => return 0,
        DataType::Boolean => 0,
        DataType::Utf8 | DataType::Binary | DataType::List(_) | DataType::Map(..) => 4,
        DataType::LargeUtf8 | DataType::LargeBinary | DataType::LargeList(_) => 8,
        DataType::Struct(fields) => fields.iter().map(|f| padded_bytes(f.data_type())).sum(),
        DataType::FixedSizeList(f, n) => padded_bytes(f.data_type()) * (*n).max(0) as u128,
        DataType::Dictionary(key, _) => padded_bytes(key),
        // Zeros of its width (`arrow_cast(NULL, 'FixedSizeBinary(1000000)')` pads with a
        // megabyte per element).
        DataType::FixedSizeBinary(n) => (*n).max(0) as u128,
        // A type id, an offset (dense), and each child's.
        DataType::Union(fields, _) => {
            5 + fields
                .iter()
                .map(|(_, f)| padded_bytes(f.data_type()))
                .sum::<u128>()
        }
        other => other.primitive_width().unwrap_or(16) as u128,
    };
    own + 1
}

/// The elements of a list argument in each row, as its offsets span them (a null row's span
/// too, and a fixed size list's size whether null or not; 0 for anything not a list).
pub(super) fn list_lengths(v: &ColumnarValue, rows: usize) -> Result<Vec<u128>> {
    fn spans<O: arrow::array::OffsetSizeTrait>(offsets: &[O]) -> Vec<u128> {
        offsets
            .windows(2)
            .map(|w| (w[1].as_usize() - w[0].as_usize()) as u128)
            .collect()
    }
    fn of(array: &dyn Array) -> Vec<u128> {
        match array.data_type() {
            DataType::List(_) => spans(array.as_list::<i32>().value_offsets()),
            DataType::LargeList(_) => spans(array.as_list::<i64>().value_offsets()),
            DataType::FixedSizeList(_, n) => vec![(*n).max(0) as u128; array.len()],
            _ => vec![0; array.len()],
        }
    }
    Ok(match v {
        ColumnarValue::Array(array) => of(array.as_ref()),
        ColumnarValue::Scalar(s) => {
            let one = of(s.to_array_of_size(1)?.as_ref());
            vec![one.first().copied().unwrap_or(0); rows]
        }
    })
}

/// The argument as integers, one per row (`None` for null).
pub(super) fn ints(v: &ColumnarValue, rows: usize) -> Result<Vec<Option<i64>>> {
    let array = one_per_row(v, rows)?;
    let array = cast(&array, &DataType::Int64)?;
    Ok(array
        .as_primitive::<arrow::datatypes::Int64Type>()
        .iter()
        .collect())
}

/// A range's bound as a number on one scale: integers as they are, dates and timestamps in
/// nanoseconds.
pub(super) fn instants(v: &ColumnarValue, rows: usize) -> Result<Vec<Option<i64>>> {
    let per_unit: i64 = match v.data_type() {
        DataType::Date32 => 86_400 * 1_000_000_000,
        DataType::Date64 | DataType::Timestamp(TimeUnit::Millisecond, _) => 1_000_000,
        DataType::Timestamp(TimeUnit::Second, _) => 1_000_000_000,
        DataType::Timestamp(TimeUnit::Microsecond, _) => 1_000,
        _ => 1,
    };
    let raw = match v.data_type() {
        DataType::Date32 => {
            let a = one_per_row(v, rows)?;
            cast(&cast(&a, &DataType::Int32)?, &DataType::Int64)?
        }
        DataType::Timestamp(..) | DataType::Date64 => {
            cast(&one_per_row(v, rows)?, &DataType::Int64)?
        }
        _ => return ints(v, rows),
    };
    Ok(raw
        .as_primitive::<arrow::datatypes::Int64Type>()
        .iter()
        .map(|x| x.map(|x| x.saturating_mul(per_unit)))
        .collect())
}

/// A range's step on the scale of [`instants`]: an interval as its shortest length in
/// nanoseconds (a month as 28 days), a number as it is.
pub(super) fn steps(v: &ColumnarValue, rows: usize) -> Result<Vec<Option<i64>>> {
    const DAY: i64 = 86_400 * 1_000_000_000;
    match v.data_type() {
        DataType::Interval(_) => {
            let a = cast(
                &one_per_row(v, rows)?,
                &DataType::Interval(arrow::datatypes::IntervalUnit::MonthDayNano),
            )?;
            Ok(
                a.as_primitive::<arrow::datatypes::IntervalMonthDayNanoType>()
                    .iter()
                    .map(|x| {
                        x.map(
                            |IntervalMonthDayNano {
                                 months,
                                 days,
                                 nanoseconds,
                             }| {
                                (months as i64 * 28 + days as i64)
                                    .saturating_mul(DAY)
                                    .saturating_add(nanoseconds)
                            },
                        )
                    })
                    .collect(),
            )
        }
        _ => ints(v, rows),
    }
}

/// The byte length of the argument's value in each row (text: its bytes; other values: their
/// in-memory size).
pub(super) fn lengths(v: &ColumnarValue, rows: usize) -> Result<Vec<usize>> {
    if let ColumnarValue::Scalar(s) = v {
        let len = match s {
            ScalarValue::Utf8(t) | ScalarValue::LargeUtf8(t) | ScalarValue::Utf8View(t) => {
                t.as_ref().map_or(0, String::len)
            }
            other => other.size(),
        };
        return Ok(vec![len; rows]);
    }
    let array = one_per_row(v, rows)?;
    Ok(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().map(len_of).collect(),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().map(len_of).collect(),
        DataType::Utf8View => array.as_string_view().iter().map(len_of).collect(),
        _ => {
            // The bytes this array's rows take (a slice of a larger array: its part only).
            let bytes = array
                .to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| array.get_array_memory_size());
            vec![bytes / array.len().max(1); array.len()]
        }
    })
}

/// The groups each row's pattern may capture: its opening parentheses (an upper bound: some
/// are escaped or do not capture).
pub(super) fn groups(v: &ColumnarValue, rows: usize) -> Result<Vec<u128>> {
    let count = |p: Option<&str>| p.map_or(0, |p| p.bytes().filter(|&b| b == b'(').count() as u128);
    if let ColumnarValue::Scalar(s) = v {
        return Ok(vec![count(s.try_as_str().flatten()); rows]);
    }
    Ok(crate::functions::json::documents(&one_per_row(v, rows)?)?
        .map(count)
        .collect())
}

/// The elements of a list argument over `rows` rows (0 for anything else).
pub(crate) fn elements(v: &ColumnarValue, rows: usize) -> u128 {
    fn spanned<O: arrow::array::OffsetSizeTrait>(offsets: &[O]) -> u128 {
        match (offsets.first(), offsets.last()) {
            (Some(first), Some(last)) => (last.as_usize() - first.as_usize()) as u128,
            _ => 0,
        }
    }
    fn values(array: &dyn Array) -> u128 {
        match array.data_type() {
            DataType::List(_) => spanned(array.as_list::<i32>().value_offsets()),
            DataType::LargeList(_) => spanned(array.as_list::<i64>().value_offsets()),
            DataType::FixedSizeList(_, n) => array.len() as u128 * (*n).max(0) as u128,
            _ => 0,
        }
    }
    match v {
        ColumnarValue::Array(array) => values(array.as_ref()),
        ColumnarValue::Scalar(ScalarValue::List(a)) => values(a.as_ref()) * rows as u128,
        ColumnarValue::Scalar(ScalarValue::LargeList(a)) => values(a.as_ref()) * rows as u128,
        ColumnarValue::Scalar(ScalarValue::FixedSizeList(a)) => values(a.as_ref()) * rows as u128,
        ColumnarValue::Scalar(_) => 0,
    }
}

/// The sum of [`lengths`] over the rows, without a vector of them (these functions run on
/// every batch of a column).
pub(crate) fn total_length(v: &ColumnarValue, rows: usize) -> Result<u128> {
    let ColumnarValue::Array(array) = v else {
        return Ok(lengths(v, 1)?[0] as u128 * rows as u128);
    };
    let sum = |offsets: &[i64]| (offsets[offsets.len() - 1] - offsets[0]) as u128;
    Ok(match array.data_type() {
        DataType::Utf8 => {
            let o = array.as_string::<i32>().value_offsets();
            (o[o.len() - 1] - o[0]) as u128
        }
        DataType::LargeUtf8 => sum(array.as_string::<i64>().value_offsets()),
        // A view's low 32 bits are its string's length.
        DataType::Utf8View => array
            .as_string_view()
            .views()
            .iter()
            .map(|&v| u128::from(v as u32))
            .sum(),
        _ => lengths(v, rows)?.iter().map(|&b| b as u128).sum(),
    })
}

/// Whether every text of the argument is ASCII (anything else: not).
pub(super) fn ascii(v: &ColumnarValue) -> Result<bool> {
    if let ColumnarValue::Scalar(s) = v {
        return Ok(s.try_as_str().flatten().is_none_or(str::is_ascii));
    }
    let array = one_per_row(v, 1)?;
    let all = |mut texts: Box<dyn Iterator<Item = Option<&str>> + '_>| {
        texts.all(|t| t.is_none_or(str::is_ascii))
    };
    Ok(match array.data_type() {
        DataType::Utf8 => all(Box::new(array.as_string::<i32>().iter())),
        DataType::LargeUtf8 => all(Box::new(array.as_string::<i64>().iter())),
        DataType::Utf8View => all(Box::new(array.as_string_view().iter())),
        _ => false,
    })
}

fn len_of(s: Option<&str>) -> usize {
    s.map_or(0, str::len)
}

fn one_per_row(v: &ColumnarValue, rows: usize) -> Result<ArrayRef> {
    v.to_array(rows)
}

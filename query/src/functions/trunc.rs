//! `date_trunc` of timestamps in UTC by arithmetic.
//!
//! DataFusion's `date_trunc` truncates a timestamp that carries a zone to hours, days and
//! coarser units through that zone's calendar, row by row, even when the zone is UTC (as
//! every Iceberg `timestamptz` is, read as `+00:00`); without a zone it truncates hours and
//! days by arithmetic. In UTC both give the same instants, so this wrapper hands DataFusion's
//! function the array without its zone and puts the zone back on the result (neither is a
//! copy). Every other input goes to DataFusion's function as it is; everything but the call is
//! DataFusion's function's own (`wrapped.rs`).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, make_array};
use arrow::datatypes::{DataType, Field};
use datafusion::common::Result;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF};

use super::time::is_utc;
use super::wrapped::{Run, Wrapped};

/// DataFusion's `date_trunc`, with timestamps in UTC truncated without their zone.
pub(super) fn date_trunc() -> Wrapped<UtcArithmetic> {
    Wrapped {
        inner: datafusion::functions::datetime::date_trunc(),
        run: UtcArithmetic,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct UtcArithmetic;

/// `array` with its timestamp type's zone set to `zone` (the same buffers).
fn with_zone(array: &ArrayRef, zone: Option<Arc<str>>) -> Result<ArrayRef> {
    let DataType::Timestamp(unit, _) = array.data_type() else {
        return Ok(array.clone());
    };
    let data = array
        .to_data()
        .into_builder()
        .data_type(DataType::Timestamp(*unit, zone))
        .build()?;
    Ok(make_array(data))
}

impl Run for UtcArithmetic {
    fn run(&self, inner: &ScalarUDF, mut args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let utc_zone = match args.args.get(1) {
            Some(ColumnarValue::Array(a)) => match a.data_type() {
                DataType::Timestamp(_, Some(zone)) if is_utc(zone) => Some(zone.clone()),
                _ => None,
            },
            _ => None,
        };
        let Some(zone) = utc_zone else {
            return inner.invoke_with_args(args);
        };
        if let Some(ColumnarValue::Array(a)) = args.args.get_mut(1) {
            *a = with_zone(a, None)?;
            let plain = Field::new(
                args.arg_fields[1].name(),
                a.data_type().clone(),
                args.arg_fields[1].is_nullable(),
            );
            args.arg_fields[1] = Arc::new(plain);
            args.return_field = Arc::new(
                args.return_field
                    .as_ref()
                    .clone()
                    .with_data_type(a.data_type().clone()),
            );
        }
        match inner.invoke_with_args(args)? {
            ColumnarValue::Array(out) => Ok(ColumnarValue::Array(with_zone(&out, Some(zone))?)),
            scalar => Ok(scalar),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        AsArray, TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray,
        TimestampSecondArray,
    };
    use arrow::datatypes::TimeUnit;
    use datafusion::common::ScalarValue;
    use datafusion::common::config::ConfigOptions;
    use datafusion::logical_expr::ScalarUDFImpl;

    /// Truncates `micros` (in `zone`) to `unit` with the wrapper and with DataFusion's own.
    fn both(unit: &str, zone: &str, micros: &[i64]) -> (ArrayRef, ArrayRef) {
        let ts: ArrayRef =
            Arc::new(TimestampMicrosecondArray::from(micros.to_vec()).with_timezone(zone));
        run(unit, ts)
    }

    /// Truncates `ts` to `unit` with the wrapper and with DataFusion's own.
    fn run(unit: &str, ts: ArrayRef) -> (ArrayRef, ArrayRef) {
        let rows = ts.len();
        let field = Arc::new(Field::new("ts", ts.data_type().clone(), true));
        let args = || ScalarFunctionArgs {
            args: vec![
                ColumnarValue::Scalar(ScalarValue::Utf8(Some(unit.into()))),
                ColumnarValue::Array(ts.clone()),
            ],
            arg_fields: vec![
                Arc::new(Field::new("u", DataType::Utf8, false)),
                field.clone(),
            ],
            number_rows: rows,
            return_field: field.clone(),
            config_options: Arc::new(ConfigOptions::default()),
        };
        let ours = date_trunc().invoke_with_args(args()).unwrap();
        let theirs = date_trunc().inner.invoke_with_args(args()).unwrap();
        let (ColumnarValue::Array(ours), ColumnarValue::Array(theirs)) = (ours, theirs) else {
            panic!("arrays in, arrays out");
        };
        (ours, theirs)
    }

    #[test]
    fn utc_truncates_as_datafusion_does_and_keeps_its_zone() {
        // Before and after the epoch, on and off the unit's boundaries, a leap day.
        let micros = [
            -86_400_000_001,
            -1,
            0,
            1,
            1_709_164_799_999_999,
            1_709_208_000_123_456,
            1_735_689_599_000_000,
        ];
        for zone in ["+00:00", "UTC"] {
            for unit in [
                "second", "minute", "hour", "day", "week", "month", "quarter", "year",
            ] {
                let (ours, theirs) = both(unit, zone, &micros);
                assert_eq!(
                    ours.data_type(),
                    &DataType::Timestamp(TimeUnit::Microsecond, Some(zone.into()))
                );
                assert_eq!(&ours, &theirs, "{unit} in {zone}");
            }
        }
        // Other units of time, and nulls, in UTC (within the years DataFusion's own function
        // can take: it goes through nanoseconds for months).
        let at = |per_second: i64| {
            vec![
                Some(-86_401 * per_second - 1),
                None,
                Some(0),
                Some(1_709_208_000 * per_second + 123),
            ]
        };
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(TimestampSecondArray::from(at(1)).with_timezone("+00:00")),
            Arc::new(TimestampMillisecondArray::from(at(1_000)).with_timezone("+00:00")),
            Arc::new(TimestampNanosecondArray::from(at(1_000_000_000)).with_timezone("+00:00")),
        ];
        for ts in arrays {
            for unit in ["second", "hour", "day", "month"] {
                let (ours, theirs) = run(unit, ts.clone());
                assert_eq!(ours.data_type(), ts.data_type());
                assert_eq!(&ours, &theirs, "{unit} of {}", ts.data_type());
                assert_eq!(ours.null_count(), 1);
            }
        }
        // Another zone goes to DataFusion's own function untouched.
        let (ours, theirs) = both("day", "Europe/Berlin", &micros);
        assert_eq!(&ours, &theirs);
        assert_eq!(
            ours.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .timezone(),
            Some("Europe/Berlin")
        );
    }
}

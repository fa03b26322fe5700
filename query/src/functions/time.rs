//! Trino's date and time functions: fields in the value's zone, `date_diff`, `date_add`,
//! `format_datetime` (Joda-Time patterns).

use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::timezone::Tz;
use arrow::array::{Array, ArrayRef, AsArray, Int64Array, StringArray, TimestampMicrosecondArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit};
use chrono::{DateTime, Datelike, Months, TimeZone, Timelike, Utc};
use datafusion::common::{DataFusionError, Result, exec_err};

use super::Part;

pub(super) fn field(t: &DateTime<Tz>, part: Part) -> i64 {
    (match part {
        Part::Year => t.year() as u32,
        Part::Quarter => (t.month() - 1) / 3 + 1,
        Part::Month => t.month(),
        Part::Week => t.iso_week().week(),
        Part::Day => t.day(),
        Part::DayOfWeek => t.weekday().number_from_monday(),
        Part::DayOfYear => t.ordinal(),
        Part::Hour => t.hour(),
        Part::Minute => t.minute(),
        Part::Second => t.second(),
    }) as i64
}

/// Whether a timestamp's zone is UTC under one of its names (Iceberg's `timestamptz` is read
/// as `+00:00`): its local times are then plain arithmetic on the microseconds, with no
/// calendar of the zone to consult row by row.
pub(super) fn is_utc(zone: &str) -> bool {
    matches!(
        zone,
        "UTC" | "utc" | "Z" | "+00:00" | "-00:00" | "+0000" | "+00" | "Etc/UTC" | "GMT" | "Etc/GMT"
    )
}

/// Microseconds and the zone of a coerced temporal argument.
pub(super) fn micros(a: &ArrayRef) -> Result<(TimestampMicrosecondArray, Tz)> {
    let tz_name = match a.data_type() {
        DataType::Timestamp(_, Some(tz)) => tz.to_string(),
        _ => "UTC".to_string(),
    };
    let tz = Tz::from_str(&tz_name)?;
    let as_micros = cast(a, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
    Ok((as_micros.as_primitive().clone(), tz))
}

pub(super) fn local(micros: i64, tz: &Tz) -> Option<DateTime<Tz>> {
    DateTime::<Utc>::from_timestamp_micros(micros).map(|t| t.with_timezone(tz))
}

pub(super) fn unit_arg(units: &StringArray, row: usize) -> Result<String> {
    if units.is_null(row) {
        return exec_err!("the unit may not be null");
    }
    Ok(units.value(row).to_ascii_lowercase())
}

const MICROS: [(&str, i64); 7] = [
    ("microsecond", 1),
    ("millisecond", 1_000),
    ("second", 1_000_000),
    ("minute", 60_000_000),
    ("hour", 3_600_000_000),
    ("day", 86_400_000_000),
    ("week", 604_800_000_000),
];

pub(super) fn months_of(unit: &str) -> Option<i64> {
    match unit {
        "month" => Some(1),
        "quarter" => Some(3),
        "year" => Some(12),
        _ => None,
    }
}

pub(super) fn bad_unit(unit: &str) -> DataFusionError {
    DataFusionError::Execution(format!(
        "'{unit}' is not a valid unit; use millisecond, second, minute, hour, day, week, month, \
         quarter or year"
    ))
}

/// `date_diff(unit, a, b)`: whole units from `a` to `b` (negative when `b` is earlier).
pub(super) fn date_diff(arrays: &[ArrayRef]) -> Result<ArrayRef> {
    let units = arrays[0].as_string::<i32>();
    let (a, tz) = micros(&arrays[1])?;
    let (b, _) = micros(&arrays[2])?;
    let mut out = Vec::with_capacity(a.len());
    for row in 0..a.len() {
        if a.is_null(row) || b.is_null(row) {
            out.push(None);
            continue;
        }
        let unit = unit_arg(units, row)?;
        let (x, y) = (a.value(row), b.value(row));
        let v = if let Some(step) = months_of(&unit) {
            let (Some(lx), Some(ly)) = (local(x, &tz), local(y, &tz)) else {
                out.push(None);
                continue;
            };
            let (lx, ly) = (lx.naive_local(), ly.naive_local());
            let mut months =
                (ly.year() as i64 - lx.year() as i64) * 12 + ly.month() as i64 - lx.month() as i64;
            // Only whole months count: step back if the last one is not complete.
            let shifted = |m: i64| {
                if m >= 0 {
                    lx.checked_add_months(Months::new(m as u32))
                } else {
                    lx.checked_sub_months(Months::new((-m) as u32))
                }
            };
            if months > 0 && shifted(months).is_some_and(|s| s > ly) {
                months -= 1;
            } else if months < 0 && shifted(months).is_some_and(|s| s < ly) {
                months += 1;
            }
            months / step
        } else if let Some((_, m)) = MICROS.iter().find(|(u, _)| *u == unit) {
            (y - x) / m
        } else {
            return Err(bad_unit(&unit));
        };
        out.push(Some(v));
    }
    Ok(Arc::new(Int64Array::from(out)))
}

/// `date_add(unit, n, t)`: `t` moved by `n` units, in `t`'s own type.
pub(super) fn date_add(arrays: &[ArrayRef]) -> Result<ArrayRef> {
    let units = arrays[0].as_string::<i32>();
    let n = arrays[1].as_primitive::<arrow::datatypes::Int64Type>();
    let is_date = arrays[2].data_type() == &DataType::Date32;
    let (t, tz) = micros(&arrays[2])?;
    let mut out = Vec::with_capacity(t.len());
    for row in 0..t.len() {
        if t.is_null(row) || n.is_null(row) {
            out.push(None);
            continue;
        }
        let unit = unit_arg(units, row)?;
        let (v, k) = (t.value(row), n.value(row));
        let moved = if let Some(step) = months_of(&unit) {
            let months = k * step;
            local(v, &tz)
                .and_then(|l| {
                    let naive = l.naive_local();
                    let shifted = if months >= 0 {
                        naive.checked_add_months(Months::new(months as u32))
                    } else {
                        naive.checked_sub_months(Months::new((-months) as u32))
                    }?;
                    tz.from_local_datetime(&shifted).earliest()
                })
                .map(|d| d.timestamp_micros())
        } else if let Some((_, m)) = MICROS.iter().find(|(u, _)| *u == unit) {
            if is_date && *m < 86_400_000_000 {
                return exec_err!("date_add: '{unit}' is not a unit of a date");
            }
            k.checked_mul(*m).and_then(|d| v.checked_add(d))
        } else {
            return Err(bad_unit(&unit));
        };
        out.push(moved);
    }
    let ts = TimestampMicrosecondArray::from(out);
    if is_date {
        Ok(cast(&ts, &DataType::Date32)?)
    } else {
        let target = arrays[2].data_type().clone();
        let tz_name = match &target {
            DataType::Timestamp(_, Some(z)) => z.to_string(),
            _ => "UTC".into(),
        };
        Ok(Arc::new(ts.with_timezone(tz_name)))
    }
}

/// Translates a Joda-Time pattern (Trino's `format_datetime`) to chrono's strftime.
pub(super) fn joda_to_strftime(pattern: &str) -> Result<String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // Quoted literal; '' is a quote.
            let mut j = i + 1;
            if j < chars.len() && chars[j] == '\'' {
                out.push('\'');
                i += 2;
                continue;
            }
            while j < chars.len() && chars[j] != '\'' {
                if chars[j] == '%' {
                    out.push_str("%%");
                } else {
                    out.push(chars[j]);
                }
                j += 1;
            }
            i = j + 1;
            continue;
        }
        let mut run = 1;
        while i + run < chars.len() && chars[i + run] == c {
            run += 1;
        }
        let spec = match (c, run) {
            ('y' | 'Y' | 'u', 2) => "%y",
            ('y' | 'Y' | 'u', _) => "%Y",
            ('M', 1) => "%-m",
            ('M', 2) => "%m",
            ('M', 3) => "%b",
            ('M', _) => "%B",
            ('d', 1) => "%-d",
            ('d', _) => "%d",
            ('D', _) => "%j",
            ('H', 1) => "%-H",
            ('H', _) => "%H",
            ('h', 1) => "%-I",
            ('h', _) => "%I",
            ('m', 1) => "%-M",
            ('m', _) => "%M",
            ('s', 1) => "%-S",
            ('s', _) => "%S",
            ('S', 1..=3) => "%3f",
            ('S', 4..=6) => "%6f",
            ('S', _) => "%9f",
            ('a', _) => "%p",
            ('E', 1..=3) => "%a",
            ('E', _) => "%A",
            ('e', _) => "%u",
            ('Z', 1) => "%z",
            ('Z', _) => "%:z",
            ('z', _) => "%Z",
            ('w', _) => "%V",
            ('x', _) => "%G",
            (c, _) if c.is_ascii_alphabetic() => {
                return exec_err!("format_datetime: pattern letter '{c}' is not supported");
            }
            ('%', _) => {
                for _ in 0..run {
                    out.push_str("%%");
                }
                i += run;
                continue;
            }
            (c, _) => {
                for _ in 0..run {
                    out.push(c);
                }
                i += run;
                continue;
            }
        };
        out.push_str(spec);
        i += run;
    }
    Ok(out)
}

pub(super) fn format_datetime(arrays: &[ArrayRef]) -> Result<ArrayRef> {
    let (ts, tz) = micros(&arrays[0])?;
    let patterns = arrays[1].as_string::<i32>();
    let mut cached: Option<(String, String)> = None;
    let mut out = Vec::with_capacity(ts.len());
    for row in 0..ts.len() {
        if ts.is_null(row) || patterns.is_null(row) {
            out.push(None);
            continue;
        }
        let p = patterns.value(row);
        if cached.as_ref().is_none_or(|(joda, _)| joda != p) {
            cached = Some((p.to_string(), joda_to_strftime(p)?));
        }
        let fmt = cached.as_ref().map(|(_, f)| f.as_str()).unwrap_or("");
        let Some(t) = local(ts.value(row), &tz) else {
            out.push(None);
            continue;
        };
        let mut s = String::new();
        write!(s, "{}", t.format(fmt)).map_err(|_| {
            DataFusionError::Execution(format!("format_datetime: bad pattern '{p}'"))
        })?;
        out.push(Some(s));
    }
    Ok(Arc::new(StringArray::from(out)))
}

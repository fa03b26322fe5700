//! A string column read as a dictionary, compared with a literal once per dictionary.
//!
//! Arrow's comparison of a dictionary column with a literal compares every value of the
//! dictionary, then picks each row's answer by its key (a `take` of booleans). The Parquet
//! reader hands each batch of a row group the row group's whole dictionary, so for a column of
//! thousands of distinct values (`user_id`) each batch of 8,192 rows paid for thousands of
//! string comparisons, and the `take` cost more than the comparisons would on plain keys.
//!
//! [`DictionaryComparison`] stands in for such a comparison (`column op 'literal'`): it keeps
//! the answer for each of the dictionaries it used last ([`Answer`], at most [`KEPT`] of them
//! and [`KEPT_BYTES`] of dictionaries, counted in the query's memory pool), and answers a batch from its keys alone: when one value
//! of the dictionary matches (an equality), each row's answer is whether its key is that
//! value's, which compiles to a vector comparison; when all values but one match, whether it
//! is not; when none or all match, the answer is constant; otherwise it is looked up per key
//! in a table of booleans. Anything else (not a dictionary of `Int32` keys over `Utf8` values
//! without nulls) is answered by the comparison it stands in for, which is also its one child,
//! so that rewrites of the expression tree reach the column inside. A null literal is not
//! taken at all.

use std::any::Any;
use std::collections::VecDeque;
use std::fmt::{self, Display, Formatter};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayData, ArrayRef, AsArray, BooleanArray, Scalar, StringArray};
use arrow::buffer::BooleanBuffer;
use arrow::compute::kernels::cmp;
use arrow::datatypes::{DataType, Int32Type, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::common::{Result, ScalarValue};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::logical_expr::{ColumnarValue, Operator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::expressions::{BinaryExpr, Column, Literal};

/// Dictionaries whose answers are kept, per comparison, the least recently used dropped
/// first: each partition reading row groups at once uses one at a time, so up to this many
/// partitions find theirs kept.
const KEPT: usize = 32;

/// The most bytes of dictionaries the answers keep alive, per comparison. They are counted in
/// the query's memory pool; when the pool has no room, an answer is not kept.
const KEPT_BYTES: usize = 4 << 20;

/// A dictionary larger than this is answered afresh for each batch rather than kept (Parquet
/// writers cap a dictionary page at 1 MiB by default).
const KEPT_ONE: usize = 1 << 20;

/// `column op literal`, answered per dictionary (see the module comment).
pub(crate) struct DictionaryComparison {
    /// The comparison this stands in for, as planned.
    original: Arc<dyn PhysicalExpr>,
    column: Arc<dyn PhysicalExpr>,
    /// With the column on the left.
    op: Operator,
    literal: String,
    /// The query's memory, which the dictionaries kept are counted in.
    pool: Option<Arc<dyn MemoryPool>>,
    answers: Mutex<Answers>,
}

/// The answers kept, most recently used last, and the memory their dictionaries take.
struct Answers {
    kept: VecDeque<Kept>,
    reservation: Option<MemoryReservation>,
}

impl Answers {
    fn held(&self) -> usize {
        self.kept
            .iter()
            .map(|k| k.values.get_buffer_memory_size())
            .sum()
    }

    /// Keeps `answer` for `values` (`bytes` of buffers), the least recently used dropped to
    /// make room; not kept when the query's pool has no room for it.
    fn keep(&mut self, values: ArrayData, bytes: usize, answer: Arc<Answer>) {
        while self.kept.len() >= KEPT || self.held() + bytes > KEPT_BYTES {
            self.kept.pop_front();
        }
        let held = self.held();
        let counted = match &mut self.reservation {
            Some(r) => match r.try_resize(held + bytes) {
                Ok(()) => true,
                Err(_) => {
                    r.resize(held);
                    false
                }
            },
            None => true,
        };
        if counted {
            self.kept.push_back(Kept { values, answer });
        }
    }
}

/// One dictionary's answer, and the dictionary (its buffers held, so that no other dictionary
/// can take their place in memory and be taken for it).
struct Kept {
    values: ArrayData,
    answer: Arc<Answer>,
}

impl fmt::Debug for DictionaryComparison {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        // Without the answers kept: they hold whole dictionaries.
        f.debug_struct("DictionaryComparison")
            .field("original", &self.original)
            .finish_non_exhaustive()
    }
}

/// Which of a dictionary's values compare true.
#[derive(Debug, PartialEq)]
enum Answer {
    None,
    All,
    Only(i32),
    AllBut(i32),
    /// Indexed by key.
    Table(Vec<bool>),
}

impl DictionaryComparison {
    /// `comparison` answered per dictionary if it compares a column with a non-null string
    /// literal (`=`, `<>`, `<`, `<=`, `>`, `>=`), either way round; `None` otherwise. The
    /// dictionaries it keeps are counted in `pool`, the query's memory.
    pub(crate) fn over(
        comparison: &Arc<dyn PhysicalExpr>,
        pool: Option<&Arc<dyn MemoryPool>>,
    ) -> Option<Arc<dyn PhysicalExpr>> {
        let binary = comparison.as_any().downcast_ref::<BinaryExpr>()?;
        let string = |e: &Arc<dyn PhysicalExpr>| match e.as_any().downcast_ref::<Literal>() {
            Some(l) => match l.value() {
                ScalarValue::Utf8(Some(s)) => Some(s.clone()),
                _ => None,
            },
            None => None,
        };
        let is_column = |e: &Arc<dyn PhysicalExpr>| e.as_any().is::<Column>();
        let op = *binary.op();
        if !is_comparison(&op) {
            return None;
        }
        let (column, op, literal) = match (string(binary.left()), string(binary.right())) {
            (None, Some(literal)) if is_column(binary.left()) => (binary.left(), op, literal),
            (Some(literal), None) if is_column(binary.right()) => {
                (binary.right(), op.swap()?, literal)
            }
            _ => return None,
        };
        Some(Arc::new(Self {
            original: comparison.clone(),
            column: column.clone(),
            op,
            literal,
            pool: pool.cloned(),
            answers: Mutex::new(Answers {
                kept: VecDeque::new(),
                reservation: pool
                    .map(|p| MemoryConsumer::new("dictionary answers kept").register(p)),
            }),
        }))
    }

    /// Which values of `values` (a dictionary's, without nulls) compare true.
    fn answer(&self, values: &ArrayRef) -> Result<Arc<Answer>> {
        let data = values.to_data();
        {
            let mut answers = self.answers();
            let kept = &mut answers.kept;
            if let Some(at) = kept.iter().position(|k| k.values.ptr_eq(&data))
                && let Some(hit) = kept.remove(at)
            {
                let answer = hit.answer.clone();
                kept.push_back(hit);
                return Ok(answer);
            }
        }
        let literal = Scalar::new(StringArray::from(vec![self.literal.as_str()]));
        let matched = match self.op {
            Operator::Eq => cmp::eq(values, &literal)?,
            Operator::NotEq => cmp::neq(values, &literal)?,
            Operator::Lt => cmp::lt(values, &literal)?,
            Operator::LtEq => cmp::lt_eq(values, &literal)?,
            Operator::Gt => cmp::gt(values, &literal)?,
            _ => cmp::gt_eq(values, &literal)?,
        };
        let matched = matched.values();
        let answer = Arc::new(match matched.count_set_bits() {
            0 => Answer::None,
            n if n == matched.len() => Answer::All,
            1 => Answer::Only(first(matched, true)),
            n if n + 1 == matched.len() => Answer::AllBut(first(matched, false)),
            _ => Answer::Table(matched.iter().collect()),
        });
        let bytes = data.get_buffer_memory_size();
        if bytes <= KEPT_ONE {
            self.answers().keep(data, bytes, answer.clone());
        }
        Ok(answer)
    }

    fn answers(&self) -> std::sync::MutexGuard<'_, Answers> {
        // A panic elsewhere while this was held left at worst an answer fully written.
        self.answers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether `op` is one of the comparisons a dictionary answers as its strings do: `=`, `<>`,
/// `<`, `<=`, `>`, `>=`.
pub(crate) fn is_comparison(op: &Operator) -> bool {
    matches!(
        op,
        Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq
    )
}

/// The key of the first value of `matched` that is `set`.
fn first(matched: &BooleanBuffer, set: bool) -> i32 {
    let index = matched.iter().position(|b| b == set).unwrap_or_default();
    i32::try_from(index).unwrap_or(i32::MAX)
}

impl PhysicalExpr for DictionaryComparison {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn data_type(&self, _schema: &Schema) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn nullable(&self, schema: &Schema) -> Result<bool> {
        self.original.nullable(schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let ColumnarValue::Array(array) = self.column.evaluate(batch)? else {
            return self.original.evaluate(batch);
        };
        let Some(dictionary) = array.as_dictionary_opt::<Int32Type>() else {
            return self.original.evaluate(batch);
        };
        // (Of other value types Arrow's comparison with a `Utf8` literal makes an error.)
        if dictionary.values().data_type() != &DataType::Utf8
            || dictionary.values().null_count() > 0
        {
            return self.original.evaluate(batch);
        }
        let keys = dictionary.keys();
        let len = keys.len();
        let k = keys.values();
        let bits = match self.answer(dictionary.values())?.as_ref() {
            Answer::None => BooleanBuffer::new_unset(len),
            Answer::All => BooleanBuffer::new_set(len),
            Answer::Only(key) => BooleanBuffer::collect_bool(len, |i| k[i] == *key),
            Answer::AllBut(key) => BooleanBuffer::collect_bool(len, |i| k[i] != *key),
            // (A null row's key may point anywhere.)
            Answer::Table(table) => BooleanBuffer::collect_bool(len, |i| {
                usize::try_from(k[i])
                    .ok()
                    .and_then(|k| table.get(k).copied())
                    .unwrap_or(false)
            }),
        };
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::new(
            bits,
            keys.nulls().cloned(),
        ))))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.original]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        let original = children[0].clone();
        Ok(Self::over(&original, self.pool.as_ref()).unwrap_or(original))
    }

    fn fmt_sql(&self, f: &mut Formatter<'_>) -> fmt::Result {
        self.original.fmt_sql(f)
    }
}

impl Display for DictionaryComparison {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{} (per dictionary)", self.original)
    }
}

impl PartialEq for DictionaryComparison {
    fn eq(&self, other: &Self) -> bool {
        self.original.as_ref() == other.original.as_ref()
    }
}

impl Eq for DictionaryComparison {}

impl Hash for DictionaryComparison {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.original.hash(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::dictionaries::dictionary_of_strings;
    use arrow::array::{DictionaryArray, Int32Array};
    use arrow::datatypes::Field;
    use bytes::Bytes;
    use datafusion::execution::memory_pool::GreedyMemoryPool;
    use datafusion::physical_plan::expressions::{col, lit};
    use parquet::arrow::ArrowWriter;
    use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};

    /// The `DictionaryComparison` behind `e`, to look at what it keeps.
    fn kept_by(e: &Arc<dyn PhysicalExpr>) -> &DictionaryComparison {
        e.as_any().downcast_ref::<DictionaryComparison>().unwrap()
    }

    fn batch(keys: Int32Array, values: Vec<&str>) -> RecordBatch {
        let dictionary =
            DictionaryArray::<Int32Type>::try_new(keys, Arc::new(StringArray::from(values)))
                .unwrap();
        let schema = Schema::new(vec![Field::new("s", dictionary_of_strings(), true)]);
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(dictionary)]).unwrap()
    }

    fn comparison(
        batch: &RecordBatch,
        op: Operator,
        literal: &str,
        flipped: bool,
    ) -> Arc<dyn PhysicalExpr> {
        let column = col("s", &batch.schema()).unwrap();
        let (left, right) = match flipped {
            false => (column, lit(literal)),
            true => (lit(literal), column),
        };
        Arc::new(BinaryExpr::new(left, op, right))
    }

    fn answered(e: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> BooleanArray {
        e.evaluate(batch)
            .unwrap()
            .into_array(batch.num_rows())
            .unwrap()
            .as_boolean()
            .clone()
    }

    #[test]
    fn answers_as_arrows_comparison_does() {
        // Every key, null rows (one whose key points past the dictionary), values out of
        // order and one repeated.
        let keys = Int32Array::new(
            vec![0, 1, 0, 2, 3, 1, 4, 99].into(),
            Some(vec![true, true, false, true, true, true, true, false].into()),
        );
        let values = vec!["b", "a", "c", "a", "e"];
        let batch = batch(keys, values);
        for op in [
            Operator::Eq,
            Operator::NotEq,
            Operator::Lt,
            Operator::LtEq,
            Operator::Gt,
            Operator::GtEq,
        ] {
            for literal in ["a", "b", "c", "e", "z", "", "0"] {
                for flipped in [false, true] {
                    let plain = comparison(&batch, op, literal, flipped);
                    let ours = DictionaryComparison::over(&plain, None).unwrap();
                    // Twice: the second time from the answer kept.
                    for _ in 0..2 {
                        assert_eq!(
                            answered(&ours, &batch),
                            answered(&plain, &batch),
                            "s {op} {literal} (flipped: {flipped})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn each_kind_of_answer_and_the_one_kept_per_dictionary() {
        let batch = batch(Int32Array::from(vec![0, 1, 2, 1, 0]), vec!["a", "b", "c"]);
        let answer = |op, literal| {
            let plain = comparison(&batch, op, literal, false);
            let ours = DictionaryComparison::over(&plain, None).unwrap();
            let got = answered(&ours, &batch);
            assert_eq!(got, answered(&plain, &batch));
            let ours = kept_by(&ours);
            let answers = ours.answers();
            let kept = &answers.kept;
            assert_eq!(kept.len(), 1);
            std::mem::discriminant(kept[0].answer.as_ref())
        };
        let kind = std::mem::discriminant;
        assert_eq!(answer(Operator::Eq, "z"), kind(&Answer::None));
        assert_eq!(answer(Operator::Lt, "z"), kind(&Answer::All));
        assert_eq!(answer(Operator::Eq, "b"), kind(&Answer::Only(0)));
        assert_eq!(answer(Operator::NotEq, "b"), kind(&Answer::AllBut(0)));
        assert_eq!(answer(Operator::GtEq, "b"), kind(&Answer::AllBut(0)));
        assert_eq!(answer(Operator::Gt, "0"), kind(&Answer::All));

        // A dictionary of four values, two of them matching: looked up by key.
        let four = self::batch(Int32Array::from(vec![3, 2, 1, 0]), vec!["a", "b", "c", "d"]);
        let plain = comparison(&four, Operator::Gt, "b", false);
        let ours = DictionaryComparison::over(&plain, None).unwrap();
        assert_eq!(
            answered(&ours, &four),
            BooleanArray::from(vec![true, true, false, false])
        );

        // Another batch of the same dictionary (a slice shares its buffers) reuses its answer;
        // a dictionary with the same strings in other buffers gets one of its own.
        let plain = comparison(&batch, Operator::Eq, "c", false);
        let ours = DictionaryComparison::over(&plain, None).unwrap();
        let same_strings = self::batch(Int32Array::from(vec![2]), vec!["a", "b", "c"]);
        for b in [batch.clone(), batch.slice(1, 3), same_strings] {
            assert_eq!(answered(&ours, &b), answered(&plain, &b));
        }
        let ours = kept_by(&ours);
        assert_eq!(ours.answers().kept.len(), 2);
    }

    #[test]
    fn the_batches_of_a_row_group_share_its_dictionary_and_its_answer() {
        // One row group of 10,000 rows and 50 strings, read in batches of 1,000 as a
        // dictionary (as `scan::dictionaries` has the reader do).
        let strings: Vec<String> = (0..10_000).map(|i| format!("u-{}", i % 50)).collect();
        let column = StringArray::from_iter_values(&strings);
        let written =
            RecordBatch::try_from_iter(vec![("s", Arc::new(column) as ArrayRef)]).unwrap();
        let mut file = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut file, written.schema(), None).unwrap();
        writer.write(&written).unwrap();
        writer.close().unwrap();
        let hinted = Schema::new(vec![Field::new("s", dictionary_of_strings(), false)]);
        let options = ArrowReaderOptions::new().with_schema(Arc::new(hinted));
        let reader =
            ParquetRecordBatchReaderBuilder::try_new_with_options(Bytes::from(file), options)
                .unwrap()
                .with_batch_size(1_000)
                .build()
                .unwrap();
        let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
        assert_eq!(batches.len(), 10);

        let plain = comparison(&batches[0], Operator::Eq, "u-7", false);
        let ours = DictionaryComparison::over(&plain, None).unwrap();
        let mut matched = 0;
        for b in &batches {
            let got = answered(&ours, b);
            assert_eq!(got, answered(&plain, b));
            matched += got.true_count();
        }
        assert_eq!(matched, 200);
        // One dictionary for the ten batches: answered once, kept once.
        let ours = kept_by(&ours);
        assert_eq!(ours.answers().kept.len(), 1);
    }

    #[test]
    fn the_least_recently_used_answers_go_first() {
        let plain_of = |b: &RecordBatch| comparison(b, Operator::Eq, "a", false);
        let batches: Vec<RecordBatch> = (0..KEPT + 1)
            .map(|_| batch(Int32Array::from(vec![0, 1]), vec!["a", "b"]))
            .collect();
        let ours = DictionaryComparison::over(&plain_of(&batches[0]), None).unwrap();
        for b in &batches[..KEPT] {
            answered(&ours, b);
        }
        // The first used again, then one more: the second goes, the first stays.
        answered(&ours, &batches[0]);
        answered(&ours, &batches[KEPT]);
        let ours = kept_by(&ours);
        let answers = ours.answers();
        let kept = &answers.kept;
        assert_eq!(kept.len(), KEPT);
        let held = |b: &RecordBatch| {
            let values = b.column(0).as_any_dictionary().values().to_data();
            kept.iter().any(|k| k.values.ptr_eq(&values))
        };
        assert!(held(&batches[0]));
        assert!(!held(&batches[1]));
        assert!(held(&batches[KEPT]));
    }

    #[test]
    fn the_dictionaries_kept_are_counted_in_the_querys_memory() {
        let batch = batch(Int32Array::from(vec![0, 1, 2]), vec!["a", "b", "c"]);
        let plain = comparison(&batch, Operator::Eq, "b", false);
        let bytes = batch
            .column(0)
            .as_any_dictionary()
            .values()
            .to_data()
            .get_buffer_memory_size();

        // Room in the pool: kept, and counted until the comparison goes.
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(1 << 20));
        let ours = DictionaryComparison::over(&plain, Some(&pool)).unwrap();
        assert_eq!(answered(&ours, &batch), answered(&plain, &batch));
        assert_eq!(kept_by(&ours).answers().kept.len(), 1);
        assert_eq!(pool.reserved(), bytes);
        drop(ours);
        assert_eq!(pool.reserved(), 0);

        // No room: answered all the same, nothing kept or counted.
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(bytes - 1));
        let ours = DictionaryComparison::over(&plain, Some(&pool)).unwrap();
        for _ in 0..2 {
            assert_eq!(answered(&ours, &batch), answered(&plain, &batch));
        }
        assert!(kept_by(&ours).answers().kept.is_empty());
        assert_eq!(pool.reserved(), 0);
    }

    #[test]
    fn what_it_does_not_stand_in_for() {
        let batch = batch(Int32Array::from(vec![0]), vec!["a"]);
        let column = col("s", &batch.schema()).unwrap();
        let null: Arc<dyn PhysicalExpr> = Arc::new(Literal::new(ScalarValue::Utf8(None)));
        for e in [
            Arc::new(BinaryExpr::new(column.clone(), Operator::Eq, null)) as Arc<dyn PhysicalExpr>,
            Arc::new(BinaryExpr::new(
                column.clone(),
                Operator::Eq,
                column.clone(),
            )),
            Arc::new(BinaryExpr::new(
                column.clone(),
                Operator::LikeMatch,
                lit("a"),
            )),
            Arc::new(BinaryExpr::new(lit("a"), Operator::Eq, lit("a"))),
            column,
        ] {
            assert!(DictionaryComparison::over(&e, None).is_none(), "{e}");
        }
    }

    #[test]
    fn plain_strings_and_dictionaries_with_nulls_are_compared_as_before() {
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, true)]));
        let strings = RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(vec![
                Some("a"),
                None,
                Some("b"),
            ]))],
        )
        .unwrap();
        let plain = comparison(&strings, Operator::Eq, "a", false);
        let ours = DictionaryComparison::over(&plain, None).unwrap();
        assert_eq!(answered(&ours, &strings), answered(&plain, &strings));

        let values = StringArray::from(vec![Some("a"), None]);
        let dictionary = DictionaryArray::<Int32Type>::try_new(
            Int32Array::from(vec![0, 1, 0]),
            Arc::new(values),
        )
        .unwrap();
        let nulls =
            RecordBatch::try_from_iter(vec![("s", Arc::new(dictionary) as ArrayRef)]).unwrap();
        let plain = comparison(&nulls, Operator::NotEq, "b", false);
        let ours = DictionaryComparison::over(&plain, None).unwrap();
        assert_eq!(answered(&ours, &nulls), answered(&plain, &nulls));
        assert_eq!(answered(&ours, &nulls).null_count(), 1);
    }
}

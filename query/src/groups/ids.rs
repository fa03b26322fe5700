//! Numbers for the strings of one group column, looked up once per dictionary value instead of
//! once per row: the strings themselves, or the value of an expression of them
//! (`json_extract_scalar(payload, '$.page')`), which is then computed once per dictionary value
//! too.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::array::{
    Array, ArrayBuilder, ArrayData, ArrayRef, AsArray, StringArray, StringBuilder, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, UInt32Type};
use datafusion::common::{Result, exec_err};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

/// A dictionary value whose number is not known yet.
const UNSEEN: u32 = u32::MAX;

/// Gives each distinct string of a column (null included) a number, from 0 up, and turns
/// numbers back into strings. A batch whose column is a dictionary costs a lookup per
/// dictionary value its keys use (once per dictionary: the batches of one Parquet column chunk
/// share it) and an array index per row; a plain string column costs a hash per row, as
/// DataFusion's grouping does.
pub struct StringIds {
    /// What a string is numbered as, if not as itself: the value of an expression of it.
    of: Option<Valued>,
    /// The strings seen, hashed by DataFusion's own grouping of one string column: its group
    /// numbers are the numbers given here.
    hashed: Box<dyn GroupValues>,
    /// The string of each number.
    strings: StringBuilder,
    /// The last batch's dictionary and the number of each of its values found so far.
    dictionary: Option<(ArrayData, Vec<u32>)>,
    /// Scratch space for the numbers DataFusion gives.
    found: Vec<usize>,
    /// Strings hashed so far.
    hashed_strings: usize,
}

/// Numbers of an expression's values (see [`StringIds::of`]).
struct Valued {
    /// Over a batch of one string column ([`StringIds::strings_schema`]); its value is a string
    /// too, kept as `Utf8` (the caller casts it back to its own string type).
    expr: Arc<dyn PhysicalExpr>,
    /// The strings themselves, hashed by DataFusion's grouping of one string column, so that
    /// each distinct one's value is computed once (a batch of Parquet strings kept without a
    /// dictionary comes as a dictionary of its own rows, `scan::dictionaries::OwnDictionary`);
    /// `None` once more than a quarter of the strings met were new, when a hash per string
    /// costs more than it saves.
    seen: Option<Box<dyn GroupValues>>,
    /// The number of the value of each string of `seen`.
    value_of: Vec<u32>,
    /// Scratch space for the numbers `seen` gives.
    found: Vec<usize>,
    /// Strings met while `seen` was kept, and how many of them were new to it.
    met: usize,
    new: usize,
}

/// Strings met before [`Valued::seen`] is judged by how many of them were new.
const SEEN_FROM: usize = 1024;

/// [`Valued::seen`] starts again from none past this many bytes, so that it stays a cache: small
/// enough to be looked up quickly, and never what makes a query run out of memory.
const SEEN_BYTES: usize = 16 << 20;

impl Valued {
    fn new(expr: Arc<dyn PhysicalExpr>) -> Result<Valued> {
        Ok(Valued {
            expr,
            seen: Some(Valued::none_seen()?),
            value_of: Vec::new(),
            found: Vec::new(),
            met: 0,
            new: 0,
        })
    }

    fn none_seen() -> Result<Box<dyn GroupValues>> {
        new_group_values(StringIds::strings_schema(), &GroupOrdering::None)
    }

    /// Forgets the strings seen (their values keep their numbers).
    fn forget(&mut self) -> Result<()> {
        if self.seen.is_some() {
            self.seen = Some(Valued::none_seen()?);
            self.value_of = Vec::new();
            self.found = Vec::new();
        }
        Ok(())
    }

    fn size(&self) -> usize {
        self.seen.as_ref().map_or(0, |s| s.size())
            + self.value_of.capacity() * size_of::<u32>()
            + self.found.capacity() * size_of::<usize>()
    }
}

/// The value of `expr` (see [`Valued::expr`]) for each string of `strings`, as `Utf8`.
fn values(expr: &Arc<dyn PhysicalExpr>, strings: &ArrayRef) -> Result<ArrayRef> {
    let batch = RecordBatch::try_new(StringIds::strings_schema(), vec![strings.clone()])?;
    let values = expr.evaluate(&batch)?.into_array(strings.len())?;
    Ok(match values.data_type() {
        DataType::Utf8 => values,
        DataType::Utf8View | DataType::LargeUtf8 => arrow::compute::cast(&values, &DataType::Utf8)?,
        other => return exec_err!("strings numbered by {expr}, whose value is a {other}"),
    })
}

impl StringIds {
    /// Numbers for the values of `of` (an expression over [`StringIds::strings_schema`] whose
    /// value is a string) of each string, or of the strings themselves when `None`. Two strings
    /// whose values are equal get the same number.
    pub fn of(of: Option<Arc<dyn PhysicalExpr>>) -> Result<StringIds> {
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, true)]));
        Ok(StringIds {
            of: of.map(Valued::new).transpose()?,
            hashed: new_group_values(schema, &GroupOrdering::None)?,
            strings: StringBuilder::new(),
            dictionary: None,
            found: Vec::new(),
            hashed_strings: 0,
        })
    }

    /// Numbers of the same kind as these, none given yet.
    pub fn emptied(&self) -> Result<StringIds> {
        StringIds::of(self.of.as_ref().map(|v| v.expr.clone()))
    }

    /// The schema of the one-column batches an expression given to [`StringIds::of`] reads.
    pub fn strings_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new(
            "strings",
            DataType::Utf8,
            true,
        )]))
    }

    /// How many strings (or values) have a number.
    pub fn len(&self) -> usize {
        self.strings.len()
    }

    /// Forgets the strings whose values are known, kept only to save work (not the numbers
    /// given).
    pub fn forget(&mut self) -> Result<()> {
        match &mut self.of {
            Some(valued) => valued.forget(),
            None => Ok(()),
        }
    }

    /// Bytes held.
    pub fn size(&self) -> usize {
        self.hashed.size()
            + self.strings.values_slice().len()
            + size_of_val(self.strings.offsets_slice())
            + self.dictionary.as_ref().map_or(0, |(_, n)| n.len() * 4)
            + self.found.capacity() * size_of::<usize>()
            + self.of.as_ref().map_or(0, Valued::size)
    }

    /// Each row's string (a `Dictionary(Int32, Utf8)` or a `Utf8` column), or its value when
    /// the numbers are of an expression's values, as `Utf8`; nothing is numbered.
    pub fn values_of(&self, column: &ArrayRef) -> Result<ArrayRef> {
        let strings = match column.data_type() {
            DataType::Dictionary(..) => arrow::compute::cast(column, &DataType::Utf8)?,
            DataType::Utf8 => column.clone(),
            other => return exec_err!("strings to number, got a column of {other}"),
        };
        match &self.of {
            Some(valued) => values(&valued.expr, &strings),
            None => Ok(strings),
        }
    }

    /// The number of each row's string (a `Dictionary(Int32, Utf8)` or a `Utf8` column).
    pub fn ids(&mut self, column: &ArrayRef) -> Result<UInt32Array> {
        match column.data_type() {
            DataType::Dictionary(key, value)
                if **key == DataType::Int32 && **value == DataType::Utf8 =>
            {
                self.ids_of_dictionary(column)
            }
            DataType::Utf8 => Ok(UInt32Array::from(self.number(column)?)),
            other => exec_err!("strings to number, got a column of {other}"),
        }
    }

    fn ids_of_dictionary(&mut self, column: &ArrayRef) -> Result<UInt32Array> {
        let dictionary = column.as_dictionary::<Int32Type>();
        let keys = dictionary.keys();
        let known = self.resolve(dictionary.values(), keys.iter().flatten())?;
        let ids: Vec<u32> = match keys.null_count() {
            0 => keys.values().iter().map(|k| known[*k as usize]).collect(),
            _ => {
                let null = self.null()?;
                let known = self.known()?;
                keys.iter()
                    .map(|k| k.map_or(null, |k| known[k as usize]))
                    .collect()
            }
        };
        Ok(UInt32Array::from(ids))
    }

    /// The number of each value of `values` (a dictionary's strings) that some key of `used`
    /// names (the others: [`UNSEEN`] or a number already given), new strings numbered next.
    pub fn resolve(
        &mut self,
        values: &ArrayRef,
        used: impl Iterator<Item = i32>,
    ) -> Result<&[u32]> {
        // The Parquet reader hands each batch of a column chunk the chunk's dictionary: the same
        // buffers in a new array each time.
        let data = values.to_data();
        let mut known = match self.dictionary.take() {
            Some((last, known)) if last.ptr_eq(&data) => known,
            _ => vec![UNSEEN; values.len()],
        };
        // The dictionary values used that have no number yet, each once.
        let mut unseen: Vec<u32> = Vec::new();
        for key in used {
            let key = key as usize;
            if known[key] == UNSEEN {
                known[key] = UNSEEN - 1;
                unseen.push(key as u32);
            }
        }
        if !unseen.is_empty() {
            // Every value in order (a dictionary of its own rows, every row used) is not copied.
            let every = unseen.len() == values.len()
                && unseen.iter().enumerate().all(|(i, k)| i == *k as usize);
            let strings = match every {
                true => values.clone(),
                false => arrow::compute::take(values, &UInt32Array::from(unseen.clone()), None)?,
            };
            for (key, id) in unseen.iter().zip(self.number(&strings)?) {
                known[*key as usize] = id;
            }
        }
        self.dictionary = Some((data, known));
        self.known()
    }

    /// The numbers of the last dictionary [`StringIds::resolve`]d.
    fn known(&self) -> Result<&[u32]> {
        match &self.dictionary {
            Some((_, known)) => Ok(known),
            None => exec_err!("no dictionary numbered yet"),
        }
    }

    /// The number of null.
    pub fn null(&mut self) -> Result<u32> {
        Ok(self.number(&(Arc::new(StringArray::new_null(1)) as ArrayRef))?[0])
    }

    /// The number of each string of `strings` (a `Utf8` array), or of its value when the
    /// numbers are of an expression's values, new ones numbered next.
    fn number(&mut self, strings: &ArrayRef) -> Result<Vec<u32>> {
        let Some(mut valued) = self.of.take() else {
            return self.number_strings(strings);
        };
        let numbers = self.number_values(&mut valued, strings);
        self.of = Some(valued);
        numbers
    }

    /// The number of the value of each string of `strings`, each distinct string's value
    /// computed once while [`Valued::seen`] pays.
    fn number_values(&mut self, valued: &mut Valued, strings: &ArrayRef) -> Result<Vec<u32>> {
        let Some(seen) = valued.seen.as_mut() else {
            let values = values(&valued.expr, strings)?;
            return self.number_strings(&values);
        };
        let before = seen.len();
        valued.found.clear();
        seen.intern(std::slice::from_ref(strings), &mut valued.found)?;
        let new = seen.len() - before;
        if new > 0 {
            // The first row of each new string, whose value is computed.
            let mut first = vec![u32::MAX; new];
            for (row, &n) in valued.found.iter().enumerate() {
                if let Some(slot) = n.checked_sub(before).map(|i| &mut first[i])
                    && *slot == u32::MAX
                {
                    *slot = row as u32;
                }
            }
            let new_strings = arrow::compute::take(strings, &UInt32Array::from(first), None)?;
            let values = values(&valued.expr, &new_strings)?;
            let numbers = self.number_strings(&values)?;
            valued.value_of.extend(numbers);
        }
        let numbers = valued.found.iter().map(|&n| valued.value_of[n]).collect();
        valued.met += strings.len();
        valued.new += new;
        if valued.met >= SEEN_FROM && valued.new * 4 > valued.met {
            valued.seen = None;
            valued.value_of = Vec::new();
            valued.found = Vec::new();
        } else if seen.size() > SEEN_BYTES {
            valued.forget()?;
        }
        Ok(numbers)
    }

    /// The number of each string of `strings` (a `Utf8` array), new ones numbered next.
    fn number_strings(&mut self, strings: &ArrayRef) -> Result<Vec<u32>> {
        self.found.clear();
        self.hashed_strings += strings.len();
        self.hashed
            .intern(std::slice::from_ref(strings), &mut self.found)?;
        let text = strings.as_string::<i32>();
        let mut ids = Vec::with_capacity(self.found.len());
        for (row, &id) in self.found.iter().enumerate() {
            if id == self.strings.len() {
                self.strings
                    .append_option(text.is_valid(row).then(|| text.value(row)));
            }
            match u32::try_from(id) {
                Ok(id) if id < UNSEEN - 1 => ids.push(id),
                _ => {
                    return exec_err!(
                        "more than {} distinct strings in a group column",
                        UNSEEN - 1
                    );
                }
            }
        }
        Ok(ids)
    }

    /// The string of each number of `ids`.
    pub fn strings(&self, ids: &ArrayRef) -> Result<ArrayRef> {
        let all = self.strings.finish_cloned();
        let ids = ids.as_primitive::<UInt32Type>();
        Ok(arrow::compute::take(&all, ids, None)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{DictionaryArray, Int32Array};

    fn dictionary(keys: Vec<Option<i32>>, values: &ArrayRef) -> ArrayRef {
        Arc::new(
            DictionaryArray::<Int32Type>::try_new(Int32Array::from(keys), values.clone()).unwrap(),
        )
    }

    fn strings_of(ids: &StringIds, numbers: UInt32Array) -> Vec<Option<String>> {
        ids.strings(&(Arc::new(numbers) as ArrayRef))
            .unwrap()
            .as_string::<i32>()
            .iter()
            .map(|s| s.map(str::to_string))
            .collect()
    }

    #[test]
    fn the_same_string_gets_the_same_number_whatever_dictionary_or_key_it_comes_by() {
        let mut ids = StringIds::of(None).unwrap();
        let first: ArrayRef = Arc::new(StringArray::from(vec![
            Some("PageViewed"),
            Some("unused"),
            Some("PurchaseMade"),
            None,
        ]));
        let a = ids
            .ids(&dictionary(
                vec![Some(2), Some(0), None, Some(2), Some(3)],
                &first,
            ))
            .unwrap();
        // A value no key uses gets no number: a group must not appear from a dictionary alone.
        assert_eq!(ids.len(), 3);
        // Another batch of the same dictionary, then one with a dictionary of its own in
        // another order, then plain strings.
        let b = ids
            .ids(&dictionary(vec![Some(0), Some(1)], &first))
            .unwrap();
        let second: ArrayRef = Arc::new(StringArray::from(vec!["PurchaseMade", "PageViewed"]));
        let c = ids
            .ids(&dictionary(vec![Some(1), Some(0)], &second))
            .unwrap();
        let d = ids
            .ids(&(Arc::new(StringArray::from(vec![Some("unused"), None])) as ArrayRef))
            .unwrap();
        assert_eq!(a.values().to_vec(), vec![0, 1, 2, 0, 2]);
        assert_eq!(b.values().to_vec(), vec![1, 3]);
        assert_eq!(c.values().to_vec(), vec![1, 0]);
        assert_eq!(d.values().to_vec(), vec![3, 2]);
        assert_eq!(
            strings_of(&ids, UInt32Array::from(vec![0, 1, 2, 3])),
            vec![
                Some("PurchaseMade".to_string()),
                Some("PageViewed".to_string()),
                None,
                Some("unused".to_string())
            ]
        );
    }

    #[test]
    fn a_dictionary_handed_again_in_a_new_array_is_not_looked_up_again() {
        let mut ids = StringIds::of(None).unwrap();
        let values: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "c"]));
        ids.ids(&dictionary(vec![Some(0), Some(1), Some(2)], &values))
            .unwrap();
        assert_eq!(ids.hashed_strings, 3);
        // As the Parquet reader hands a column chunk's next batch: its dictionary's buffers in
        // an array of its own.
        let again = arrow::array::make_array(values.to_data());
        assert!(!Arc::ptr_eq(&again, &values));
        let n = ids
            .ids(&dictionary(vec![Some(2), Some(2), Some(0)], &again))
            .unwrap();
        assert_eq!(n.values().to_vec(), vec![2, 2, 0]);
        assert_eq!(ids.hashed_strings, 3);
        // Other buffers, even with the same strings: looked up (and given the same numbers).
        let copy: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "c"]));
        let n = ids.ids(&dictionary(vec![Some(1)], &copy)).unwrap();
        assert_eq!(n.values().to_vec(), vec![1]);
        assert_eq!(ids.hashed_strings, 4);
    }

    /// `upper` of the one column of [`StringIds::strings_schema`].
    fn upper() -> Arc<dyn PhysicalExpr> {
        use datafusion::common::DFSchema;
        use datafusion::execution::context::ExecutionProps;
        use datafusion::prelude::col;
        let schema = DFSchema::try_from(StringIds::strings_schema().as_ref().clone()).unwrap();
        let expr = datafusion::functions::string::expr_fn::upper(col("strings"));
        datafusion::physical_expr::create_physical_expr(&expr, &schema, &ExecutionProps::new())
            .unwrap()
    }

    fn strings(of: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(of.to_vec()))
    }

    #[test]
    fn the_values_of_an_expression_are_numbered_each_computed_once_per_distinct_string() {
        let mut ids = StringIds::of(Some(upper())).unwrap();
        let a = ids
            .ids(&strings(&[
                Some("a"),
                Some("A"),
                Some("b"),
                Some("a"),
                None,
            ]))
            .unwrap();
        // "a" and "A" have one value.
        assert_eq!(a.values().to_vec(), vec![0, 0, 1, 0, 2]);
        // A dictionary of its own rows (as `scan::dictionaries::OwnDictionary` hands a column
        // Parquet kept without one), all but one of its strings seen before.
        let own = strings(&[Some("b"), Some("a"), Some("c")]);
        let b = ids
            .ids(&dictionary(vec![Some(0), Some(1), Some(2), None], &own))
            .unwrap();
        assert_eq!(b.values().to_vec(), vec![1, 0, 3, 2]);
        assert_eq!(
            strings_of(&ids, UInt32Array::from(vec![0, 1, 2, 3])),
            vec![Some("A".into()), Some("B".into()), None, Some("C".into())]
        );
        // Each distinct string's value was computed once: five of them ("a", "A", "b", null,
        // "c") numbered as values, where the rows were eight.
        assert_eq!(ids.hashed_strings, 5);
    }

    #[test]
    fn strings_mostly_new_have_their_values_computed_row_by_row() {
        let mut ids = StringIds::of(Some(upper())).unwrap();
        ids.ids(&strings(&[Some("a")])).unwrap();
        let distinct: Vec<String> = (0..SEEN_FROM).map(|i| format!("s{i}")).collect();
        let many: ArrayRef = Arc::new(StringArray::from_iter_values(&distinct));
        ids.ids(&many).unwrap();
        // Every string was new: remembering them costs more than it saves.
        assert!(ids.of.as_ref().unwrap().seen.is_none());
        let again = ids
            .ids(&strings(&[Some("A"), Some("s1"), Some("new")]))
            .unwrap();
        assert_eq!(again.values().to_vec(), vec![0, 2, SEEN_FROM as u32 + 1]);
        assert_eq!(
            strings_of(&ids, UInt32Array::from(vec![0, 2, SEEN_FROM as u32 + 1])),
            vec![Some("A".into()), Some("S1".into()), Some("NEW".into())]
        );
    }

    #[test]
    fn a_column_of_another_type_is_refused() {
        let mut ids = StringIds::of(None).unwrap();
        let ints: ArrayRef = Arc::new(Int32Array::from(vec![1]));
        assert!(ids.ids(&ints).is_err());
    }
}

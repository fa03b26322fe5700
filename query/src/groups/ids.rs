//! Numbers for the strings of one group column, looked up once per dictionary value instead of
//! once per row.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayBuilder, ArrayData, ArrayRef, AsArray, StringArray, StringBuilder, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, UInt32Type};
use datafusion::common::{Result, exec_err};
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

impl StringIds {
    pub fn new() -> Result<StringIds> {
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, true)]));
        Ok(StringIds {
            hashed: new_group_values(schema, &GroupOrdering::None)?,
            strings: StringBuilder::new(),
            dictionary: None,
            found: Vec::new(),
            hashed_strings: 0,
        })
    }

    /// How many strings have a number.
    pub fn len(&self) -> usize {
        self.strings.len()
    }

    /// Bytes held.
    pub fn size(&self) -> usize {
        self.hashed.size()
            + self.strings.values_slice().len()
            + size_of_val(self.strings.offsets_slice())
            + self.dictionary.as_ref().map_or(0, |(_, n)| n.len() * 4)
            + self.found.capacity() * size_of::<usize>()
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
            let strings = arrow::compute::take(values, &UInt32Array::from(unseen.clone()), None)?;
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

    /// The number of each string of `strings` (a `Utf8` array), new strings numbered next.
    fn number(&mut self, strings: &ArrayRef) -> Result<Vec<u32>> {
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
        let mut ids = StringIds::new().unwrap();
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
        let mut ids = StringIds::new().unwrap();
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

    #[test]
    fn a_column_of_another_type_is_refused() {
        let mut ids = StringIds::new().unwrap();
        let ints: ArrayRef = Arc::new(Int32Array::from(vec![1]));
        assert!(ids.ids(&ints).is_err());
    }
}

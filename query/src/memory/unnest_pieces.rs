//! `unnest`'s input handed to it in pieces, each of which unnests into a batch of ordinary size.
//!
//! DataFusion's `UnnestExec` unnests a whole input batch at once, into one output batch. One row
//! holding `range(0, 60000000)` became a batch of 60 million rows, made through `take` indices
//! as large (1.4 GB that no pool counted); the operators above check their memory after each
//! batch, so an aggregation grouped all 60 million rows before its first check (5 GB). And the
//! row's other columns are copied into every row it unnests into: a 1 MB string beside 2,000
//! elements is 2 GB in one batch.
//!
//! [`UnnestPieces`], a physical optimizer rule, puts a [`Pieces`] node under each `UnnestExec`.
//! It cuts each input batch into slices whose unnested rows number at most the session's batch
//! size and whose bytes (the other columns copied into each of those rows, and the elements)
//! come to about [`PIECE_BYTES`]. A row that alone unnests past that is cut into windows of
//! its lists' elements: a one-row batch per window, each list sliced to the same positions (no
//! element is copied). Those unnest into the same rows, in the same order: the unnest of a row
//! pads the shorter lists with nulls up to the longest, and every window starts before the
//! longest list's end. A row is cut within only when every list is unnested once (depth 1) and
//! is a `List` or `LargeList`; otherwise it stays whole, in a piece of its own.
//!
//! Small pieces do not stay small: DataFusion's repartitions and coalescers join batches
//! until they hold the batch size in rows, however wide the rows (a 1 MB string copied into
//! 8,192 rows is 8 GB). So while an input batch's pieces are handed on, the most they can be
//! joined into is held in the query's pool: the batch size in rows (or all the rows the batch
//! unnests into, if fewer), each as wide as the widest row it unnests into. Past the query's
//! memory the query is refused before anything is unnested.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, GenericListArray, OffsetSizeTrait, RecordBatch};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, internal_err};
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::unnest::UnnestExec;
use futures::StreamExt;

use crate::pass_through::{PassThrough, Wrap};

/// About the most bytes a piece unnests into (a row that alone unnests into more is cut into
/// windows of its elements; a single row of the output may still be larger).
pub const PIECE_BYTES: usize = 8 << 20;

/// The rule (see the module comment).
#[derive(Debug, Default)]
pub struct UnnestPieces;

impl PhysicalOptimizerRule for UnnestPieces {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let rows = config.execution.batch_size.max(1);
        plan.transform_up(|node| {
            let Some(unnest) = node.as_any().downcast_ref::<UnnestExec>() else {
                return Ok(Transformed::no(node));
            };
            if unnest.input().as_any().is::<PassThrough<Pieces>>() {
                return Ok(Transformed::no(node));
            }
            let lists = unnest.list_column_indices();
            let pieces = Pieces {
                lists: lists.iter().map(|l| l.index_in_input_schema).collect(),
                within_rows: lists.iter().all(|l| l.depth == 1),
                rows,
            };
            let input: Arc<dyn ExecutionPlan> =
                Arc::new(PassThrough::new(unnest.input().clone(), pieces));
            Ok(Transformed::yes(
                node.clone().with_new_children(vec![input])?,
            ))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "floe_unnest_pieces"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Hands its input on in pieces that each unnest into at most `rows` rows and about
/// [`PIECE_BYTES`] (see the module comment): a [`PassThrough`] node's stream.
#[derive(Debug, Clone)]
pub struct Pieces {
    /// The input's columns the unnest above unnests.
    lists: Vec<usize>,
    /// Every list is unnested once: a row may be cut into windows of its elements.
    within_rows: bool,
    rows: usize,
}

impl Wrap for Pieces {
    const NAME: &'static str = "PiecesExec";

    fn wrap(
        &self,
        input: SendableRecordBatchStream,
        context: &Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let schema = input.schema();
        let within_rows = self.within_rows
            && self.lists.iter().all(|&i| {
                matches!(
                    schema.field(i).data_type(),
                    DataType::List(_) | DataType::LargeList(_)
                )
            });
        let cut = Cut {
            lists: self.lists.clone(),
            within_rows,
            rows: self.rows,
            bytes: PIECE_BYTES,
        };
        let joined =
            MemoryConsumer::new("unnest's rows of a batch").register(context.memory_pool());
        let pieces = input.flat_map(move |batch| {
            let pieces = batch.and_then(|b| {
                let (pieces, most) = cut.pieces(&b)?;
                joined.try_resize(most)?;
                Ok(pieces)
            });
            let pieces = match pieces {
                Ok(pieces) => pieces.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(pieces)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, pieces)))
    }
}

/// How batches are cut (see the module comment).
struct Cut {
    lists: Vec<usize>,
    within_rows: bool,
    rows: usize,
    bytes: usize,
}

impl Cut {
    /// `batch` in pieces, in order, and the most bytes of unnested rows they can be joined
    /// into downstream (0 when the whole batch unnests into fewer than [`PIECE_BYTES`]).
    fn pieces(&self, batch: &RecordBatch) -> Result<(Vec<RecordBatch>, usize)> {
        let n = batch.num_rows();
        // The rows each row unnests into (a row with only empty or null lists may still make
        // one), and the bytes of its lists' elements.
        let mut unnested = vec![1usize; n];
        let mut elements = vec![0usize; n];
        for &i in &self.lists {
            let column = batch.column(i);
            for (r, (len, bytes)) in lengths(column.as_ref()).into_iter().enumerate() {
                unnested[r] = unnested[r].max(len);
                elements[r] += bytes;
            }
        }
        let others: Vec<&ArrayRef> = (0..batch.num_columns())
            .filter(|i| !self.lists.contains(i))
            .map(|i| batch.column(i))
            .collect();
        // Most batches are one piece: the other columns' bytes, copied as many times as the
        // longest list, and every element, within the bounds.
        let most = unnested.iter().copied().max().unwrap_or(0);
        let rows: usize = unnested.iter().sum();
        let copied: usize = others.iter().map(|c| bytes_of(c.as_ref())).sum();
        let total = copied
            .saturating_mul(most)
            .saturating_add(elements.iter().sum());
        if rows <= self.rows && total <= self.bytes {
            return Ok((vec![batch.clone()], 0));
        }
        let mut row_bytes = vec![0usize; n];
        for column in &others {
            for (r, b) in per_row_bytes(column.as_ref()).into_iter().enumerate() {
                row_bytes[r] += b;
            }
        }
        let widest = (0..n)
            .map(|r| row_bytes[r] + elements[r] / unnested[r].max(1))
            .max()
            .unwrap_or(0);
        let most = rows.min(self.rows).saturating_mul(widest);
        let mut pieces = Vec::new();
        let (mut start, mut rows, mut bytes) = (0, 0usize, 0usize);
        for r in 0..n {
            let made = unnested[r];
            let size = row_bytes[r]
                .saturating_mul(made)
                .saturating_add(elements[r]);
            if (made > self.rows || size > self.bytes) && self.within_rows {
                if r > start {
                    pieces.push(batch.slice(start, r - start));
                }
                // Each unnested row: the other columns' values and an element on average.
                let each = row_bytes[r] + elements[r] / made.max(1);
                let window = (self.bytes / each.max(1)).clamp(1, self.rows);
                let mut from = 0;
                while from < made {
                    pieces.push(self.window(batch, r, from, from + window)?);
                    from += window;
                }
                (start, rows, bytes) = (r + 1, 0, 0);
                continue;
            }
            if r > start && (rows + made > self.rows || bytes.saturating_add(size) > self.bytes) {
                pieces.push(batch.slice(start, r - start));
                (start, rows, bytes) = (r, 0, 0);
            }
            rows += made;
            bytes = bytes.saturating_add(size);
        }
        if n > start {
            pieces.push(batch.slice(start, n - start));
        }
        Ok((pieces, most))
    }

    /// Row `r` of `batch` with each list holding only its elements at positions `from..to`.
    fn window(&self, batch: &RecordBatch, r: usize, from: usize, to: usize) -> Result<RecordBatch> {
        let row = batch.slice(r, 1);
        let columns = row
            .columns()
            .iter()
            .enumerate()
            .map(|(i, column)| match self.lists.contains(&i) {
                true => match column.data_type() {
                    DataType::List(_) => window_of(column.as_list::<i32>(), from, to),
                    DataType::LargeList(_) => window_of(column.as_list::<i64>(), from, to),
                    other => internal_err!("a row cut within has a list of type {other}"),
                },
                false => Ok(column.clone()),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(row.schema(), columns)?)
    }
}

/// The one-row `list` with only its elements at positions `from..to` (fewer where it is
/// shorter; a null list stays null).
fn window_of<O: OffsetSizeTrait>(
    list: &GenericListArray<O>,
    from: usize,
    to: usize,
) -> Result<ArrayRef> {
    if list.is_null(0) {
        return Ok(Arc::new(list.clone()));
    }
    let offsets = list.value_offsets();
    let (start, end) = (offsets[0].as_usize(), offsets[1].as_usize());
    let len = end - start;
    let (from, to) = (from.min(len), to.min(len));
    let (DataType::List(field) | DataType::LargeList(field)) = list.data_type() else {
        return internal_err!("a list of type {}", list.data_type());
    };
    Ok(Arc::new(GenericListArray::<O>::try_new(
        field.clone(),
        OffsetBuffer::<O>::from_lengths([to - from]),
        list.values().slice(start + from, to - from),
        None,
    )?))
}

/// Per row of a list column: its elements, and their bytes (0 and 0 where it is null).
fn lengths(column: &dyn Array) -> Vec<(usize, usize)> {
    fn of<O: OffsetSizeTrait>(list: &GenericListArray<O>) -> Vec<(usize, usize)> {
        let values = list.values();
        let per_element = bytes_of(values.as_ref()) / values.len().max(1);
        (0..list.len())
            .map(|r| match list.is_null(r) {
                true => (0, 0),
                false => {
                    let len = list.value_length(r).as_usize();
                    (len, len * per_element)
                }
            })
            .collect()
    }
    match column.data_type() {
        DataType::List(_) => of(column.as_list::<i32>()),
        DataType::LargeList(_) => of(column.as_list::<i64>()),
        DataType::FixedSizeList(..) => {
            let list = column.as_fixed_size_list();
            let len = list.value_length() as usize;
            let per_row = bytes_of(list.values().as_ref()) / list.len().max(1);
            (0..list.len())
                .map(|r| match list.is_null(r) {
                    true => (0, 0),
                    false => (len, per_row),
                })
                .collect()
        }
        _ => vec![(1, 0); column.len()],
    }
}

/// The bytes of the rows an array holds (a slice: its own rows only).
fn bytes_of(array: &dyn Array) -> usize {
    array
        .to_data()
        .get_slice_memory_size()
        .unwrap_or_else(|_| array.get_array_memory_size())
}

/// The bytes of each row of a column.
fn per_row_bytes(column: &dyn Array) -> Vec<usize> {
    fn offsets<O: OffsetSizeTrait>(o: &[O]) -> Vec<usize> {
        o.windows(2)
            .map(|w| (w[1] - w[0]).as_usize() + O::get_byte_width())
            .collect()
    }
    if let Some(width) = column.data_type().primitive_width() {
        return vec![width; column.len()];
    }
    match column.data_type() {
        DataType::Utf8 => offsets(column.as_string::<i32>().value_offsets()),
        DataType::LargeUtf8 => offsets(column.as_string::<i64>().value_offsets()),
        DataType::Binary => offsets(column.as_binary::<i32>().value_offsets()),
        DataType::LargeBinary => offsets(column.as_binary::<i64>().value_offsets()),
        // A view's low 32 bits are its value's length.
        DataType::Utf8View => column
            .as_string_view()
            .views()
            .iter()
            .map(|&v| v as u32 as usize + 16)
            .collect(),
        DataType::BinaryView => column
            .as_binary_view()
            .views()
            .iter()
            .map(|&v| v as u32 as usize + 16)
            .collect(),
        DataType::Boolean | DataType::Null => vec![1; column.len()],
        // Nested and other values: each row's own slice.
        _ => (0..column.len())
            .map(|r| bytes_of(column.slice(r, 1).as_ref()))
            .collect(),
    }
}

#[cfg(test)]
mod tests;

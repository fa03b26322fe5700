//! The partial aggregate that groups dictionary columns by their numbers.

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, UInt32Type, UInt64Type};
use datafusion::common::{Result, internal_err};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::udaf::AggregateFunctionExpr;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::{Stream, StreamExt};

use super::ids::StringIds;

/// Groups held before they are handed on: a partial aggregate may hand on the same group more
/// than once (the final one merges them), so past this many a column of many distinct values
/// goes on in pieces instead of growing without bound, as DataFusion's partial aggregate stops
/// aggregating when it finds few repeats.
pub(super) const MAX_GROUPS: usize = 1 << 16;

/// A partial aggregate (`AggregateMode::Partial`, one grouping set, accumulators that take
/// group numbers) whose input has some group columns as `Dictionary(Int32, Utf8)`: each such
/// column is turned into string numbers ([`StringIds`]) before DataFusion's grouping, and back
/// into strings when the groups are handed on. Its output is the aggregate's it replaces:
/// group columns as strings, then each accumulator's state.
#[derive(Debug)]
pub struct DictionaryGroupsExec {
    input: Arc<dyn ExecutionPlan>,
    /// The group expressions over `input`, with their names.
    groups: Vec<(Arc<dyn PhysicalExpr>, String)>,
    /// Which group columns are dictionaries.
    dictionaries: Vec<bool>,
    /// For a dictionary group whose key is not the column's strings but an expression of
    /// them, that expression, over `StringIds::strings_schema` (its group expression above is
    /// then the column).
    values: Vec<Option<Arc<dyn PhysicalExpr>>>,
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl DictionaryGroupsExec {
    /// `schema` and `partitioning`: the output of the aggregate this replaces.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        input: Arc<dyn ExecutionPlan>,
        groups: Vec<(Arc<dyn PhysicalExpr>, String)>,
        dictionaries: Vec<bool>,
        values: Vec<Option<Arc<dyn PhysicalExpr>>>,
        aggregates: Vec<Arc<AggregateFunctionExpr>>,
        filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
        schema: SchemaRef,
        partitioning: Partitioning,
    ) -> DictionaryGroupsExec {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            partitioning,
            EmissionType::Final,
            Boundedness::Bounded,
        );
        DictionaryGroupsExec {
            input,
            groups,
            dictionaries,
            values,
            aggregates,
            filters,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// Its group expressions that are not dictionaries: the values its grouping copies into
    /// its groups' store as they are (`memory::group_keys`).
    pub fn copied_groups(&self) -> impl Iterator<Item = &Arc<dyn PhysicalExpr>> {
        self.groups
            .iter()
            .zip(&self.dictionaries)
            .filter(|(_, dictionary)| !**dictionary)
            .map(|((expr, _), _)| expr)
    }

    /// Whether its rows are counted per dictionary key, then per group, with no group number
    /// per row: one group column, a dictionary, and `count(*)` alone (any number of times).
    fn counting(&self) -> bool {
        self.dictionaries == [true]
            && self.filters.iter().all(Option::is_none)
            && self.aggregates.iter().all(|a| counts_rows(a))
    }

    /// The schema DataFusion's grouping sees: a dictionary column as its string numbers.
    fn numbered_schema(&self) -> Result<SchemaRef> {
        let input = self.input.schema();
        let fields = self
            .groups
            .iter()
            .zip(&self.dictionaries)
            .map(|((expr, name), dictionary)| {
                Ok(match dictionary {
                    true => Field::new(name, DataType::UInt32, false),
                    false => Field::new(name, expr.data_type(&input)?, expr.nullable(&input)?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Schema::new(fields)))
    }
}

impl DisplayAs for DictionaryGroupsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |dictionary: bool| {
            self.groups
                .iter()
                .zip(&self.dictionaries)
                .filter(|(_, d)| **d == dictionary)
                .map(|((_, name), _)| name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let aggregates: Vec<&str> = self.aggregates.iter().map(|a| a.name()).collect();
        write!(
            f,
            "DictionaryGroupsExec: mode=Partial, dictionaries=[{}], other groups=[{}], aggr=[{}]{}",
            names(true),
            names(false),
            aggregates.join(", "),
            match self.counting() {
                true => ", rows counted per key",
                false => "",
            }
        )
    }
}

impl ExecutionPlan for DictionaryGroupsExec {
    fn name(&self) -> &str {
        "DictionaryGroupsExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("DictionaryGroupsExec takes one input");
        }
        Ok(Arc::new(DictionaryGroupsExec {
            input: children.swap_remove(0),
            groups: self.groups.clone(),
            dictionaries: self.dictionaries.clone(),
            values: self.values.clone(),
            aggregates: self.aggregates.clone(),
            filters: self.filters.clone(),
            properties: self.properties.clone(),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context.clone())?;
        let ids = self
            .dictionaries
            .iter()
            .zip(&self.values)
            .map(|(d, of)| d.then(|| StringIds::of(of.clone())).transpose())
            .collect::<Result<Vec<_>>>()?;
        let numbered = self.numbered_schema()?;
        let kind = match self.dictionaries.as_slice() {
            [true] => Kind::Indexed,
            [true, true] => Kind::Packed,
            _ => Kind::Hashed,
        };
        let (group_values, accumulators) = empty(&numbered, kind, &self.aggregates)?;
        let counting = self.counting();
        let options = &context.session_config().options().execution;
        let probe = Probe {
            rows: options.skip_partial_aggregation_probe_rows_threshold,
            ratio: options.skip_partial_aggregation_probe_ratio_threshold,
            rows_seen: 0,
            groups_made: 0,
            passing: false,
            handed_on: MetricBuilder::new(&self.metrics)
                .counter("skipped_aggregation_rows", partition),
        };
        let reservation = MemoryConsumer::new(format!("DictionaryGroupsExec[{partition}]"))
            .register(context.memory_pool());
        Ok(Box::pin(Grouping {
            input,
            schema: self.schema(),
            groups: self.groups.iter().map(|(e, _)| e.clone()).collect(),
            ids,
            group_values,
            numbered,
            kind,
            arguments: self.aggregates.iter().map(|a| a.expressions()).collect(),
            filters: self.filters.clone(),
            accumulators,
            aggregates: self.aggregates.clone(),
            counting,
            probe,
            counts: Vec::new(),
            per_key: Vec::new(),
            rows: Vec::new(),
            reservation,
            batch_size: context.session_config().batch_size(),
            ready: VecDeque::new(),
            done: false,
            metrics: BaselineMetrics::new(&self.metrics, partition),
        }))
    }
}

/// One partition's grouping.
struct Grouping {
    input: SendableRecordBatchStream,
    schema: SchemaRef,
    groups: Vec<Arc<dyn PhysicalExpr>>,
    /// Per group column, the numbers of its strings if it is a dictionary column.
    ids: Vec<Option<StringIds>>,
    group_values: Groups,
    numbered: SchemaRef,
    /// How the groups are found (see [`Groups`]).
    kind: Kind,
    arguments: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// Every aggregate counts rows and the one group column is a dictionary: rows are counted
    /// per key (`per_key`), then per group (`counts`), instead of through the accumulators.
    counting: bool,
    /// Whether grouping pays (see [`Probe`]).
    probe: Probe,
    /// The rows of each group, when `counting`.
    counts: Vec<i64>,
    /// The rows of each dictionary key of the batch at hand, when `counting`.
    per_key: Vec<i64>,
    /// The group number of each row of the batch at hand.
    rows: Vec<usize>,
    reservation: MemoryReservation,
    batch_size: usize,
    /// Batches of groups ready to hand on.
    ready: VecDeque<RecordBatch>,
    done: bool,
    metrics: BaselineMetrics,
}

/// As DataFusion's partial aggregate decides, after its first rows, whether grouping them pays:
/// when nearly every row is a group of its own (`GROUP BY event_id`), grouping costs a hash per
/// row and saves the final aggregate nothing, so each row is handed on as its own group.
struct Probe {
    /// Rows seen before deciding (`skip_partial_aggregation_probe_rows_threshold`).
    rows: usize,
    /// Groups per row from which rows are handed on
    /// (`skip_partial_aggregation_probe_ratio_threshold`).
    ratio: f64,
    rows_seen: usize,
    /// Groups made so far, those handed on included.
    groups_made: usize,
    /// Rows are handed on as groups of their own.
    passing: bool,
    /// Rows handed on so (named as DataFusion's partial aggregate names them).
    handed_on: Count,
}

impl Grouping {
    fn aggregate(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.probe.passing {
            let passed = self.passed(batch)?;
            self.probe.handed_on.add(batch.num_rows());
            self.ready.push_back(passed);
            return Ok(());
        }
        let before = self.group_values.len();
        match self.counting {
            true => self.count(batch)?,
            false => self.accumulate(batch)?,
        }
        let total = self.group_values.len();
        // Judged after every batch past the first rows, as DataFusion judges (groups made again
        // after a hand-over count again: they cost a hash again).
        self.probe.rows_seen += batch.num_rows();
        self.probe.groups_made += total - before;
        if self.probe.rows_seen >= self.probe.rows
            && self.probe.groups_made as f64 >= self.probe.ratio * self.probe.rows_seen as f64
            && self
                .accumulators
                .iter()
                .all(|a| a.supports_convert_to_state())
        {
            self.probe.passing = true;
            self.emit()?;
            for ids in self.ids.iter_mut().flatten() {
                *ids = ids.emptied()?;
            }
            self.reservation.try_resize(self.size())?;
            return Ok(());
        }
        if total >= MAX_GROUPS || self.reservation.try_resize(self.size()).is_err() {
            self.emit()?;
            // A column of many distinct strings keeps no numbers past a hand-over.
            for ids in self.ids.iter_mut().flatten() {
                if ids.len() >= MAX_GROUPS {
                    *ids = ids.emptied()?;
                }
            }
            // Short of memory still: what only saves work goes.
            if self.reservation.try_resize(self.size()).is_err() {
                for ids in self.ids.iter_mut().flatten() {
                    ids.forget()?;
                }
                self.reservation.try_resize(self.size())?;
            }
        }
        Ok(())
    }

    /// Counts `batch`'s rows into their groups (see `counting`).
    fn count(&mut self, batch: &RecordBatch) -> Result<()> {
        let column = self.groups[0]
            .evaluate(batch)?
            .into_array(batch.num_rows())?;
        let (Some(Some(ids)), Groups::Indexed { group_of, numbers }) =
            (self.ids.first_mut(), &mut self.group_values)
        else {
            return internal_err!("counting rows takes one dictionary column");
        };
        // (string number, rows) of this batch.
        let mut tally: Vec<(u32, i64)> = Vec::new();
        match column.as_dictionary_opt::<Int32Type>() {
            Some(dictionary) => {
                let keys = dictionary.keys();
                let per_key = &mut self.per_key;
                per_key.clear();
                per_key.resize(dictionary.values().len(), 0);
                let mut nulls = 0;
                match keys.null_count() {
                    0 => keys.values().iter().for_each(|&k| per_key[k as usize] += 1),
                    _ => keys.iter().for_each(|k| match k {
                        Some(k) => per_key[k as usize] += 1,
                        None => nulls += 1,
                    }),
                }
                let used = (0..per_key.len() as i32).filter(|&k| per_key[k as usize] > 0);
                let known = ids.resolve(dictionary.values(), used)?;
                tally.extend(
                    per_key
                        .iter()
                        .zip(known)
                        .filter(|(n, _)| **n > 0)
                        .map(|(n, number)| (*number, *n)),
                );
                if nulls > 0 {
                    tally.push((ids.null()?, nulls));
                }
            }
            // Strings (a column the scan could not read as a dictionary): numbered row by row.
            None => tally.extend(ids.ids(&column)?.values().iter().map(|&n| (n, 1))),
        }
        for (number, n) in tally {
            let group = group_of_number(group_of, numbers, number) as usize;
            if group >= self.counts.len() {
                self.counts.resize(group + 1, 0);
            }
            self.counts[group] += n;
        }
        Ok(())
    }

    /// Updates the accumulators with `batch`'s rows.
    fn accumulate(&mut self, batch: &RecordBatch) -> Result<()> {
        let rows = batch.num_rows();
        let mut keys = Vec::with_capacity(self.groups.len());
        for (expr, ids) in self.groups.iter().zip(&mut self.ids) {
            let column = expr.evaluate(batch)?.into_array(rows)?;
            keys.push(match ids {
                Some(ids) => Arc::new(ids.ids(&column)?) as ArrayRef,
                None => column,
            });
        }
        self.group_values.intern(&keys, &mut self.rows)?;
        let total = self.group_values.len();
        for ((accumulator, arguments), filter) in self
            .accumulators
            .iter_mut()
            .zip(&self.arguments)
            .zip(&self.filters)
        {
            let (values, filter) = inputs(arguments, filter, batch)?;
            accumulator.update_batch(
                &values,
                &self.rows,
                filter.as_ref().map(|f| f.as_boolean()),
                total,
            )?;
        }
        Ok(())
    }

    /// `batch`'s rows, each handed on as a group of its own: its group columns' values and each
    /// aggregate's state of that one row.
    fn passed(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        let rows = batch.num_rows();
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for ((expr, ids), field) in self.groups.iter().zip(&self.ids).zip(self.schema.fields()) {
            let column = expr.evaluate(batch)?.into_array(rows)?;
            columns.push(match ids {
                Some(ids) => of_type(ids.values_of(&column)?, field)?,
                None => column,
            });
        }
        for ((accumulator, arguments), filter) in self
            .accumulators
            .iter()
            .zip(&self.arguments)
            .zip(&self.filters)
        {
            let (values, filter) = inputs(arguments, filter, batch)?;
            columns.extend(
                accumulator.convert_to_state(&values, filter.as_ref().map(|f| f.as_boolean()))?,
            );
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    fn size(&self) -> usize {
        self.group_values.size()
            + self.accumulators.iter().map(|a| a.size()).sum::<usize>()
            + self.ids.iter().flatten().map(|i| i.size()).sum::<usize>()
            + self.rows.capacity() * size_of::<usize>()
            + (self.counts.capacity() + self.per_key.capacity()) * size_of::<i64>()
    }

    /// Hands on every group held, in batches of the session's size, and starts afresh.
    fn emit(&mut self) -> Result<()> {
        if self.group_values.is_empty() {
            return Ok(());
        }
        let mut columns = self.group_values.emit()?;
        for ((column, ids), field) in columns.iter_mut().zip(&self.ids).zip(self.schema.fields()) {
            if let Some(ids) = ids {
                *column = of_type(ids.strings(column)?, field)?;
            }
        }
        if self.counting {
            // Each count's state: its rows per group.
            let counts = Arc::new(Int64Array::from(std::mem::take(&mut self.counts)));
            columns.extend(self.aggregates.iter().map(|_| counts.clone() as ArrayRef));
        } else {
            for accumulator in &mut self.accumulators {
                columns.extend(accumulator.state(EmitTo::All)?);
            }
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        let mut offset = 0;
        while offset < batch.num_rows() {
            let length = self.batch_size.max(1).min(batch.num_rows() - offset);
            self.ready.push_back(batch.slice(offset, length));
            offset += length;
        }
        // The grouping and the accumulators start again from none.
        (self.group_values, self.accumulators) =
            empty(&self.numbered, self.kind, &self.aggregates)?;
        Ok(())
    }
}

/// An aggregate's arguments and its filter, computed over `batch`.
fn inputs(
    arguments: &[Arc<dyn PhysicalExpr>],
    filter: &Option<Arc<dyn PhysicalExpr>>,
    batch: &RecordBatch,
) -> Result<(Vec<ArrayRef>, Option<ArrayRef>)> {
    let rows = batch.num_rows();
    let values = arguments
        .iter()
        .map(|e| e.evaluate(batch)?.into_array(rows))
        .collect::<Result<Vec<_>>>()?;
    let filter = match filter {
        Some(f) => Some(f.evaluate(batch)?.into_array(rows)?),
        None => None,
    };
    Ok((values, filter))
}

/// A dictionary group's strings (`Utf8`) as `field` has them: a computed key of another string
/// type (`substr` gives views) was numbered as `Utf8`.
fn of_type(strings: ArrayRef, field: &Field) -> Result<ArrayRef> {
    Ok(match strings.data_type() == field.data_type() {
        true => strings,
        false => arrow::compute::cast(&strings, field.data_type())?,
    })
}

/// The groups held and an accumulator per aggregate over them.
type State = (Groups, Vec<Box<dyn GroupsAccumulator>>);

/// A grouping over `numbered` (as `kind` says) and `aggregates`' accumulators, holding no group
/// yet.
fn empty(
    numbered: &SchemaRef,
    kind: Kind,
    aggregates: &[Arc<AggregateFunctionExpr>],
) -> Result<State> {
    let group_values = match kind {
        Kind::Indexed => Groups::Indexed {
            group_of: Vec::new(),
            numbers: Vec::new(),
        },
        Kind::Packed => {
            let key = Schema::new(vec![Field::new("key", DataType::UInt64, false)]);
            Groups::Packed(new_group_values(Arc::new(key), &GroupOrdering::None)?)
        }
        Kind::Hashed => Groups::Hashed(new_group_values(numbered.clone(), &GroupOrdering::None)?),
    };
    let accumulators = aggregates
        .iter()
        .map(|a| a.create_groups_accumulator())
        .collect::<Result<Vec<_>>>()?;
    Ok((group_values, accumulators))
}

/// A value of [`Groups::Indexed`]'s `group_of`: the number has no group yet.
const NO_GROUP: u32 = u32::MAX;

/// Which of [`Groups`]' ways a grouping takes, told by its group columns.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Hashed,
    Indexed,
    Packed,
}

/// The groups of one partition's rows, by their numbered columns.
enum Groups {
    /// DataFusion's grouping: a hash of each row's numbers (and other columns).
    Hashed(Box<dyn GroupValues>),
    /// One group column, a dictionary: its numbers count up from 0, so a row's group is looked
    /// up in a table indexed by its number, no hash needed.
    Indexed {
        /// The group of each number ([`NO_GROUP`] for none yet).
        group_of: Vec<u32>,
        /// The number of each group.
        numbers: Vec<u32>,
    },
    /// Two group columns, both dictionaries: their two numbers packed into one 64-bit key, so
    /// that a row costs one hash of an integer instead of a row of two columns.
    Packed(Box<dyn GroupValues>),
}

impl Groups {
    /// The group of each row of `keys` in `rows`, new groups numbered next.
    fn intern(&mut self, keys: &[ArrayRef], rows: &mut Vec<usize>) -> Result<()> {
        let (group_of, numbers) = match self {
            Groups::Hashed(hashed) => return hashed.intern(keys, rows),
            Groups::Packed(packed) => return packed.intern(&[pack(keys)?], rows),
            Groups::Indexed { group_of, numbers } => (group_of, numbers),
        };
        let [column] = keys else {
            return internal_err!("indexed groups take one column, got {}", keys.len());
        };
        let Some(column) = column.as_primitive_opt::<UInt32Type>() else {
            return internal_err!("indexed groups take numbers, got {}", column.data_type());
        };
        rows.clear();
        rows.reserve(column.len());
        for &number in column.values() {
            rows.push(group_of_number(group_of, numbers, number) as usize);
        }
        Ok(())
    }

    fn len(&self) -> usize {
        match self {
            Groups::Hashed(hashed) | Groups::Packed(hashed) => hashed.len(),
            Groups::Indexed { numbers, .. } => numbers.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn size(&self) -> usize {
        match self {
            Groups::Hashed(hashed) | Groups::Packed(hashed) => hashed.size(),
            Groups::Indexed { group_of, numbers } => {
                (group_of.capacity() + numbers.capacity()) * size_of::<u32>()
            }
        }
    }

    /// The group columns of every group held, in group order.
    fn emit(&mut self) -> Result<Vec<ArrayRef>> {
        match self {
            Groups::Hashed(hashed) => hashed.emit(EmitTo::All),
            Groups::Packed(packed) => {
                let keys = packed.emit(EmitTo::All)?;
                let [keys] = keys.as_slice() else {
                    return internal_err!("packed groups emit one column, got {}", keys.len());
                };
                let Some(keys) = keys.as_primitive_opt::<UInt64Type>() else {
                    return internal_err!("packed groups emit keys, got {}", keys.data_type());
                };
                let high: UInt32Array = keys.unary(|k| (k >> 32) as u32);
                let low: UInt32Array = keys.unary(|k| k as u32);
                Ok(vec![Arc::new(high) as ArrayRef, Arc::new(low)])
            }
            Groups::Indexed { group_of, numbers } => {
                group_of.clear();
                let numbers = UInt32Array::from(std::mem::take(numbers));
                Ok(vec![Arc::new(numbers) as ArrayRef])
            }
        }
    }
}

/// The group of string number `number` in [`Groups::Indexed`]'s tables, a new group numbered
/// next if it has none.
fn group_of_number(group_of: &mut Vec<u32>, numbers: &mut Vec<u32>, number: u32) -> u32 {
    let index = number as usize;
    if index >= group_of.len() {
        group_of.resize(index + 1, NO_GROUP);
    }
    match group_of[index] {
        NO_GROUP => {
            let group = numbers.len() as u32;
            numbers.push(number);
            group_of[index] = group;
            group
        }
        group => group,
    }
}

/// Whether `aggregate` is `count(*)`: rows counted, nulls or not (a count of a constant that
/// is not null).
fn counts_rows(aggregate: &AggregateFunctionExpr) -> bool {
    aggregate.fun().name() == "count"
        && !aggregate.is_distinct()
        && aggregate.order_bys().is_empty()
        && matches!(aggregate.expressions().as_slice(), [e] if e
            .as_any()
            .downcast_ref::<Literal>()
            .is_some_and(|l| !l.value().is_null()))
}

/// Two columns of numbers as one column of 64-bit keys: the first in the high half.
fn pack(keys: &[ArrayRef]) -> Result<ArrayRef> {
    let [high, low] = keys else {
        return internal_err!("packed groups take two columns, got {}", keys.len());
    };
    let (Some(high), Some(low)) = (
        high.as_primitive_opt::<UInt32Type>(),
        low.as_primitive_opt::<UInt32Type>(),
    ) else {
        return internal_err!("packed groups take numbers");
    };
    let packed: UInt64Array =
        arrow::compute::binary(high, low, |h, l| (u64::from(h) << 32) | u64::from(l))?;
    Ok(Arc::new(packed))
}

impl Stream for Grouping {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(batch) = self.ready.pop_front() {
                let poll = Poll::Ready(Some(Ok(batch)));
                return self.metrics.record_poll(poll);
            }
            if self.done {
                return Poll::Ready(None);
            }
            let next = std::task::ready!(self.input.poll_next_unpin(cx));
            let elapsed = self.metrics.elapsed_compute().clone();
            let _timer = elapsed.timer();
            let step = match next {
                Some(Ok(batch)) => self.aggregate(&batch),
                Some(Err(e)) => Err(e),
                None => {
                    self.done = true;
                    self.emit()
                }
            };
            if let Err(e) = step {
                self.done = true;
                self.ready.clear();
                return Poll::Ready(Some(Err(e)));
            }
        }
    }
}

impl RecordBatchStream for Grouping {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

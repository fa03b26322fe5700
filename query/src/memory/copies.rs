//! Aggregates counted with the copies of their values: those whose value is copied when they
//! finish, and every aggregate a window calls.
//!
//! An aggregation reserves what its accumulators say they hold after each batch, and nothing
//! for what finishing makes. `string_agg` keeps one string (its capacity doubles as it grows),
//! then hands it on as a copy (its final value, cloned) that becomes a copy again (a one-row
//! array): about three times its size at once, of which the pool saw one. A 2 GB `string_agg`
//! under a 1 GiB limit made 4.8 GB before the reservation refused it. Here the accumulator
//! reports its size times its copies, so that the aggregation's own reservation refuses it
//! before the copies are made.
//!
//! A window calls an aggregate for each row's value and copies it into that row and others:
//! in a window, the accumulator counts each value it hands out with those copies, as
//! `window_values` tells (which plans windows' aggregates so, with [`in_window`]).

use std::any::Any;
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::expr::{AggregateFunctionParams, WindowFunctionParams};
use datafusion::logical_expr::function::{
    AccumulatorArgs, AggregateFunctionSimplification, StateFieldsArgs,
};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, GroupsAccumulator, ReversedUDAF,
    SetMonotonicity, Signature, StatisticsArgs,
};
use datafusion::prelude::SessionContext;

/// The aggregates concerned, with the copies of its state each makes at most at once.
const COPIED: &[(&str, usize)] = &[("string_agg", 3)];

/// Replaces the aggregates of [`COPIED`] in `ctx` by ones counted with their copies.
pub fn register(ctx: &SessionContext) {
    let state = ctx.state();
    for &(name, copies) in COPIED {
        let Some(inner) = state.aggregate_functions().get(name) else {
            continue;
        };
        if inner.inner().as_any().is::<Copies>() {
            continue;
        }
        ctx.register_udaf(AggregateUDF::new_from_impl(Copies {
            inner: inner.clone(),
            copies,
            in_window: false,
        }));
    }
}

/// `function` as a window calls it: its accumulators count the values they hand out
/// (`window_values`), and the size they report as before. `None` if it does already.
pub(super) fn in_window(function: &Arc<AggregateUDF>) -> Option<Arc<AggregateUDF>> {
    let (inner, copies) = match function.inner().as_any().downcast_ref::<Copies>() {
        Some(c) if c.in_window => return None,
        Some(c) => (c.inner.clone(), c.copies),
        None => (function.clone(), 1),
    };
    Some(Arc::new(AggregateUDF::new_from_impl(Copies {
        inner,
        copies,
        in_window: true,
    })))
}

/// An aggregate function as it is, but for the size its accumulators report and, in a window,
/// the values they hand out counted.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Copies {
    inner: Arc<AggregateUDF>,
    copies: usize,
    in_window: bool,
}

impl Copies {
    fn of(&self) -> &dyn AggregateUDFImpl {
        self.inner.inner().as_ref()
    }

    fn wrap(&self, inner: Arc<AggregateUDF>) -> Arc<AggregateUDF> {
        Arc::new(AggregateUDF::new_from_impl(Copies {
            inner,
            copies: self.copies,
            in_window: self.in_window,
        }))
    }

    fn counted(&self, inner: Box<dyn Accumulator>) -> Box<dyn Accumulator> {
        Box::new(Counted {
            inner,
            copies: self.copies,
            in_window: self.in_window,
            rows: 0,
        })
    }
}

impl AggregateUDFImpl for Copies {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        self.of().name()
    }

    fn aliases(&self) -> &[String] {
        self.of().aliases()
    }

    fn schema_name(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.of().schema_name(params)
    }

    fn human_display(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.of().human_display(params)
    }

    fn window_function_schema_name(&self, params: &WindowFunctionParams) -> Result<String> {
        self.of().window_function_schema_name(params)
    }

    fn display_name(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.of().display_name(params)
    }

    fn window_function_display_name(&self, params: &WindowFunctionParams) -> Result<String> {
        self.of().window_function_display_name(params)
    }

    fn signature(&self) -> &Signature {
        self.of().signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.of().return_type(arg_types)
    }

    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        self.of().return_field(arg_fields)
    }

    fn is_nullable(&self) -> bool {
        self.of().is_nullable()
    }

    fn accumulator(&self, acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(self.counted(self.of().accumulator(acc_args)?))
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(self.counted(self.of().create_sliding_accumulator(args)?))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.of().state_fields(args)
    }

    // Groups accumulators report their own sizes: none of [`COPIED`] has one, and a window
    // calls none.
    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        self.of().groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        self.of().create_groups_accumulator(args)
    }

    fn simplify(&self) -> Option<AggregateFunctionSimplification> {
        self.of().simplify()
    }

    fn is_descending(&self) -> Option<bool> {
        self.of().is_descending()
    }

    fn value_from_stats(&self, statistics_args: &StatisticsArgs) -> Option<ScalarValue> {
        self.of().value_from_stats(statistics_args)
    }

    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        self.of().set_monotonicity(data_type)
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.of().order_sensitivity()
    }

    fn with_beneficial_ordering(
        self: Arc<Self>,
        beneficial_ordering: bool,
    ) -> Result<Option<Arc<dyn AggregateUDFImpl>>> {
        let inner = self.inner.inner().clone();
        Ok(inner
            .with_beneficial_ordering(beneficial_ordering)?
            .map(|changed| {
                Arc::new(Copies {
                    inner: Arc::new(AggregateUDF::new_from_shared_impl(changed)),
                    copies: self.copies,
                    in_window: self.in_window,
                }) as _
            }))
    }

    fn reverse_expr(&self) -> ReversedUDAF {
        match self.of().reverse_expr() {
            ReversedUDAF::Reversed(reversed) => ReversedUDAF::Reversed(self.wrap(reversed)),
            other => other,
        }
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.of().coerce_types(arg_types)
    }

    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        self.of().default_value(data_type)
    }

    fn supports_null_handling_clause(&self) -> bool {
        self.of().supports_null_handling_clause()
    }

    fn supports_within_group_clause(&self) -> bool {
        self.of().supports_within_group_clause()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.of().documentation()
    }
}

/// An accumulator as it is, reporting its size times its copies, and in a window counting
/// the values it hands out.
#[derive(Debug)]
struct Counted {
    inner: Box<dyn Accumulator>,
    copies: usize,
    in_window: bool,
    /// Rows given since the last value was handed out.
    rows: usize,
}

impl Accumulator for Counted {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.rows = self
            .rows
            .saturating_add(values.first().map_or(0, |v| v.len()));
        self.inner.update_batch(values)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let value = self.inner.evaluate()?;
        if self.in_window {
            // A window keeps the value beside the others of its batch, then copies it into the
            // rows that entered the frame since the last one (each running row its own; the
            // whole partition, a value it shares). Its fixed part is in every scalar and every
            // row alike: what grows is its list or text.
            let rows = std::mem::take(&mut self.rows);
            let bytes = value.size().saturating_sub(size_of_val(&value));
            super::window_values::count(bytes.saturating_mul(rows.saturating_add(1)))?;
        }
        Ok(value)
    }

    fn size(&self) -> usize {
        self.inner.size().saturating_mul(self.copies)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.inner.state()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.inner.merge_batch(states)
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.inner.retract_batch(values)
    }

    fn supports_retract_batch(&self) -> bool {
        self.inner.supports_retract_batch()
    }
}

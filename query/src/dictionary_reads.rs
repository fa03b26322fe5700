//! Which plans can read string columns as Parquet's dictionaries, and the plans rebuilt so.
//!
//! Both dictionary rules (`groups::DictionaryGroups`, `dictionary_filters::DictionaryFilters`)
//! walk a physical plan bottom up ([`rewrite_each`]) and, where a node could take string
//! columns as dictionaries, ask [`read_as_dictionaries`] to rebuild the plan below it: each node
//! on the way down must hand the columns on untouched and read them only in comparisons a
//! dictionary answers as its strings do (`dictionary_filters::reads_as_dictionary`), down to
//! Floe's scan, which is then told to read them as dictionaries (`scan::dictionaries`).

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::physical_plan::{FileScanConfigBuilder, FileSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::{Partitioning, PhysicalExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;

use crate::dictionary_filters::reads_as_dictionary;
use crate::scan::dictionaries::OwnDictionaries;
use crate::scan::{PerFileMetrics, file_scan};

/// A node rewritten, or `None` to keep it.
pub(crate) type Rewrite<'a> =
    &'a dyn Fn(&Arc<dyn ExecutionPlan>) -> Result<Option<Arc<dyn ExecutionPlan>>>;

/// `plan` with each node that `rewrite` rewrites (bottom up) replaced.
pub(crate) fn rewrite_each(
    plan: Arc<dyn ExecutionPlan>,
    rewrite: Rewrite,
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        Ok(match rewrite(&node)? {
            Some(rewritten) => Transformed::yes(rewritten),
            None => Transformed::no(node),
        })
    })
    .map(|t| t.data)
}

/// The columns `expr` reads, by index.
pub(crate) fn column_indices(expr: &Arc<dyn PhysicalExpr>) -> Vec<usize> {
    collect_columns(expr).iter().map(|c| c.index()).collect()
}

/// A plan rebuilt to read some columns as dictionaries, and which (by output index).
type Rebuilt = (Arc<dyn ExecutionPlan>, Vec<usize>);

/// `node` rebuilt so that the output columns `columns` (string columns) are dictionaries, and
/// which of them could be (by output index), or `None` if none could: each node on the way
/// down must hand the columns on untouched and read them only in comparisons a dictionary
/// answers as its strings do, down to Floe's scan.
pub(crate) fn read_as_dictionaries(
    node: &Arc<dyn ExecutionPlan>,
    columns: &[usize],
) -> Result<Option<Rebuilt>> {
    let any = node.as_any();
    if let Some(config) = file_scan(node.as_ref()) {
        let Some(source) = config.file_source.as_any().downcast_ref::<PerFileMetrics>() else {
            return Ok(None);
        };
        let table = config.file_schema();
        // The scan's own filter (row groups and pages are skipped by it) may compare a column
        // read as a dictionary, nothing else.
        let filter = source.filter();
        // The table column behind each output column (a projection the scan computes reads
        // its columns in the expression).
        let outputs: Vec<Arc<dyn PhysicalExpr>> = match source.projection() {
            Some(p) => p.as_ref().iter().map(|p| p.expr.clone()).collect(),
            None => (0..table.fields().len())
                .map(|i| Arc::new(Column::new(table.field(i).name(), i)) as _)
                .collect(),
        };
        let mut names = Vec::new();
        let mut kept = Vec::new();
        for &index in columns {
            let Some(column) = outputs
                .get(index)
                .and_then(|e| e.as_any().downcast_ref::<Column>())
            else {
                continue;
            };
            let Ok(field) = table.field_with_name(column.name()) else {
                continue;
            };
            // Read by another output (the same column twice, or an expression of it): keeps
            // its type.
            let read_by_others = outputs.iter().enumerate().any(|(i, e)| {
                i != index && collect_columns(e).iter().any(|c| c.name() == column.name())
            });
            if field.data_type() == &DataType::Utf8
                && filter
                    .as_ref()
                    .is_none_or(|f| reads_as_dictionary(f, &|c| c.name() == field.name()))
                && !read_by_others
            {
                names.push(field.name().clone());
                kept.push(index);
            }
        }
        if names.is_empty() {
            return Ok(None);
        }
        let Some(source) = source.reading_dictionaries(&names)? else {
            return Ok(None);
        };
        // A file without a dictionary of a column hands its strings on as one (`scan::
        // dictionaries::OwnDictionaries`), not cast into one.
        let adapter = OwnDictionaries::over(config.expr_adapter_factory.clone());
        let config = FileScanConfigBuilder::from(config.clone())
            .with_source(Arc::new(source))
            .with_expr_adapter(Some(Arc::new(adapter)))
            .build();
        return Ok(Some((DataSourceExec::from_data_source(config), kept)));
    }
    if let Some(filter) = any.downcast_ref::<FilterExec>() {
        // A filter may drop columns after filtering (its projection): map ours to its input's.
        let below: Vec<(usize, usize)> = match filter.projection() {
            // (An input column handed on twice would change type in both places.)
            Some(p) => columns
                .iter()
                .filter_map(|&c| p.get(c).map(|&b| (c, b)))
                .filter(|(_, b)| p.iter().filter(|i| *i == b).count() == 1)
                .collect(),
            None => columns.iter().map(|&c| (c, c)).collect(),
        };
        let wanted: Vec<usize> = below.iter().map(|(_, b)| *b).collect();
        if wanted.is_empty()
            || !reads_as_dictionary(filter.predicate(), &|c| wanted.contains(&c.index()))
        {
            return Ok(None);
        }
        return rebuilt_above(node, filter.input(), &below);
    }
    // Nodes that hand their input's columns on as they are.
    let passes = if let Some(repartition) = any.downcast_ref::<RepartitionExec>() {
        !repartition.preserve_order()
            && match repartition.partitioning() {
                Partitioning::Hash(exprs, _) => exprs.iter().all(|e| reads_none(e, columns)),
                _ => true,
            }
    } else {
        any.is::<CoalescePartitionsExec>()
    };
    if passes {
        let same: Vec<(usize, usize)> = columns.iter().map(|&c| (c, c)).collect();
        return rebuilt_above(node, node.children()[0], &same);
    }
    if let Some(projection) = any.downcast_ref::<ProjectionExec>() {
        // Output columns that are input columns read by nothing else in the projection.
        let exprs = projection.expr();
        let mut below = Vec::new();
        for &index in columns {
            let Some(column) = exprs
                .get(index)
                .and_then(|p| p.expr.as_any().downcast_ref::<Column>())
            else {
                continue;
            };
            let read_by_others = exprs
                .iter()
                .enumerate()
                .any(|(i, p)| i != index && column_indices(&p.expr).contains(&column.index()));
            if !read_by_others {
                below.push((index, column.index()));
            }
        }
        return rebuilt_above(node, projection.input(), &below);
    }
    Ok(None)
}

/// `node` over its `input` rebuilt to read dictionaries, for `below`: pairs of a column of
/// `node`'s output and the input column it hands on.
fn rebuilt_above(
    node: &Arc<dyn ExecutionPlan>,
    input: &Arc<dyn ExecutionPlan>,
    below: &[(usize, usize)],
) -> Result<Option<Rebuilt>> {
    let wanted: Vec<usize> = below.iter().map(|(_, b)| *b).collect();
    if wanted.is_empty() {
        return Ok(None);
    }
    let Some((child, kept)) = read_as_dictionaries(input, &wanted)? else {
        return Ok(None);
    };
    let kept: Vec<usize> = below
        .iter()
        .filter(|(_, b)| kept.contains(b))
        .map(|(above, _)| *above)
        .collect();
    Ok(Some((node.clone().with_new_children(vec![child])?, kept)))
}

/// Whether `expr` reads none of `columns`.
fn reads_none(expr: &Arc<dyn PhysicalExpr>, columns: &[usize]) -> bool {
    column_indices(expr).iter().all(|c| !columns.contains(c))
}

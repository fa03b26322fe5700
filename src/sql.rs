//! `floe sql`: a read-only query over one tenant's tables, from the terminal.

use anyhow::bail;
use floe_catalog::{Catalog, Config, TenantId};
use floe_query::{Engine, OutputFormat};

use crate::cli::SqlFormat;

pub async fn run(
    config: &Config,
    tenant: &str,
    format: SqlFormat,
    sql: &str,
) -> anyhow::Result<()> {
    let catalog = Catalog::open(config).await?;
    let tenant = TenantId::parse(tenant)?;
    if !catalog.tenant_exists(&tenant).await? {
        bail!("tenant {tenant} does not exist");
    }
    let engine = Engine::new(catalog, config.query.clone());
    let (schema, batches) = engine
        .sql(&tenant, floe_query::Scope::Everything, sql)
        .await?;
    let format = match format {
        SqlFormat::Table => OutputFormat::Table,
        SqlFormat::Csv => OutputFormat::Csv,
        SqlFormat::Json => OutputFormat::Json,
    };
    let text = floe_query::render(&schema, &batches, format)?;
    print!("{text}");
    if format == OutputFormat::Table {
        println!();
    }
    Ok(())
}

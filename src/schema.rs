//! `floe schema register|check|list|show`: a tenant's event type schemas.

use anyhow::{Context, bail};
use floe_catalog::schema::Compatibility;
use floe_catalog::{Catalog, Config, TenantId};
use serde_json::Value;

use crate::cli::SchemaCommand;

pub async fn run(config: &Config, command: &SchemaCommand) -> anyhow::Result<()> {
    let catalog = Catalog::open(config).await?;
    match command {
        SchemaCommand::Register {
            tenant,
            type_name,
            version,
            file,
            compatibility,
        } => {
            let tenant = TenantId::parse(tenant)?;
            let mode = compatibility
                .as_deref()
                .map(Compatibility::parse)
                .transpose()?;
            let done = catalog
                .register_schema(&tenant, type_name, *version, read(file)?, mode, "cli")
                .await?;
            let what = if done.created {
                "registered"
            } else {
                "already registered (unchanged)"
            };
            println!(
                "{tenant}: {type_name} version {version} {what}; compatibility {}",
                done.compatibility.as_str()
            );
        }
        SchemaCommand::Check {
            tenant,
            type_name,
            file,
            compatibility,
        } => {
            let tenant = TenantId::parse(tenant)?;
            let mode = compatibility
                .as_deref()
                .map(Compatibility::parse)
                .transpose()?;
            let schema = read(file)?;
            let (mode, reasons) = catalog
                .check_next_schema(&tenant, type_name, &schema, mode)
                .await?;
            if !reasons.is_empty() {
                for r in &reasons {
                    eprintln!("{r}");
                }
                bail!(
                    "{file} would be refused as the next version of {type_name} ({} compatibility): {} problem(s)",
                    mode.as_str(),
                    reasons.len()
                );
            }
            println!(
                "{file}: compatible ({}) as the next version of {type_name}",
                mode.as_str()
            );
        }
        SchemaCommand::List { tenant } => {
            let tenant = TenantId::parse(tenant)?;
            println!("type\tversions\tcompatibility");
            let all = catalog.schemas(&tenant, None).await?;
            let mut types: Vec<&str> = all.iter().map(|s| s.type_name.as_str()).collect();
            types.dedup();
            for t in types {
                let versions: Vec<String> = all
                    .iter()
                    .filter(|s| s.type_name == t)
                    .map(|s| s.version.to_string())
                    .collect();
                let mode = catalog.compatibility(&tenant, t).await?;
                println!("{t}\t{}\t{}", versions.join(","), mode.as_str());
            }
        }
        SchemaCommand::Show {
            tenant,
            type_name,
            version,
        } => {
            let tenant = TenantId::parse(tenant)?;
            let schema = match version {
                Some(v) => catalog.schema(&tenant, type_name, *v).await?,
                None => catalog
                    .schemas(&tenant, Some(type_name))
                    .await?
                    .pop()
                    .with_context(|| format!("{tenant} has no schema for {type_name}"))?,
            };
            println!("{}", serde_json::to_string_pretty(&schema)?);
        }
    }
    Ok(())
}

/// A JSON document from a file, or standard input for `-`.
fn read(file: &str) -> anyhow::Result<Value> {
    let text = if file == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
    };
    serde_json::from_str(&text).with_context(|| format!("{file} is not JSON"))
}

//! `floe projection list|show|create|drop|rebuild`: a tenant's projections, their freshness,
//! its own definitions (created, replaced, dropped), and their recomputation from all events.

use floe_catalog::projection::ProjectionStatus;
use floe_catalog::{Catalog, Config, TenantId};

use crate::cli::ProjectionCommand;

pub async fn run(config: &Config, command: &ProjectionCommand) -> anyhow::Result<()> {
    let catalog = Catalog::open(config).await?;
    match command {
        ProjectionCommand::List { tenant } => {
            let tenant = TenantId::parse(tenant)?;
            println!("name\tkind\tlag_events\tlag_seconds\trows\tsource_snapshot");
            for p in catalog.projection_status(&tenant).await? {
                println!(
                    "{}\t{}\t{}\t{:.1}\t{}\t{}",
                    p.name,
                    p.kind,
                    p.lag_events,
                    p.lag_seconds,
                    p.rows,
                    or_none(p.source_snapshot)
                );
            }
        }
        ProjectionCommand::Show { tenant, name } => {
            let tenant = TenantId::parse(tenant)?;
            let all = catalog.projection_status(&tenant).await?;
            let Some(p) = all.iter().find(|p| &p.name == name) else {
                let names: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
                anyhow::bail!(
                    "tenant {tenant} has no projection {name:?} (it has: {})",
                    names.join(", ")
                );
            };
            show(p);
        }
        ProjectionCommand::Create {
            tenant,
            name,
            sql,
            replace: true,
        } => {
            let tenant = TenantId::parse(tenant)?;
            let refresher = floe_compactor::projection::Refresher::new(catalog.clone(), config);
            refresher
                .redefine_projection(&tenant, name, sql, "cli")
                .await
                .map_err(|e| anyhow::anyhow!(e.into_catalog()))?;
            let done = refresher.rebuild(&tenant, name, None).await?;
            println!(
                "{tenant}.{name}: redefined, rebuilt from {} files over {} days; now at events \
                 snapshot {}",
                done.files_read,
                done.days_read,
                or_none(done.source)
            );
        }
        ProjectionCommand::Create {
            tenant,
            name,
            sql,
            replace: false,
        } => {
            let tenant = TenantId::parse(tenant)?;
            let refresher = floe_compactor::projection::Refresher::new(catalog.clone(), config);
            refresher
                .create_projection(&tenant, name, sql, "cli")
                .await
                .map_err(|e| anyhow::anyhow!(e.into_catalog()))?;
            let done = refresher.refresh_tenant(&tenant).await?;
            println!(
                "{tenant}.{name}: created, filled from {} files over {} days",
                done.files_read, done.days_read
            );
        }
        ProjectionCommand::Drop { tenant, name } => {
            let tenant = TenantId::parse(tenant)?;
            catalog
                .drop_defined_projection(&tenant, name, "cli")
                .await?;
            println!("{tenant}.{name}: dropped");
        }
        ProjectionCommand::Rebuild {
            tenant,
            name,
            at_snapshot,
        } => {
            let tenant = TenantId::parse(tenant)?;
            let refresher = floe_compactor::projection::Refresher::new(catalog.clone(), config);
            let done = refresher.rebuild(&tenant, name, *at_snapshot).await?;
            println!(
                "{tenant}.{name}: rebuilt from {} files over {} days; now at events snapshot {}",
                done.files_read,
                done.days_read,
                or_none(done.source)
            );
        }
    }
    Ok(())
}

fn or_none(v: Option<i64>) -> String {
    v.map_or("none".to_string(), |v| v.to_string())
}

fn show(p: &ProjectionStatus) {
    println!("name\t{}", p.name);
    println!("kind\t{}", p.kind);
    println!("source_snapshot\t{}", or_none(p.source_snapshot));
    println!("events_snapshot\t{}", or_none(p.events_snapshot));
    println!("lag_events\t{}", p.lag_events);
    println!("lag_seconds\t{:.1}", p.lag_seconds);
    println!("refreshed_at_ms\t{}", or_none(p.refreshed_at_ms));
    println!("rows\t{}", p.rows);
}

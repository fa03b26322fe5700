//! `floe tenant create|list|set|delete`.

use anyhow::Context;
use floe_catalog::quota::{Quota, Quotas};
use floe_catalog::{Catalog, Config, TenantId, TenantSettings};

use crate::cli::TenantCommand;

pub async fn run(config: &Config, command: &TenantCommand) -> anyhow::Result<()> {
    let catalog = Catalog::open(config).await?;
    match command {
        TenantCommand::Create { id } => {
            let id = TenantId::parse(id)?;
            let producer = if config.kafka.brokers.is_empty() {
                None
            } else {
                Some(floe_ingest::produce::Producer::new(config)?)
            };
            create(&catalog, producer.as_ref(), &id, "cli").await?;
            println!("{id}");
        }
        TenantCommand::List => {
            for t in catalog.list_tenants().await? {
                let mut line = t.id.clone();
                if let Some(d) = t.retention_days {
                    line.push_str(&format!("\tretention_days={d}"));
                }
                if let Some(b) = t.target_file_bytes {
                    line.push_str(&format!("\ttarget_file_bytes={b}"));
                }
                if !t.user_fields.is_empty() {
                    line.push_str(&format!("\tuser_fields={}", t.user_fields.join(",")));
                }
                println!("{line}");
            }
        }
        TenantCommand::Set {
            id,
            retention_days,
            target_file_bytes,
            user_fields,
            quotas,
            projections,
            unknown_types,
        } => {
            let id = TenantId::parse(id)?;
            let settings = TenantSettings {
                retention_days: optional_number("--retention-days", retention_days)?,
                target_file_bytes: optional_number("--target-file-bytes", target_file_bytes)?,
                user_fields: user_fields.as_ref().map(|f| match f.trim() {
                    "none" | "" => Vec::new(),
                    list => list.split(',').map(str::to_string).collect(),
                }),
                quotas: floe_catalog::quota::parse_overrides(quotas)?,
                projections: floe_catalog::projection::parse_switches(projections)?,
                unknown_types: unknown_types
                    .as_deref()
                    .map(floe_catalog::schema::UnknownTypes::parse)
                    .transpose()?,
            };
            let t = catalog.set_tenant_settings(&id, settings, "cli").await?;
            println!("{}", serde_json::to_string(&t)?);
        }
        TenantCommand::Show { id } => {
            let id = TenantId::parse(id)?;
            show(config, &catalog, &id).await?;
        }
        TenantCommand::Delete { id, purge } => {
            let id = TenantId::parse(id)?;
            let done = catalog.delete_tenant(&id, *purge, "cli").await?;
            if *purge {
                let was = if done.existed {
                    ""
                } else {
                    " (was already gone)"
                };
                println!(
                    "{id}: deleted{was}; {} objects purged from the warehouse",
                    done.objects_deleted
                );
            } else {
                println!(
                    "{id}: deleted from the catalog; its files stay in the warehouse \
                     (run again with --purge to delete them)"
                );
            }
        }
    }
    Ok(())
}

/// Creates a tenant (`floe tenant create`, `POST /v1/tenants`). In Kafka mode (a `producer`)
/// its topic is made too, and its table reads the topic from where it ends now: what an
/// earlier tenant with this id left there is not this tenant's.
pub async fn create(
    catalog: &Catalog,
    producer: Option<&floe_ingest::produce::Producer>,
    id: &TenantId,
    actor: &str,
) -> floe_catalog::Result<floe_catalog::tenant::Tenant> {
    let mut properties = Vec::new();
    if let Some(producer) = producer {
        if let Err(e) = producer.create_topic(id).await {
            tracing::warn!(tenant = %id, error = %e, "could not create the tenant's topic");
        }
        let topic = producer.topic(id);
        let ends =
            producer
                .end_offsets(id)
                .await
                .map_err(|e| floe_catalog::Error::Unavailable {
                    what: format!("where topic {topic} ends"),
                    why: e.to_string(),
                })?;
        properties.push(floe_catalog::table::kafka_start_property(&topic, &ends));
    }
    catalog.create_tenant_with(id, actor, properties).await
}

/// Prints a tenant's settings, quotas and usage.
async fn show(config: &Config, catalog: &Catalog, id: &TenantId) -> anyhow::Result<()> {
    let tenant = catalog.tenant(id).await?;
    let quotas = Quotas::resolve(&config.quota, &tenant.quotas);
    let usage = catalog.usage(id, &floe_catalog::quota::today()).await?;
    let stored = catalog.stored_bytes(id).await?;
    println!("tenant\t{}", tenant.id);
    println!("incarnation\t{}", tenant.incarnation);
    let or_none = |v: Option<i64>| v.map_or("none".to_string(), |v| v.to_string());
    println!("retention_days\t{}", or_none(tenant.retention_days));
    println!("target_file_bytes\t{}", or_none(tenant.target_file_bytes));
    println!("user_fields\t{}", tenant.user_fields.join(","));
    println!("unknown_types\t{}", tenant.unknown_types.as_str());
    let projections: Vec<&str> = floe_catalog::projection::builtins_of(&tenant)
        .iter()
        .map(|b| b.name)
        .collect();
    println!("projections\t{}", projections.join(","));
    println!();
    println!("quota\tlimit\tsource\tused");
    for q in Quota::ALL {
        let limit = match quotas.get(q) {
            0 => "unlimited".to_string(),
            n => n.to_string(),
        };
        let source = if quotas.is_override(q) {
            "tenant"
        } else {
            "default"
        };
        let used = match q {
            Quota::StoredBytes => stored.to_string(),
            Quota::ScannedBytesPerDay => format!("{} today", usage.scanned_bytes),
            Quota::QueriesPerMinute => format!("{} today", usage.queries),
            Quota::IngestEventsPerSec => format!("{} events today", usage.events),
            Quota::IngestBytesPerSec => format!("{} bytes today", usage.bytes),
            // Counted by each server for the queries it runs.
            Quota::ConcurrentQueries => "-".to_string(),
        };
        println!("{}\t{limit}\t{source}\t{used}", q.name());
    }
    Ok(())
}

/// `N` or `none` for a setting that may be cleared.
fn optional_number(flag: &str, value: &Option<String>) -> anyhow::Result<Option<Option<i64>>> {
    match value.as_deref() {
        None => Ok(None),
        Some("none") => Ok(Some(None)),
        Some(v) => Ok(Some(Some(v.parse().with_context(|| {
            format!("{flag} {v:?}: expected a number or `none`")
        })?))),
    }
}

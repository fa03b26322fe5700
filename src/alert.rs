//! `floe alert create|list|delete`: a tenant's alert rules, as `/v1/alerts` manages them
//! (audited with the actor `cli`).

use floe_catalog::alert::NewAlert;
use floe_catalog::{Catalog, Config, TenantId};

use crate::cli::AlertCommand;

pub async fn run(config: &Config, command: &AlertCommand) -> anyhow::Result<()> {
    let catalog = Catalog::open(config).await?;
    match command {
        AlertCommand::Create {
            tenant,
            name,
            kind,
            threshold,
            window,
            webhook,
            secret,
            sql,
        } => {
            let tenant = TenantId::parse(tenant)?;
            if !catalog.tenant_exists(&tenant).await? {
                anyhow::bail!("tenant {tenant} does not exist");
            }
            let alert = NewAlert {
                name: name.clone(),
                kind: kind.clone(),
                threshold: *threshold,
                window: Some(window.clone()),
                webhook: webhook.clone(),
                secret: secret.clone(),
                sql: sql.clone(),
            }
            .check(&tenant, "cli")?;
            let created = catalog
                .create_alert(alert, config.alerting.max_rules_per_tenant)
                .await?;
            println!("{}", serde_json::to_string(&created)?);
        }
        AlertCommand::List { tenant } => {
            let tenant = TenantId::parse(tenant)?;
            for alert in catalog.alerts(Some(&tenant)).await? {
                let mut line = serde_json::to_value(&alert)?;
                line["status"] = alert.status().into();
                println!("{line}");
            }
        }
        AlertCommand::Delete { tenant, name } => {
            let tenant = TenantId::parse(tenant)?;
            catalog.delete_alert(&tenant, name, "cli").await?;
            println!("alert {name} of tenant {tenant} deleted");
        }
    }
    Ok(())
}

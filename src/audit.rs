//! `floe audit verify` and `floe audit publish`.

use floe_catalog::{Catalog, Config, TenantId};

use crate::cli::AuditCommand;

pub async fn run(config: &Config, command: &AuditCommand) -> anyhow::Result<()> {
    let catalog = Catalog::open(config).await?;
    match command {
        AuditCommand::Verify { tenant, .. } => {
            let tenant = tenant.as_deref().map(TenantId::parse).transpose()?;
            let chain = tenant
                .as_ref()
                .map_or("the platform's chain".to_string(), |t| {
                    format!("tenant {t}")
                });
            let v = catalog.verify_audit(tenant.as_ref()).await?;
            match v.broken {
                None => {
                    println!(
                        "{chain}: {} records verified ({} in the audit table, {} not yet published)",
                        v.records,
                        v.published,
                        v.records - v.published
                    );
                    Ok(())
                }
                Some(b) => {
                    eprintln!(
                        "{chain}: the chain is broken at record {} (in the {}): {}",
                        b.seq, b.place, b.reason
                    );
                    std::process::exit(1);
                }
            }
        }
        AuditCommand::Publish => {
            let mut total = 0;
            loop {
                let n = catalog.publish_audit(10_000).await?;
                if n == 0 {
                    break;
                }
                total += n;
            }
            println!("{total} audit records published");
            Ok(())
        }
    }
}

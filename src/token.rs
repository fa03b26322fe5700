//! `floe token issue`.

use anyhow::bail;
use floe_catalog::{Catalog, Config, Role, TenantId, TokenAuthority};

pub async fn issue(config: &Config, tenant: &str, role: &str, ttl: &str) -> anyhow::Result<()> {
    let catalog = Catalog::open(config).await?;
    let tenant = TenantId::parse(tenant)?;
    if !catalog.tenant_exists(&tenant).await? {
        bail!("tenant {tenant} does not exist (create it with `floe tenant create {tenant}`)");
    }
    let ttl = floe_catalog::auth::parse_ttl(ttl)?;
    if ttl.as_secs() > config.auth.max_token_ttl_secs {
        bail!(
            "--ttl exceeds auth.max_token_ttl_secs ({} s)",
            config.auth.max_token_ttl_secs
        );
    }
    let role: Role = role.parse()?;
    let authority = TokenAuthority::load_or_create(&config.signing_key_path())?;
    let token = authority.issue(&tenant, role, ttl)?;
    let detail = serde_json::json!({"role": role.as_str(), "ttl_secs": ttl.as_secs()});
    catalog
        .audit(
            "cli",
            Some(tenant.as_str()),
            "token.issue",
            &detail.to_string(),
        )
        .await?;
    println!("{token}");
    Ok(())
}

//! `floe token issue`.

use anyhow::bail;
use floe_catalog::{Catalog, Config, Role, TenantId, TokenAuthority};

pub async fn issue(
    config: &Config,
    tenant: Option<&str>,
    role: &str,
    ttl: &str,
) -> anyhow::Result<()> {
    let catalog = Catalog::open(config).await?;
    let role: Role = role.parse()?;
    let ttl = floe_catalog::auth::parse_ttl(ttl)?;
    if ttl.as_secs() > config.auth.max_token_ttl_secs {
        bail!(
            "--ttl exceeds auth.max_token_ttl_secs ({} s)",
            config.auth.max_token_ttl_secs
        );
    }
    let authority = TokenAuthority::load_or_create(&config.signing_key_path())?;
    let detail = serde_json::json!({"role": role.as_str(), "ttl_secs": ttl.as_secs()});
    let token = match (role, tenant) {
        (Role::Operator, Some(_)) => {
            bail!("the operator role is the platform's, bound to no tenant: drop --tenant")
        }
        (Role::Operator, None) => {
            let token = authority.issue_operator(ttl)?;
            catalog
                .audit("cli", None, "token.issue", &detail.to_string())
                .await?;
            token
        }
        (_, None) => bail!("--tenant is required for role {}", role.as_str()),
        (_, Some(tenant)) => {
            let tenant = TenantId::parse(tenant)?;
            if !catalog.tenant_exists(&tenant).await? {
                bail!(
                    "tenant {tenant} does not exist (create it with `floe tenant create {tenant}`)"
                );
            }
            let token = authority.issue(&tenant, role, ttl)?;
            catalog
                .audit(
                    "cli",
                    Some(tenant.as_str()),
                    "token.issue",
                    &detail.to_string(),
                )
                .await?;
            token
        }
    };
    println!("{token}");
    Ok(())
}

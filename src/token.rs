//! `floe token issue|revoke` and `floe key create|list|revoke`.

use anyhow::bail;
use floe_catalog::{Catalog, Config, Role, TenantId, TokenAuthority};

use crate::cli::KeyCommand;

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

/// Revokes a tenant's token by its id, until it would have expired anyway.
pub async fn revoke(config: &Config, tenant: &str, jti: &str) -> anyhow::Result<()> {
    let catalog = Catalog::open(config).await?;
    let tenant = TenantId::parse(tenant)?;
    let until = chrono::Utc::now().timestamp_millis()
        + (config.auth.max_token_ttl_secs as i64).saturating_mul(1000);
    catalog.revoke_token(&tenant, jti, until, "cli").await?;
    println!("token {jti} of tenant {tenant} revoked");
    Ok(())
}

pub async fn key(config: &Config, command: &KeyCommand) -> anyhow::Result<()> {
    let catalog = Catalog::open(config).await?;
    match command {
        KeyCommand::Create {
            tenant,
            role,
            expires_in,
            event_types,
        } => {
            let tenant = TenantId::parse(tenant)?;
            if !catalog.tenant_exists(&tenant).await? {
                bail!("tenant {tenant} does not exist");
            }
            let expires_at_ms = match expires_in {
                None => None,
                Some(ttl) => Some(
                    chrono::Utc::now().timestamp_millis()
                        + floe_catalog::auth::parse_ttl(ttl)?.as_millis() as i64,
                ),
            };
            let made = catalog
                .create_api_key(
                    &tenant,
                    role.parse()?,
                    event_types.clone(),
                    expires_at_ms,
                    "cli",
                )
                .await?;
            println!("{}", made.token);
            eprintln!(
                "key id {} (prefix {}); the key is not shown again",
                made.key.id,
                made.key.prefix()
            );
        }
        KeyCommand::List { tenant } => {
            let tenant = TenantId::parse(tenant)?;
            for k in catalog.api_keys(&tenant).await? {
                let mut line = serde_json::to_value(&k)?;
                line["prefix"] = k.prefix().into();
                println!("{line}");
            }
        }
        KeyCommand::Revoke { tenant, id } => {
            let tenant = TenantId::parse(tenant)?;
            let id = id
                .strip_prefix(floe_catalog::credentials::KEY_PREFIX)
                .unwrap_or(id);
            catalog.revoke_api_key(&tenant, id, "cli").await?;
            println!("key {id} of tenant {tenant} revoked");
        }
    }
    Ok(())
}

/// `floe keys rotate`.
pub fn rotate(config: &Config, old_valid_for: Option<&str>) -> anyhow::Result<()> {
    let valid_for = match old_valid_for {
        Some(d) => floe_catalog::auth::parse_ttl(d)?,
        None => std::time::Duration::from_secs(config.auth.max_token_ttl_secs),
    };
    let path = config.signing_key_path();
    // A key file that does not exist yet is made first, so that there is a key to rotate.
    TokenAuthority::load_or_create(&path)?;
    let r = floe_catalog::auth::signing::rotate(&path, valid_for)?;
    println!("new signing key {}", r.kid);
    for (kid, until) in &r.retiring {
        let at = chrono::DateTime::from_timestamp_millis(*until)
            .map_or(until.to_string(), |t| t.to_rfc3339());
        println!("{kid} verifies until {at}");
    }
    for kid in &r.dropped {
        println!("{kid} dropped (retired)");
    }
    Ok(())
}

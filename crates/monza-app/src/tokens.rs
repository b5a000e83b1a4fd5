//! `monza token create | list | revoke`: token management on the store the server uses.
//!
//! It opens the store exactly as `monza serve` does (`DATABASE_URL`, else SQLite in
//! `MONZA_DATA_DIR`), so it works while the server runs (SQLite in WAL mode, or PostgreSQL).
//! A new token is printed once, alone on stdout, so `TOKEN=$(monza token create ...)` works;
//! everything else goes to stderr.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use monza_domain::{SystemClock, TenantId, TokenId, TokenService};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::settings::{TokenArgs, TokenCommand};
use crate::store;

/// Runs one `monza token` command; exit status 1 with one line on stderr if it fails.
pub async fn run(args: TokenArgs) -> ExitCode {
    match execute(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("monza token: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(args: TokenArgs) -> Result<()> {
    let retry = store::Retry {
        attempts: 1,
        delay: Duration::from_secs(1),
    };
    let stores = store::open_stores(args.database_url.as_ref(), &args.data_dir, &retry).await?;
    let tokens = TokenService::new(stores.tokens, Arc::new(SystemClock));
    match args.command {
        TokenCommand::Create { tenant, admin } => {
            let tenant = TenantId::new(&tenant).map_err(|e| anyhow!("--tenant: {e}"))?;
            let issued = tokens
                .create(tenant, admin)
                .await
                .map_err(|e| anyhow!("{e}"))?;
            eprintln!(
                "created {}token {} for tenant {}; it is shown once, store it now:",
                if admin { "admin " } else { "" },
                issued.token.id,
                issued.token.tenant
            );
            println!("{}", issued.reveal());
        }
        TokenCommand::List => {
            let all = tokens.list().await.map_err(|e| anyhow!("{e}"))?;
            println!(
                "{:<16}  {:<20}  {:<5}  {:<30}  REVOKED",
                "ID", "TENANT", "ADMIN", "CREATED"
            );
            for token in all {
                println!(
                    "{:<16}  {:<20}  {:<5}  {:<30}  {}",
                    token.id,
                    token.tenant,
                    if token.admin { "yes" } else { "no" },
                    rfc3339(token.created_at),
                    token.revoked_at.map_or_else(|| "-".to_owned(), rfc3339)
                );
            }
        }
        TokenCommand::Revoke { id } => {
            let id = TokenId::parse(&id).map_err(|e| anyhow!("{e}"))?;
            let token = tokens.revoke(&id).await.map_err(|e| anyhow!("{e}"))?;
            println!(
                "revoked token {} (tenant {}) at {}",
                token.id,
                token.tenant,
                token.revoked_at.map_or_else(|| "-".to_owned(), rfc3339)
            );
        }
    }
    Ok(())
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

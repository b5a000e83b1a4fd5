//! The [`TokenRepository`] port on the same database: table `api_tokens` (ids, tenants,
//! flags, times and SHA-256 hashes, never a token). Written once, compiled per backend.

use async_trait::async_trait;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use monza_domain::{
    ApiToken, Error, Result, StoredToken, TenantId, TokenHash, TokenId, TokenRepository,
};
use time::OffsetDateTime;

use super::codec::{self, Time};
use super::schema::api_tokens;
use super::{Conn, Store, specific};
use crate::error::{Tx, TxError, unique_conflict};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = api_tokens)]
#[diesel(check_for_backend(super::Backend))]
struct TokenRow {
    id: String,
    tenant: String,
    admin: bool,
    secret_hash: String,
    created_at: Time,
    revoked_at: Option<Time>,
}

impl TokenRow {
    fn new(token: &StoredToken) -> Self {
        Self {
            id: token.token.id.as_str().to_owned(),
            tenant: token.token.tenant.as_str().to_owned(),
            admin: token.token.admin,
            secret_hash: token.hash.to_hex(),
            created_at: codec::time(token.token.created_at),
            revoked_at: token.token.revoked_at.map(codec::time),
        }
    }

    fn into_domain(self) -> Result<StoredToken> {
        let stored = |e: Error| Error::internal(format!("stored token {}: {e}", self.id));
        Ok(StoredToken {
            token: ApiToken {
                id: TokenId::parse(&self.id).map_err(stored)?,
                tenant: TenantId::new(&self.tenant).map_err(stored)?,
                admin: self.admin,
                created_at: codec::from_time(self.created_at)?,
                revoked_at: self.revoked_at.map(codec::from_time).transpose()?,
            },
            hash: TokenHash::from_hex(&self.secret_hash)?,
        })
    }
}

fn not_found(id: &str) -> TxError {
    Error::not_found(format!("token {id} not found")).into()
}

async fn find(conn: &mut Conn, id: &str) -> Tx<StoredToken> {
    let row: Option<TokenRow> = api_tokens::table
        .find(id)
        .select(TokenRow::as_select())
        .first(conn)
        .await
        .optional()?;
    match row {
        Some(row) => Ok(row.into_domain()?),
        None => Err(not_found(id)),
    }
}

async fn insert(conn: &mut Conn, row: &TokenRow) -> Tx<()> {
    diesel::insert_into(api_tokens::table)
        .values(row)
        .execute(conn)
        .await
        .map_err(unique_conflict(format!("token {} already exists", row.id)))?;
    Ok(())
}

async fn insert_first(conn: &mut Conn, row: &TokenRow) -> Tx<bool> {
    // Two transactions must not both see an empty table: the backend's lock makes the
    // count and the insert one step, also against other processes.
    specific::lock_first_token(conn).await?;
    let existing: i64 = api_tokens::table.count().get_result(conn).await?;
    if existing > 0 {
        return Ok(false);
    }
    insert(conn, row).await?;
    Ok(true)
}

async fn list(conn: &mut Conn) -> Tx<Vec<ApiToken>> {
    let rows: Vec<TokenRow> = api_tokens::table
        .order((api_tokens::created_at, api_tokens::id))
        .select(TokenRow::as_select())
        .load(conn)
        .await?;
    rows.into_iter()
        .map(|r| r.into_domain().map(|t| t.token).map_err(TxError::from))
        .collect()
}

async fn revoke(conn: &mut Conn, id: &str, at: OffsetDateTime) -> Tx<ApiToken> {
    // Sets the time only if unset: the first revocation stays.
    diesel::update(
        api_tokens::table
            .find(id)
            .filter(api_tokens::revoked_at.is_null()),
    )
    .set(api_tokens::revoked_at.eq(codec::time(at)))
    .execute(conn)
    .await?;
    Ok(find(conn, id).await?.token)
}

async fn count(conn: &mut Conn) -> Tx<u64> {
    let n: i64 = api_tokens::table.count().get_result(conn).await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

#[async_trait]
impl TokenRepository for Store {
    #[tracing::instrument(skip_all, fields(token_id = %token.token.id), err(level = "debug"))]
    async fn insert_token(&self, token: &StoredToken) -> Result<()> {
        in_statement!(self, [row = TokenRow::new(token)], |c| insert(c, &row))
    }

    #[tracing::instrument(skip_all, fields(token_id = %token.token.id), err(level = "debug"))]
    async fn insert_first_token(&self, token: &StoredToken) -> Result<bool> {
        in_transaction!(self, [row = TokenRow::new(token)], |c| insert_first(
            c, &row
        ))
    }

    async fn find_token(&self, id: &TokenId) -> Result<StoredToken> {
        in_point_read!(self, [id], |c| find(c, id.as_str()))
    }

    async fn list_tokens(&self) -> Result<Vec<ApiToken>> {
        in_read!(self, [], |c| list(c))
    }

    #[tracing::instrument(skip_all, fields(token_id = %id), err(level = "debug"))]
    async fn revoke_token(&self, id: &TokenId, at: OffsetDateTime) -> Result<ApiToken> {
        in_transaction!(self, [id, at], |c| revoke(c, id.as_str(), at))
    }

    async fn count_tokens(&self) -> Result<u64> {
        in_read!(self, [], |c| count(c))
    }
}

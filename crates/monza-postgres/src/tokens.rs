//! The [`TokenRepository`] port on the same database: table `api_tokens`.

use async_trait::async_trait;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use monza_domain::{
    ApiToken, Error, Result, StoredToken, TenantId, TokenHash, TokenId, TokenRepository,
};
use time::OffsetDateTime;

use crate::error::{TxError, unique_conflict};
use crate::repository::PgSandboxRepository;
use crate::rows::micros;
use crate::schema::api_tokens;

/// Serializes first-token inserts (bootstrap) between processes (an arbitrary constant).
const BOOTSTRAP_LOCK: i64 = 0x6d6f_6e7a_615f_746b;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = api_tokens)]
#[diesel(check_for_backend(diesel::pg::Pg))]
struct TokenRow {
    id: String,
    tenant: String,
    admin: bool,
    secret_hash: String,
    created_at: OffsetDateTime,
    revoked_at: Option<OffsetDateTime>,
}

impl TokenRow {
    fn new(token: &StoredToken) -> Self {
        Self {
            id: token.token.id.as_str().to_owned(),
            tenant: token.token.tenant.as_str().to_owned(),
            admin: token.token.admin,
            secret_hash: token.hash.to_hex(),
            created_at: micros(token.token.created_at),
            revoked_at: token.token.revoked_at.map(micros),
        }
    }

    fn into_domain(self) -> Result<StoredToken> {
        let stored = |e: Error| Error::internal(format!("stored token {}: {e}", self.id));
        Ok(StoredToken {
            token: ApiToken {
                id: TokenId::parse(&self.id).map_err(stored)?,
                tenant: TenantId::new(&self.tenant).map_err(stored)?,
                admin: self.admin,
                created_at: micros(self.created_at),
                revoked_at: self.revoked_at.map(micros),
            },
            hash: TokenHash::from_hex(&self.secret_hash)?,
        })
    }
}

fn not_found(id: &str) -> TxError {
    Error::not_found(format!("token {id} not found")).into()
}

async fn find(conn: &mut AsyncPgConnection, id: &str) -> Result<Option<TokenRow>, TxError> {
    Ok(api_tokens::table
        .find(id)
        .select(TokenRow::as_select())
        .first(conn)
        .await
        .optional()?)
}

async fn insert(conn: &mut AsyncPgConnection, row: &TokenRow) -> Result<(), TxError> {
    diesel::insert_into(api_tokens::table)
        .values(row)
        .execute(conn)
        .await
        .map_err(unique_conflict(format!("token {} already exists", row.id)))?;
    Ok(())
}

#[async_trait]
impl TokenRepository for PgSandboxRepository {
    #[tracing::instrument(skip_all, fields(token_id = %token.token.id), err(level = "debug"))]
    async fn insert_token(&self, token: &StoredToken) -> Result<()> {
        let mut conn = self.conn().await?;
        Ok(insert(&mut conn, &TokenRow::new(token)).await?)
    }

    #[tracing::instrument(skip_all, fields(token_id = %token.token.id), err(level = "debug"))]
    async fn insert_first_token(&self, token: &StoredToken) -> Result<bool> {
        let row = TokenRow::new(token);
        let mut conn = self.conn().await?;
        // Under READ COMMITTED two transactions could both see an empty table: a
        // transaction-scoped advisory lock makes the count and the insert one step.
        let written = conn
            .transaction(async |conn| {
                diesel::sql_query(format!("SELECT pg_advisory_xact_lock({BOOTSTRAP_LOCK})"))
                    .execute(conn)
                    .await?;
                let existing: i64 = api_tokens::table.count().get_result(conn).await?;
                if existing > 0 {
                    return Ok::<bool, TxError>(false);
                }
                insert(conn, &row).await?;
                Ok(true)
            })
            .await?;
        Ok(written)
    }

    async fn find_token(&self, id: &TokenId) -> Result<StoredToken> {
        let mut conn = self.conn().await?;
        match find(&mut conn, id.as_str()).await? {
            Some(row) => row.into_domain(),
            None => Err(not_found(id.as_str()).into()),
        }
    }

    async fn list_tokens(&self) -> Result<Vec<ApiToken>> {
        let mut conn = self.conn().await?;
        let rows: Vec<TokenRow> = api_tokens::table
            .order((api_tokens::created_at, api_tokens::id))
            .select(TokenRow::as_select())
            .load(&mut conn)
            .await
            .map_err(TxError::from)?;
        rows.into_iter()
            .map(|r| r.into_domain().map(|t| t.token))
            .collect()
    }

    #[tracing::instrument(skip_all, fields(token_id = %id), err(level = "debug"))]
    async fn revoke_token(&self, id: &TokenId, at: OffsetDateTime) -> Result<ApiToken> {
        let mut conn = self.conn().await?;
        let id = id.as_str();
        // One statement: sets the time only if unset; COALESCE keeps the first revocation.
        let row: Option<TokenRow> =
            diesel::update(api_tokens::table.find(id))
                .set(
                    api_tokens::revoked_at.eq(diesel::dsl::sql::<
                        diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
                    >("COALESCE(revoked_at, ")
                    .bind::<diesel::sql_types::Timestamptz, _>(micros(at))
                    .sql(")")),
                )
                .returning(TokenRow::as_returning())
                .get_result(&mut conn)
                .await
                .optional()
                .map_err(TxError::from)?;
        match row {
            Some(row) => Ok(row.into_domain()?.token),
            None => Err(not_found(id).into()),
        }
    }

    async fn count_tokens(&self) -> Result<u64> {
        let mut conn = self.conn().await?;
        let n: i64 = api_tokens::table
            .count()
            .get_result(&mut conn)
            .await
            .map_err(TxError::from)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

//! The [`TokenRepository`] port on the same database: table `api_tokens`.

use async_trait::async_trait;
use diesel::prelude::*;
use monza_domain::{
    ApiToken, Error, Result, StoredToken, TenantId, TokenHash, TokenId, TokenRepository,
};
use time::OffsetDateTime;

use crate::error::{TxError, unique_conflict};
use crate::repository::SqliteSandboxRepository;
use crate::rows::{from_micros, to_micros};
use crate::schema::api_tokens;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = api_tokens)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
struct TokenRow {
    id: String,
    tenant: String,
    admin: bool,
    secret_hash: String,
    created_at: i64,
    revoked_at: Option<i64>,
}

impl TokenRow {
    fn new(token: &StoredToken) -> Self {
        Self {
            id: token.token.id.as_str().to_owned(),
            tenant: token.token.tenant.as_str().to_owned(),
            admin: token.token.admin,
            secret_hash: token.hash.to_hex(),
            created_at: to_micros(token.token.created_at),
            revoked_at: token.token.revoked_at.map(to_micros),
        }
    }

    fn into_domain(self) -> Result<StoredToken, Error> {
        let stored = |e: Error| Error::internal(format!("stored token {}: {e}", self.id));
        Ok(StoredToken {
            token: ApiToken {
                id: TokenId::parse(&self.id).map_err(stored)?,
                tenant: TenantId::new(&self.tenant).map_err(stored)?,
                admin: self.admin,
                created_at: from_micros(self.created_at)?,
                revoked_at: self.revoked_at.map(from_micros).transpose()?,
            },
            hash: TokenHash::from_hex(&self.secret_hash)?,
        })
    }
}

fn not_found(id: &str) -> TxError {
    Error::not_found(format!("token {id} not found")).into()
}

fn find(conn: &mut SqliteConnection, id: &str) -> Result<Option<TokenRow>, TxError> {
    Ok(api_tokens::table
        .find(id)
        .select(TokenRow::as_select())
        .first(conn)
        .optional()?)
}

fn insert(conn: &mut SqliteConnection, row: &TokenRow) -> Result<(), TxError> {
    diesel::insert_into(api_tokens::table)
        .values(row)
        .execute(conn)
        .map_err(unique_conflict(format!("token {} already exists", row.id)))?;
    Ok(())
}

#[async_trait]
impl TokenRepository for SqliteSandboxRepository {
    #[tracing::instrument(skip_all, fields(token_id = %token.token.id), err(level = "debug"))]
    async fn insert_token(&self, token: &StoredToken) -> Result<()> {
        let row = TokenRow::new(token);
        self.write(move |c| insert(c, &row)).await
    }

    #[tracing::instrument(skip_all, fields(token_id = %token.token.id), err(level = "debug"))]
    async fn insert_first_token(&self, token: &StoredToken) -> Result<bool> {
        let row = TokenRow::new(token);
        // The writer's `BEGIN IMMEDIATE` holds the database's write lock from the count to
        // the insert, also against other processes.
        self.write(move |c| {
            let existing: i64 = api_tokens::table.count().get_result(c)?;
            if existing > 0 {
                return Ok(false);
            }
            insert(c, &row)?;
            Ok(true)
        })
        .await
    }

    async fn find_token(&self, id: &TokenId) -> Result<StoredToken> {
        let id = id.as_str().to_owned();
        self.read(move |c| match find(c, &id)? {
            Some(row) => Ok(row.into_domain()?),
            None => Err(not_found(&id)),
        })
        .await
    }

    async fn list_tokens(&self) -> Result<Vec<ApiToken>> {
        self.read(|c| {
            let rows: Vec<TokenRow> = api_tokens::table
                .order((api_tokens::created_at, api_tokens::id))
                .select(TokenRow::as_select())
                .load(c)?;
            rows.into_iter()
                .map(|r| r.into_domain().map(|t| t.token).map_err(TxError::from))
                .collect()
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(token_id = %id), err(level = "debug"))]
    async fn revoke_token(&self, id: &TokenId, at: OffsetDateTime) -> Result<ApiToken> {
        let id = id.as_str().to_owned();
        self.write(move |c| {
            diesel::update(
                api_tokens::table
                    .find(&id)
                    .filter(api_tokens::revoked_at.is_null()),
            )
            .set(api_tokens::revoked_at.eq(to_micros(at)))
            .execute(c)?;
            match find(c, &id)? {
                Some(row) => Ok(row.into_domain()?.token),
                None => Err(not_found(&id)),
            }
        })
        .await
    }

    async fn count_tokens(&self) -> Result<u64> {
        self.read(|c| {
            let n: i64 = api_tokens::table.count().get_result(c)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }
}

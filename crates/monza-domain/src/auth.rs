//! API tokens: who a caller is, as an [`Access`].
//!
//! A token monza issues reads `monza_<id>_<secret>`: `<id>` is 16 lowercase hex digits (8
//! random bytes), public, and names the token in `monza token list` and `revoke`; `<secret>`
//! is 64 lowercase hex digits (32 bytes from the operating system's CSPRNG). The store keeps
//! the id, the tenant, the admin flag, the times and the SHA-256 of the whole token string,
//! never the token itself, and nothing here logs or displays a secret.
//!
//! Checking a bearer: its id is read from it (for an operator-chosen bootstrap token that is
//! not in monza's format, the id is derived from its hash, see [`token_id_of`]), the stored
//! token is looked up by id, and the hashes are compared in constant time.
//!
//! The hash is a single unsalted SHA-256: the secrets are 256 random bits (or an operator's
//! bootstrap token of at least [`MIN_BOOTSTRAP_LEN`] characters), so a slow password hash
//! would add nothing but latency to every request.

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::ports::{Clock, TokenRepository};
use crate::sandbox::TenantId;
use crate::service::Access;

/// The prefix of every token monza issues.
pub const TOKEN_PREFIX: &str = "monza_";
/// Hex digits of a token id.
pub const TOKEN_ID_LEN: usize = 16;
/// Hex digits of a generated secret.
const SECRET_HEX_LEN: usize = 64;
/// Shortest accepted `MONZA_BOOTSTRAP_TOKEN`.
pub const MIN_BOOTSTRAP_LEN: usize = 32;
/// Longest bearer token looked at; anything longer is malformed.
pub const MAX_TOKEN_LEN: usize = 512;

/// A token's public id: 16 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenId(String);

impl TokenId {
    /// Validates an id as typed by an operator (`monza token revoke ID`).
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if text.len() == TOKEN_ID_LEN && is_lower_hex(text) {
            Ok(Self(text.to_owned()))
        } else {
            Err(Error::invalid(format!(
                "invalid token id {text:?}: expected {TOKEN_ID_LEN} lowercase hex digits, as \
                 `monza token list` shows"
            )))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SHA-256 of a token string: what the store keeps instead of the token.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The hash of a token string.
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// 64 lowercase hex digits, as stored.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Reads a stored hash; an internal error if the store holds something else.
    pub fn from_hex(text: &str) -> Result<Self> {
        if text.len() != 64 || !is_lower_hex(text) {
            return Err(Error::internal("a stored token hash is not 64 hex digits"));
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                .map_err(|_| Error::internal("a stored token hash is not hex"))?;
        }
        Ok(Self(bytes))
    }

    /// Equality that takes the same time wherever the first difference is.
    pub fn constant_time_eq(&self, other: &Self) -> bool {
        let diff = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

/// A token as listed: everything but the secret (which is not stored anyway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// Its public id.
    pub id: TokenId,
    /// The tenant whose sandboxes it reaches.
    pub tenant: TenantId,
    /// An admin token sees and manages every tenant's sandboxes.
    pub admin: bool,
    /// When it was made.
    pub created_at: OffsetDateTime,
    /// When it was revoked; a revoked token is refused.
    pub revoked_at: Option<OffsetDateTime>,
}

/// A token as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// The listed fields.
    pub token: ApiToken,
    /// The SHA-256 of the token string.
    pub hash: TokenHash,
}

/// A token just made: the only moment its text exists. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The listed fields.
    pub token: ApiToken,
    secret: String,
}

impl IssuedToken {
    /// The full token text, `monza_<id>_<secret>`, to hand to the client once.
    pub fn reveal(&self) -> &str {
        &self.secret
    }
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &self.token)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// What [`TokenService::bootstrap`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// The store already holds a token (possibly revoked): nothing was added.
    AlreadyConfigured,
    /// The operator's `MONZA_BOOTSTRAP_TOKEN` is now an admin token (its hash, that is).
    FromSetting(ApiToken),
    /// A new admin token was generated; it must be shown to the operator now, once.
    Generated(IssuedToken),
}

/// The token id a bearer names: the `<id>` of `monza_<id>_<secret>`, or, for any other
/// string (an operator's own bootstrap token), the first 16 hex digits of its SHA-256.
pub fn token_id_of(bearer: &str) -> TokenId {
    if let Some(id) = monza_format_id(bearer) {
        return TokenId(id.to_owned());
    }
    TokenId(TokenHash::of(bearer).to_hex()[..TOKEN_ID_LEN].to_owned())
}

fn monza_format_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == TOKEN_ID_LEN
        && is_lower_hex(id)
        && secret.len() == SECRET_HEX_LEN
        && is_lower_hex(secret))
    .then_some(id)
}

/// Whether `text` could be a bearer token at all: 1 to [`MAX_TOKEN_LEN`] characters of the
/// RFC 6750 `b64token` alphabet (`A-Z a-z 0-9 - . _ ~ + /`, trailing `=`).
fn is_token_text(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_TOKEN_LEN
        && text
            .trim_end_matches('=')
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// Checks an operator-chosen bootstrap token: monza's own format, or at least
/// [`MIN_BOOTSTRAP_LEN`] characters of the bearer alphabet (`openssl rand -hex 32` fits).
pub fn validate_bootstrap_token(text: &str) -> Result<()> {
    if monza_format_id(text).is_some() {
        return Ok(());
    }
    if text.len() < MIN_BOOTSTRAP_LEN || !is_token_text(text) {
        return Err(Error::invalid(format!(
            "MONZA_BOOTSTRAP_TOKEN must be {MIN_BOOTSTRAP_LEN} to {MAX_TOKEN_LEN} characters of \
             A-Z a-z 0-9 - . _ ~ + / (for example the output of `openssl rand -hex 32`), or a \
             token in monza's format monza_<16 hex>_<64 hex>"
        )));
    }
    Ok(())
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)
        .map_err(|e| Error::internal(format!("the system's random source failed: {e}")))?;
    Ok(hex(&buf))
}

/// A new token in monza's format, with its listed fields.
fn generate(
    tenant: TenantId,
    admin: bool,
    now: OffsetDateTime,
) -> Result<(IssuedToken, TokenHash)> {
    let id = TokenId(random_hex(TOKEN_ID_LEN / 2)?);
    let secret = format!("{TOKEN_PREFIX}{id}_{}", random_hex(SECRET_HEX_LEN / 2)?);
    let hash = TokenHash::of(&secret);
    let token = ApiToken {
        id,
        tenant,
        admin,
        created_at: now,
        revoked_at: None,
    };
    Ok((IssuedToken { token, secret }, hash))
}

/// The message for every bearer that does not match a stored token, whatever the reason,
/// so a caller learns nothing about which ids exist.
const INVALID: &str = "the bearer token is not valid";

/// The token use cases: authenticate a bearer, issue, list, revoke, bootstrap.
#[derive(Clone)]
pub struct TokenService {
    repo: Arc<dyn TokenRepository>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for TokenService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenService").finish_non_exhaustive()
    }
}

impl TokenService {
    /// Wires the use cases to the token store and the clock.
    pub fn new(repo: Arc<dyn TokenRepository>, clock: Arc<dyn Clock>) -> Self {
        Self { repo, clock }
    }

    /// Who a bearer token is: [`Access::Admin`] or [`Access::Tenant`]. Malformed, unknown,
    /// wrong-secret and revoked tokens are [`Error::Unauthorized`]; a store that cannot be
    /// reached is its own error (the caller is not to blame).
    pub async fn authenticate(&self, bearer: &str) -> Result<Access> {
        if !is_token_text(bearer) {
            return Err(Error::unauthorized(
                "the bearer token is malformed: expected `Authorization: Bearer <token>` with \
                 the token monza issued",
            ));
        }
        let id = token_id_of(bearer);
        let stored = match self.repo.find_token(&id).await {
            Ok(stored) => stored,
            Err(Error::NotFound(_)) => return Err(Error::unauthorized(INVALID)),
            Err(e) => return Err(e),
        };
        if !stored.hash.constant_time_eq(&TokenHash::of(bearer)) {
            return Err(Error::unauthorized(INVALID));
        }
        if stored.token.revoked_at.is_some() {
            return Err(Error::unauthorized(format!(
                "token {id} has been revoked: ask the operator for a new one"
            )));
        }
        Ok(if stored.token.admin {
            Access::Admin
        } else {
            Access::Tenant(stored.token.tenant)
        })
    }

    /// Makes a new token for `tenant`. Its text is in the result, and nowhere else.
    #[tracing::instrument(skip_all, fields(tenant = %tenant, admin), err(level = "info"))]
    pub async fn create(&self, tenant: TenantId, admin: bool) -> Result<IssuedToken> {
        let (issued, hash) = generate(tenant, admin, self.clock.now())?;
        self.repo
            .insert_token(&StoredToken {
                token: issued.token.clone(),
                hash,
            })
            .await?;
        tracing::info!(token_id = %issued.token.id, "token created");
        Ok(issued)
    }

    /// Every token, oldest first, without secrets.
    pub async fn list(&self) -> Result<Vec<ApiToken>> {
        self.repo.list_tokens().await
    }

    /// Revokes a token: from now on it is refused. Revoking again keeps the first time.
    #[tracing::instrument(skip_all, fields(token_id = %id), err(level = "info"))]
    pub async fn revoke(&self, id: &TokenId) -> Result<ApiToken> {
        match self.repo.revoke_token(id, self.clock.now()).await {
            Err(Error::NotFound(_)) => Err(Error::not_found(format!("token {id} not found"))),
            other => other,
        }
    }

    /// First start: if the store holds no token at all (revoked ones count), adds an admin
    /// token in the default tenant, either `given` (`MONZA_BOOTSTRAP_TOKEN`, validated, only
    /// its hash stored) or a generated one the caller must show once. Atomic: two servers
    /// starting together on one store add one token.
    pub async fn bootstrap(&self, given: Option<&str>) -> Result<Bootstrap> {
        let now = self.clock.now();
        let tenant = TenantId::default_tenant();
        let (stored, outcome) = match given {
            Some(text) => {
                validate_bootstrap_token(text)?;
                let token = ApiToken {
                    id: token_id_of(text),
                    tenant,
                    admin: true,
                    created_at: now,
                    revoked_at: None,
                };
                let stored = StoredToken {
                    token: token.clone(),
                    hash: TokenHash::of(text),
                };
                (stored, Bootstrap::FromSetting(token))
            }
            None => {
                let (issued, hash) = generate(tenant, true, now)?;
                let stored = StoredToken {
                    token: issued.token.clone(),
                    hash,
                };
                (stored, Bootstrap::Generated(issued))
            }
        };
        if self.repo.insert_first_token(&stored).await? {
            Ok(outcome)
        } else {
            Ok(Bootstrap::AlreadyConfigured)
        }
    }
}

#[cfg(test)]
mod tests;

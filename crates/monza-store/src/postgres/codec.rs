//! How PostgreSQL keeps the domain's values: `uuid`, `timestamptz` (microseconds: finer
//! precision is truncated before writing, the same way as on SQLite) and `jsonb`.

use monza_domain::Error;
use time::OffsetDateTime;
use uuid::Uuid;

/// The column types, as `schema` names them.
pub(crate) mod sql {
    pub(crate) type IdSql = diesel::sql_types::Uuid;
    pub(crate) type TimeSql = diesel::sql_types::Timestamptz;
    pub(crate) type JsonSql = diesel::sql_types::Jsonb;
}

pub(crate) type Id = Uuid;
pub(crate) type Time = OffsetDateTime;
pub(crate) type Json = serde_json::Value;

pub(crate) fn id(id: Uuid) -> Id {
    id
}

pub(crate) fn uuid(id: &Id) -> Result<Uuid, Error> {
    Ok(*id)
}

/// `at` in UTC, truncated to whole microseconds (what `timestamptz` keeps).
pub(crate) fn time(at: OffsetDateTime) -> Time {
    let at = at.to_offset(time::UtcOffset::UTC);
    let nanos = at.nanosecond();
    at.replace_nanosecond(nanos - nanos % 1_000).unwrap_or(at)
}

pub(crate) fn from_time(at: Time) -> Result<OffsetDateTime, Error> {
    Ok(time(at))
}

pub(crate) fn json(value: &impl serde::Serialize) -> Result<Json, Error> {
    serde_json::to_value(value).map_err(|e| Error::internal(format!("encoding JSON: {e}")))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    value: Json,
    what: &str,
) -> Result<T, Error> {
    serde_json::from_value(value).map_err(|e| Error::internal(format!("stored {what}: {e}")))
}

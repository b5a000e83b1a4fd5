//! How SQLite keeps the domain's values: ids as lowercase hyphenated UUID text, timestamps
//! as `i64` microseconds since the Unix epoch in UTC (finer precision is truncated towards
//! the past), JSON as text.

use monza_domain::Error;
use time::OffsetDateTime;
use uuid::Uuid;

/// The column types, as `schema` names them.
pub(crate) mod sql {
    pub(crate) type IdSql = diesel::sql_types::Text;
    pub(crate) type TimeSql = diesel::sql_types::BigInt;
    pub(crate) type JsonSql = diesel::sql_types::Text;
}

pub(crate) type Id = String;
pub(crate) type Time = i64;
pub(crate) type Json = String;

pub(crate) fn id(id: Uuid) -> Id {
    id.hyphenated().to_string()
}

pub(crate) fn uuid(text: &Id) -> Result<Uuid, Error> {
    Uuid::parse_str(text).map_err(|e| Error::internal(format!("stored id {text:?}: {e}")))
}

/// `at` as stored: whole microseconds since the epoch, rounded towards the past.
pub(crate) fn time(at: OffsetDateTime) -> Time {
    let micros = at.unix_timestamp_nanos().div_euclid(1_000);
    i64::try_from(micros).unwrap_or(if micros < 0 { i64::MIN } else { i64::MAX })
}

pub(crate) fn from_time(micros: Time) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .map_err(|e| Error::internal(format!("stored timestamp {micros} out of range: {e}")))
}

pub(crate) fn json(value: &impl serde::Serialize) -> Result<Json, Error> {
    serde_json::to_string(value).map_err(|e| Error::internal(format!("encoding JSON: {e}")))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    text: Json,
    what: &str,
) -> Result<T, Error> {
    serde_json::from_str(&text).map_err(|e| Error::internal(format!("stored {what}: {e}")))
}

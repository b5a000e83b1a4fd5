//! The `postgres://` URL: parsed once, shown only without its password.

use std::fmt;

use monza_domain::Error;
use url::Url;

/// A PostgreSQL connection URL (`postgres://` or `postgresql://`).
///
/// `Display` and `Debug` never show the password: use them in logs and errors.
#[derive(Clone)]
pub struct PgUrl {
    url: Url,
}

/// Parses a `postgres://user:password@host:port/database` (or `postgresql://`) URL.
pub fn parse_postgres_url(url: &str) -> Result<PgUrl, Error> {
    PgUrl::parse(url)
}

impl PgUrl {
    /// Parses and checks the scheme; other schemes are invalid input.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let scheme = url.split_once("://").map(|(scheme, _)| scheme);
        if !matches!(scheme, Some("postgres" | "postgresql")) {
            return Err(Error::invalid(
                "not a PostgreSQL URL: expected postgres://USER:PASSWORD@HOST:PORT/DATABASE \
                 (or postgresql://)",
            ));
        }
        // The parser's messages never quote the input, so the password cannot leak.
        let url = Url::parse(url.trim())
            .map_err(|e| Error::invalid(format!("invalid PostgreSQL URL: {e}")))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(Error::invalid(
                "invalid PostgreSQL URL: it names no host (postgres://USER:PASSWORD@HOST/DATABASE)",
            ));
        }
        Ok(Self { url })
    }

    /// The host.
    pub fn host(&self) -> &str {
        self.url.host_str().unwrap_or_default()
    }

    /// The port (5432 if not given).
    pub fn port(&self) -> u16 {
        self.url.port().unwrap_or(5432)
    }

    /// The database name (PostgreSQL's default, the user name, if not given).
    pub fn database(&self) -> String {
        let path = self.url.path().trim_start_matches('/');
        if path.is_empty() {
            self.user().to_owned()
        } else {
            decode(path)
        }
    }

    /// The user name (`postgres` if not given).
    pub fn user(&self) -> &str {
        match self.url.username() {
            "" => "postgres",
            user => user,
        }
    }

    /// The same server, another database (tests create one per test).
    pub fn with_database(&self, database: &str) -> Self {
        let mut url = self.url.clone();
        url.set_path(&format!("/{database}"));
        Self { url }
    }

    /// The URL with the password, to connect with. Never log it.
    pub fn expose(&self) -> &str {
        self.url.as_str()
    }

    /// The password as the server sees it, to scrub it from messages; `None` if absent.
    pub(crate) fn password(&self) -> Option<String> {
        self.url.password().map(decode).filter(|p| !p.is_empty())
    }

    /// `host:port, database "name"`: where, for error messages.
    pub fn describe(&self) -> String {
        format!(
            "PostgreSQL at {}:{}, database \"{}\"",
            self.host(),
            self.port(),
            self.database()
        )
    }

    /// Removes the password (raw or percent-encoded) from a message that might echo it.
    pub(crate) fn scrub(&self, message: &str) -> String {
        let mut message = message.to_owned();
        if let Some(raw) = self.url.password().filter(|p| !p.is_empty()) {
            message = message.replace(raw, "***");
        }
        if let Some(decoded) = self.password() {
            message = message.replace(&decoded, "***");
        }
        message
    }
}

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.url.clone();
        if shown.password().is_some() {
            // Cannot fail for a URL with a host, which `parse` ensures.
            let _ = shown.set_password(Some("***"));
        }
        f.write_str(shown.as_str())
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PgUrl").field(&self.to_string()).finish()
    }
}

//! A PostgreSQL database of its own for a test or a benchmark (the server benchmark includes
//! this file by path).
#![allow(dead_code, clippy::unwrap_used)]

use std::process::Command;

pub const PG_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/postgres";

/// The PostgreSQL server's admin database: `TEST_DATABASE_URL`, or the local one.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| PG_URL.into())
}

/// Runs one SQL statement with `psql`: its stderr when it fails.
pub fn psql(url: &str, sql: &str) -> Result<(), String> {
    let out = Command::new("psql")
        .args([url, "-qc", sql])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A database of its own on the test server, dropped (with its connections) at the end.
#[derive(Debug)]
pub struct PgDatabase {
    admin_url: String,
    name: String,
}

impl PgDatabase {
    /// `None` (a loud skip) outside CI when PostgreSQL does not answer.
    pub fn create() -> Option<Self> {
        let admin_url = admin_url();
        let name = format!("monza_test_{}", uuid::Uuid::new_v4().simple());
        let created = psql(&admin_url, &format!("CREATE DATABASE {name}"));
        monza_domain::testing::require("PostgreSQL (via psql)", created)?;
        Some(Self { admin_url, name })
    }

    pub fn url(&self) -> String {
        match self.admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{}", self.name),
            None => self.admin_url.clone(),
        }
    }

    /// The `monza.deployment` label a server on this database derives when none is set.
    pub fn deployment(&self) -> String {
        let authority = self
            .admin_url
            .rsplit_once('@')
            .map_or(self.admin_url.as_str(), |(_, a)| a);
        let host_port = authority.split('/').next().unwrap();
        format!("postgres://{host_port}/{}", self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = psql(&self.admin_url, &sql) {
            eprintln!("could not drop the test database {}: {e}", self.name);
        }
    }
}

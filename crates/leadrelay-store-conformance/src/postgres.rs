//! Databases of a test's own on the PostgreSQL server at `LEADRELAY_TEST_POSTGRES_URL` (by
//! default the local one, `postgres://root@127.0.0.1:5432/test`), created for the test and
//! dropped afterwards.

use sqlx::{Connection, PgConnection};

/// The server tests create their databases on.
pub fn server_url() -> String {
    std::env::var("LEADRELAY_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
}

/// A database of the test's own; [`TestDatabase::drop`] removes it.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let server = server_url();
        let mut admin = PgConnection::connect(&server).await.unwrap_or_else(|error| {
            panic!(
                "PostgreSQL is not reachable at {server} ({error}); start it, or point LEADRELAY_TEST_POSTGRES_URL \
                 at a server where this user may create databases"
            )
        });
        let suffix: String = leadrelay_domain::ids::LeadId::generate()
            .as_str()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_lowercase();
        let name = format!("leadrelay_test_{suffix}");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create database");
        let _ = admin.close().await;
        let (base, _) = server.rsplit_once('/').expect("a database URL ends in /DATABASE");
        Self { url: format!("{base}/{name}"), name }
    }

    pub async fn drop(self) {
        let mut admin = PgConnection::connect(&server_url()).await.expect("connect");
        sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .execute(&mut admin)
            .await
            .expect("drop database");
    }
}

//! The real servers the integration tests talk to: `scripts/services.sh` starts them and
//! `scripts/services.sh env` names them in `STREAMREC_TEST_*` variables (`make test` does both).

/// A `STREAMREC_TEST_*` variable (a service's address, a test tool's path) that `scripts/services.sh
/// env` sets; fails the test, saying how to start the services, when it is not set.
pub fn test_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `make test`, which starts the servers")
    })
}

/// `prefix` followed by an id no other test (or earlier run) has: topics, key prefixes, users.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple())
}

/// A fresh database on the test PostgreSQL server (`STREAMREC_TEST_POSTGRES`); returns its URL.
pub async fn fresh_database() -> String {
    let base = test_env("STREAMREC_TEST_POSTGRES");
    let admin = sqlx::PgPool::connect(&base)
        .await
        .expect("postgres reachable");
    let name = unique("t_");
    // `name` is our own UUID hex: safe to interpolate (CREATE DATABASE takes no parameters).
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create database");
    let (server, _) = base.rsplit_once('/').expect("url with a database");
    format!("{server}/{name}")
}

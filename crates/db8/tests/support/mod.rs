//! Test support for the PostgreSQL tests: a throwaway database per test, the
//! shared/exclusive service lock of the workspace convention, queries, change feed
//! events and certificates.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use config8::{DatabaseSettings, Secret, SslMode};
use db8::DomainChange;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio_postgres::NoTls;
use tokio_postgres::types::{FromSqlOwned, ToSql};

/// The file every service test locks: shared for normal tests, exclusive for tests that
/// restart a service.
pub const SERVICE_LOCK: &str = "/tmp/cptm8-services.lock";

/// A held service lock (released on drop).
pub struct ServiceLock(File);

impl ServiceLock {
    /// Opens the lock file and waits (on a blocking thread) until `lock` has locked it.
    async fn take(lock: fn(&File) -> std::io::Result<()>, what: &'static str) -> ServiceLock {
        tokio::task::spawn_blocking(move || {
            let f = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(SERVICE_LOCK)
                .expect("open the service lock file");
            lock(&f).expect(what);
            ServiceLock(f)
        })
        .await
        .unwrap()
    }

    /// Shared: the services stay up while held.
    pub async fn shared() -> ServiceLock {
        Self::take(File::lock_shared, "shared service lock").await
    }

    /// Exclusive: this test may restart services.
    pub async fn exclusive() -> ServiceLock {
        Self::take(File::lock, "exclusive service lock").await
    }
}

/// Settings for database `db` on the local server.
pub fn settings(db: &str) -> DatabaseSettings {
    DatabaseSettings {
        location: "127.0.0.1".into(),
        port: 5432,
        schema: "public".into(),
        database: db.into(),
        username: "postgres".into(),
        password: Secret::new("not-used-with-trust-auth"),
        sslmode: SslMode::Disable,
        sslrootcert: None::<PathBuf>,
        max_connections: 4,
        min_connections: 0,
        connection_timeout: Duration::from_secs(10),
        retry_attempts: 3,
        retry_delay: Duration::from_millis(200),
        migrate_on_start: true,
    }
}

/// An admin connection to database `db`.
pub async fn admin(db: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port=5432 user=postgres dbname={db}"),
        NoTls,
    )
    .await
    .expect("admin connection");
    tokio::spawn(conn);
    client
}

/// A database created for one test and dropped (with its sessions) afterwards.
pub struct TestDb {
    pub name: String,
    _lock: Option<ServiceLock>,
}

impl TestDb {
    /// A new empty database, holding the shared service lock.
    pub async fn create() -> TestDb {
        let lock = ServiceLock::shared().await;
        Self::create_with(Some(lock)).await
    }

    /// A new empty database; `lock` is held until the database is dropped.
    pub async fn create_with(lock: Option<ServiceLock>) -> TestDb {
        let name = format!("cptm8_test_{}", uuid::Uuid::new_v4().simple());
        let admin = admin("postgres").await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        TestDb { name, _lock: lock }
    }

    pub fn settings(&self) -> DatabaseSettings {
        settings(&self.name)
    }

    /// An admin connection to this database.
    pub async fn admin(&self) -> tokio_postgres::Client {
        admin(&self.name).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A runtime of its own: drop may run inside or outside one.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                for _ in 0..50 {
                    let admin = admin("postgres").await;
                    match admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await
                    {
                        Ok(()) => return,
                        Err(e) => {
                            eprintln!("dropping {name}: {e:?}; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            })
        });
        let _ = dropped.join();
    }
}

/// Polls `check` until it returns `Some`, failing after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first column of the one row `sql` returns.
pub async fn value<T: FromSqlOwned>(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> T {
    client.query_one(sql, params).await.unwrap().get(0)
}

/// The first column of every row `sql` returns.
pub async fn column<T: FromSqlOwned>(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Vec<T> {
    client
        .query(sql, params)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The server's certificate file, checking that the server has TLS on.
pub async fn server_certificate(db: &TestDb) -> PathBuf {
    let admin = db.admin().await;
    let ssl: String = value(&admin, "SHOW ssl", &[]).await;
    assert_eq!(ssl, "on", "this test needs a server with TLS enabled");
    let file: String = value(&admin, "SHOW ssl_cert_file", &[]).await;
    file.into()
}

/// A new self-signed certificate for `/CN=<cn>`, made with `openssl` in `dir`
/// (`other-ca.pem`, its key `other-ca.key`): a root that did not sign the server's
/// certificate. Returns the certificate's path.
pub fn other_root(dir: &Path, cn: &str) -> PathBuf {
    let cert = dir.join("other-ca.pem");
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .arg("-subj")
        .arg(format!("/CN={cn}"))
        .arg("-keyout")
        .arg(dir.join("other-ca.key"))
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl is needed by this test");
    assert!(made.success());
    cert
}

/// The next event of a change feed, waited for at most `within` (a panic otherwise);
/// `None` when the feed has ended.
pub async fn next_event(
    events: &mut BoxStream<'static, DomainChange>,
    within: Duration,
) -> Option<DomainChange> {
    tokio::time::timeout(within, events.next())
        .await
        .unwrap_or_else(|_| panic!("no change feed event within {within:?}"))
}

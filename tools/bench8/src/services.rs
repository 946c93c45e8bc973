//! The local PostgreSQL and RabbitMQ (the same the integration tests use): the
//! service lock, fresh databases and vhosts, and connections to them.
//!
//! Every benchmark holds a shared lock on `/tmp/cptm8-services.lock` while it uses a
//! service, and the one that stops RabbitMQ an exclusive one, as every test does.

use std::fs::{File, OpenOptions};
use std::process::Command;
use std::time::{Duration, Instant};

use amqprs::connection::{Connection, OpenConnectionArguments};
use tokio_postgres::{Client, NoTls};

use crate::report::Failure;

/// The lock file shared with every test (see docs/ARCHITECTURE.md).
pub const LOCK_FILE: &str = "/tmp/cptm8-services.lock";
/// PostgreSQL host.
pub const PG_HOST: &str = "127.0.0.1";
/// PostgreSQL port.
pub const PG_PORT: u16 = 5432;
/// PostgreSQL user (trust authentication).
pub const PG_USER: &str = "postgres";
/// RabbitMQ host.
pub const AMQP_HOST: &str = "127.0.0.1";
/// RabbitMQ port.
pub const AMQP_PORT: u16 = 5672;
/// RabbitMQ user.
pub const AMQP_USER: &str = "guest";
/// RabbitMQ password (the local development broker's).
pub const AMQP_PASSWORD: &str = "guest";

/// A held lock on [`LOCK_FILE`]; released on drop (closing the file).
pub struct ServiceLock {
    _file: File,
}

/// Takes the shared lock, waiting at most `wait` for a disruptive test to finish.
pub async fn lock_shared(wait: Duration) -> Result<ServiceLock, Failure> {
    lock(false, wait).await
}

/// Takes the exclusive lock, waiting at most `wait` for the tests holding it shared.
pub async fn lock_exclusive(wait: Duration) -> Result<ServiceLock, Failure> {
    lock(true, wait).await
}

async fn lock(exclusive: bool, wait: Duration) -> Result<ServiceLock, Failure> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(LOCK_FILE)
        .map_err(|e| Failure::Error(format!("cannot open {LOCK_FILE}: {e}")))?;
    let deadline = Instant::now() + wait;
    loop {
        let locked = if exclusive {
            file.try_lock()
        } else {
            file.try_lock_shared()
        };
        match locked {
            Ok(()) => return Ok(ServiceLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let secs = wait.as_secs();
                return Err(Failure::Error(if exclusive {
                    format!(
                        "could not take {LOCK_FILE} exclusively within {secs}s (tests are using the services)"
                    )
                } else {
                    format!(
                        "{LOCK_FILE} stayed locked exclusively for {secs}s (a test restarting a service?)"
                    )
                }));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Failure::Error(format!("locking {LOCK_FILE}: {e}")));
            }
        }
    }
}

/// A short random suffix for database, vhost and queue names.
pub fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

/// Connects to database `db` as [`PG_USER`].
pub async fn pg_connect(db: &str) -> Result<Client, Failure> {
    let conn_str = format!(
        "host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={db} connect_timeout=10 application_name=bench8"
    );
    let (client, connection) = tokio_postgres::connect(&conn_str, NoTls)
        .await
        .map_err(|e| {
            Failure::Error(format!(
                "cannot connect to PostgreSQL at {PG_HOST}:{PG_PORT} (user {PG_USER}, database {db}): {}",
                crate::report::error_chain(&e)
            ))
        })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A database created for one benchmark, dropped by [`TempDatabase::drop_now`].
pub struct TempDatabase {
    /// Its name (`bench_<random>`).
    pub name: String,
}

impl TempDatabase {
    /// Runs `measure` on a fresh database under the shared service lock (waiting at
    /// most 10 minutes for it), and drops the database afterwards whatever happened.
    pub async fn with<T>(
        measure: impl AsyncFnOnce(&TempDatabase) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let _lock = lock_shared(Duration::from_secs(600)).await?;
        let db = TempDatabase::create().await?;
        let result = measure(&db).await;
        db.drop_now().await;
        result
    }

    /// Creates `bench_<random>`.
    pub async fn create() -> Result<TempDatabase, Failure> {
        let name = format!("bench_{}", unique_suffix());
        let admin = pg_connect("postgres").await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| Failure::Error(format!("CREATE DATABASE {name}: {e}")))?;
        Ok(TempDatabase { name })
    }

    /// A client of this database.
    pub async fn client(&self) -> Result<Client, Failure> {
        pg_connect(&self.name).await
    }

    /// Settings for db8 pointing at this database.
    pub fn settings(&self) -> config8::DatabaseSettings {
        config8::DatabaseSettings {
            location: PG_HOST.into(),
            port: PG_PORT,
            database: self.name.clone(),
            username: PG_USER.into(),
            ..config8::DatabaseSettings::default()
        }
    }

    /// Drops the database (terminating leftover sessions); errors are printed, not
    /// returned, since this runs on every exit path.
    pub async fn drop_now(self) {
        let result = async {
            let admin = pg_connect("postgres").await?;
            admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .await
                .map_err(Failure::from)
        }
        .await;
        if let Err(e) = result {
            eprintln!(
                "bench8: warning: could not drop database {}: {e:?}",
                self.name
            );
        }
    }
}

/// Runs `rabbitmqctl ARGS`; the error holds its output.
pub fn rabbitmqctl(args: &[&str]) -> Result<String, Failure> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|e| {
            Failure::Error(format!(
                "cannot run rabbitmqctl (is RabbitMQ installed and are we root?): {e}"
            ))
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Failure::Error(format!(
            "rabbitmqctl {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )))
    }
}

/// A vhost created for one benchmark (user [`AMQP_USER`] has every right on it),
/// deleted by [`TempVhost::delete_now`].
pub struct TempVhost {
    /// Its name (`bench8-<random>`).
    pub name: String,
}

impl TempVhost {
    /// Creates `bench8-<random>` and grants [`AMQP_USER`] every right on it.
    pub fn create() -> Result<TempVhost, Failure> {
        let name = format!("bench8-{}", unique_suffix());
        rabbitmqctl(&["-q", "add_vhost", &name])?;
        let vhost = TempVhost { name };
        if let Err(e) = rabbitmqctl(&[
            "-q",
            "set_permissions",
            "-p",
            &vhost.name,
            AMQP_USER,
            ".*",
            ".*",
            ".*",
        ]) {
            vhost.delete_now();
            return Err(e);
        }
        Ok(vhost)
    }

    /// Deletes the vhost and everything in it; errors are printed.
    pub fn delete_now(self) {
        if let Err(e) = rabbitmqctl(&["-q", "delete_vhost", &self.name]) {
            eprintln!(
                "bench8: warning: could not delete vhost {}: {e:?}",
                self.name
            );
        }
    }
}

/// Settings for amqp8 pointing at `vhost` of the local broker, otherwise the defaults
/// a user gets.
pub fn rabbit_settings(vhost: &str) -> config8::RabbitMqSettings {
    config8::RabbitMqSettings {
        location: AMQP_HOST.into(),
        port: AMQP_PORT,
        username: AMQP_USER.into(),
        password: config8::Secret::new(AMQP_PASSWORD),
        vhost: vhost.into(),
        ..config8::RabbitMqSettings::default()
    }
}

/// A raw amqprs connection to `vhost`.
pub async fn amqp_connect(vhost: &str) -> Result<Connection, Failure> {
    let mut args = OpenConnectionArguments::new(AMQP_HOST, AMQP_PORT, AMQP_USER, AMQP_PASSWORD);
    args.virtual_host(vhost);
    args.connection_name("bench8-raw");
    Connection::open(&args).await.map_err(|e| {
        Failure::Error(format!(
            "cannot connect to RabbitMQ at {AMQP_HOST}:{AMQP_PORT} vhost {vhost:?}: {e}"
        ))
    })
}

//! Support of the security tests (built on `common`): canary secrets, a throwaway
//! PostgreSQL server with password authentication and without TLS (the shared one
//! trusts every local connection and has TLS on, so neither a wrong password nor a
//! server without TLS can be shown on it), a temporary RabbitMQ user with a canary
//! password, and a TLS terminator in front of the shared RabbitMQ.
//!
//! Nothing here changes the shared servers beyond adding (and removing) one RabbitMQ
//! user with a unique name.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use config8::{DatabaseSettings, RabbitMqSettings, Secret, SslMode};

use crate::common::{free_port, run};

/// Every canary starts with this: it must never be seen in an output.
pub const CANARY: &str = "S3cr3t-canary";

/// A distinctive secret for one use.
pub fn canary(what: &str) -> String {
    format!("{CANARY}-{what}-{}", uuid::Uuid::new_v4().simple())
}

/// Fails the test when `text` holds a canary.
#[track_caller]
pub fn assert_no_canary(what: &str, text: &str) {
    assert!(
        !text.contains(CANARY),
        "a secret leaked into {what}: {text}"
    );
}

/// Waits for `cond` until `limit`, polling.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Bounds a connection attempt (or any other step) to 120 s: a hang is a failure of
/// its own.
pub async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

/// The PostgreSQL server programs (the newest installed major version).
fn pg_bin(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join(name).exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("initdb installed").join(name)
}

/// The PostgreSQL server program `name` run as the user postgres on the data
/// directory `data`.
fn as_postgres(name: &str, data: &Path) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"])
        .arg(pg_bin(name))
        .arg("-D")
        .arg(data);
    cmd
}

/// A PostgreSQL server of its own, in a temporary directory, on a free port of
/// 127.0.0.1: superuser `postgres` with a password (SCRAM), TLS off. Stopped and
/// deleted on drop.
pub struct ThrowawayPg {
    pub port: u16,
    pub password: String,
    dir: tempfile::TempDir,
}

impl ThrowawayPg {
    pub fn start() -> ThrowawayPg {
        let password = canary("pg");
        let dir = tempfile::Builder::new()
            .prefix("cptm8-sec-pg-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("pw"), &password).unwrap();
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path()));
        let data = dir.path().join("data");
        run(as_postgres("initdb", &data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
            ])
            .arg(format!("--pwfile={}", dir.path().join("pw").display()))
            .stdout(Stdio::null()));
        let port = free_port();
        run(as_postgres("pg_ctl", &data)
            .arg("-l")
            .arg(dir.path().join("server.log"))
            .arg("-o")
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c ssl=off -c fsync=off",
                dir.path().display()
            ))
            .args(["-w", "-t", "120", "start"])
            .stdout(Stdio::null()));
        ThrowawayPg {
            port,
            password,
            dir,
        }
    }

    /// Settings for this server with `password`, one quick attempt.
    pub fn settings(&self, password: &str) -> DatabaseSettings {
        DatabaseSettings {
            location: "127.0.0.1".into(),
            port: self.port,
            schema: "public".into(),
            database: "postgres".into(),
            username: "postgres".into(),
            password: Secret::new(password),
            sslmode: SslMode::Disable,
            sslrootcert: None,
            max_connections: 2,
            min_connections: 0,
            connection_timeout: Duration::from_secs(10),
            retry_attempts: 1,
            retry_delay: Duration::from_millis(50),
            migrate_on_start: false,
        }
    }

    /// The server's own log (which, unlike ours, is not checked for secrets).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Stops the server (fast shutdown), as a database outage.
    pub fn stop(&self) {
        self.stop_in("fast");
    }

    /// `pg_ctl stop` in shutdown `mode`, waiting at most 60 s; the outcome ignored.
    fn stop_in(&self, mode: &str) {
        let _ = as_postgres("pg_ctl", &self.dir.path().join("data"))
            .args(["-m", mode, "-w", "-t", "60", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ThrowawayPg {
    fn drop(&mut self) {
        self.stop_in("immediate");
    }
}

/// A user of the shared RabbitMQ with a canary password and full rights on `/`,
/// deleted on drop. Needs the shared service lock.
pub struct RabbitUser {
    pub name: String,
    pub password: String,
}

impl RabbitUser {
    pub fn create() -> RabbitUser {
        let name = format!("cptm8_sec_{}", uuid::Uuid::new_v4().simple());
        let password = canary("mq");
        run(Command::new("rabbitmqctl").args(["add_user", &name, &password]));
        run(Command::new("rabbitmqctl").args([
            "set_permissions",
            "-p",
            "/",
            &name,
            ".*",
            ".*",
            ".*",
        ]));
        RabbitUser { name, password }
    }
}

impl Drop for RabbitUser {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Settings for the shared RabbitMQ (or `port`) as `user`/`password`, one attempt,
/// a short wait.
pub fn rabbit_settings(user: &str, password: &str, port: u16) -> RabbitMqSettings {
    let mut s = RabbitMqSettings {
        location: "127.0.0.1".into(),
        port,
        username: user.into(),
        password: Secret::new(password),
        ..Default::default()
    };
    s.pool.retry_attempts = 1;
    s.pool.retry_delay = Duration::from_millis(50);
    s.pool.connection_timeout = Duration::from_secs(5);
    s.pool.min_connections = 1;
    s.pool.max_connections = 2;
    s
}

/// A self-signed CA and a server certificate it signed for the address 127.0.0.1 (but
/// not `localhost`), in a temporary directory.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    pub fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let openssl = |args: &[&str]| {
            run(Command::new("openssl")
                .current_dir(dir.path())
                .args(args)
                .stderr(Stdio::null()));
        };
        // A self-signed CA: `<name>.key` and `<name>.pem`.
        let ca = |name: &str, subject: &str| {
            let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
            openssl(&[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", subject,
                "-keyout", &key, "-out", &pem,
            ]);
        };
        ca("ca", "/CN=cptm8 test CA");
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            p("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ]);
        // A CA that signed nothing here.
        ca("other", "/CN=other CA");
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// `socat` terminating TLS on a free port of 127.0.0.1 and forwarding the plain
/// bytes to `127.0.0.1:target`. Killed on drop.
pub struct TlsTerminator {
    pub port: u16,
    child: Child,
}

impl TlsTerminator {
    pub fn start(certs: &Certs, target: u16) -> TlsTerminator {
        let port = free_port();
        let child = Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
                certs.path("server.pem").display(),
                certs.path("server.key").display()
            ))
            .arg(format!("TCP:127.0.0.1:{target}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat installed");
        wait_until(Duration::from_secs(30), "socat to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        TlsTerminator { port, child }
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

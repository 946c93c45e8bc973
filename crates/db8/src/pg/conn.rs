//! Connecting: the driver configuration built from [`DatabaseSettings`], TLS as libpq's
//! `sslmode`, dedicated (unpooled) connections, and the translation of driver errors to
//! [`DbError`] without credentials.

use std::error::Error as _;
use std::time::Duration;

use config8::{DatabaseSettings, SslMode};
use postgres_native_tls::MakeTlsConnector;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, Config};

use crate::error::DbError;

/// Everything needed to open a connection, without ever rendering the password.
#[derive(Clone)]
pub(crate) struct ConnectParams {
    pub(crate) config: Config,
    pub(crate) tls: MakeTlsConnector,
    /// `host:port/database`, for messages (never with credentials).
    pub(crate) label: String,
    pub(crate) settings: DatabaseSettings,
}

impl ConnectParams {
    /// Builds the driver configuration and the TLS connector. Fails only on a bad
    /// `sslrootcert` file.
    pub(crate) fn new(settings: &DatabaseSettings) -> Result<ConnectParams, DbError> {
        let mut config = Config::new();
        config
            .host(&settings.location)
            .port(settings.port)
            .dbname(&settings.database)
            .user(&settings.username)
            .application_name("orchestratorm8")
            .connect_timeout(settings.connection_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3)
            .options(search_path_option(&settings.schema))
            .ssl_mode(match settings.sslmode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                    tokio_postgres::config::SslMode::Require
                }
            });
        if !settings.password.is_empty() {
            config.password(settings.password.expose());
        }
        Ok(ConnectParams {
            config,
            tls: tls_connector(settings)?,
            label: format!(
                "{}:{}/{}",
                settings.location, settings.port, settings.database
            ),
            settings: settings.clone(),
        })
    }

    /// Opens one connection outside the pool, its I/O driven by a spawned task that
    /// forwards asynchronous messages (notifications) to `messages` when given.
    pub(crate) async fn dedicated(
        &self,
        messages: Option<tokio::sync::mpsc::UnboundedSender<AsyncMessage>>,
    ) -> Result<(Client, JoinHandle<()>), DbError> {
        let (client, mut connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(|e| self.error(e))?;
        let label = self.label.clone();
        let task = tokio::spawn(async move {
            loop {
                match futures::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(msg)) => {
                        if let Some(tx) = &messages {
                            let _ = tx.send(msg);
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(database = %label, error = %describe(&e), "dedicated connection ended");
                        return;
                    }
                    None => return,
                }
            }
        });
        Ok((client, task))
    }

    /// Translates a driver error for this database.
    pub(crate) fn error(&self, e: tokio_postgres::Error) -> DbError {
        map_error(&self.label, &e)
    }
}

/// The `-c search_path=...` startup option putting `schema` first (then `public`, where
/// extensions such as `uuid-ossp` usually live). Escaped for the options syntax, in
/// which a backslash escapes the next character and whitespace separates arguments.
fn search_path_option(schema: &str) -> String {
    let mut path = quote_ident(schema);
    if schema != "public" {
        path.push_str(",public");
    }
    let mut escaped = String::with_capacity(path.len() + 2);
    for c in path.chars() {
        if c == '\\' || c.is_whitespace() {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    format!("-c search_path={escaped}")
}

/// An SQL identifier, double-quoted.
pub(crate) fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// TLS as libpq's `sslmode`:
///
/// - `prefer` and `require` encrypt without verifying the server unless `sslrootcert`
///   is given; with it, the server's certificate must chain to that file (libpq: "if a
///   root CA file exists, `require` behaves as `verify-ca`").
/// - `verify-ca`: the certificate must chain to `sslrootcert`, or without it to the
///   system's trusted roots; the host name is not checked.
/// - `verify-full`: as `verify-ca`, and the certificate must name `location` (a DNS
///   name in its subjectAltName, or its CN when it has none; an IP address must be
///   an IP entry of its subjectAltName).
fn tls_connector(settings: &DatabaseSettings) -> Result<MakeTlsConnector, DbError> {
    let mut builder = native_tls::TlsConnector::builder();
    let verify = matches!(settings.sslmode, SslMode::VerifyCa | SslMode::VerifyFull);
    // Only verify-full checks the host name (native-tls checks it by default).
    builder.danger_accept_invalid_hostnames(settings.sslmode != SslMode::VerifyFull);
    match &settings.sslrootcert {
        Some(path) => {
            let invalid = |why: String| {
                DbError::Invalid(format!("Database.sslrootcert {}: {why}", path.display()))
            };
            let pem = std::fs::read(path).map_err(|e| invalid(format!("cannot read: {e}")))?;
            let certs = native_tls::Certificate::stack_from_pem(&pem)
                .map_err(|e| invalid(format!("not a PEM certificate: {e}")))?;
            if certs.is_empty() {
                return Err(invalid("holds no PEM certificate".into()));
            }
            builder.disable_built_in_roots(true);
            for cert in certs {
                builder.add_root_certificate(cert);
            }
        }
        // verify-ca / verify-full without a file: the system's trusted roots.
        None if verify => {}
        None => {
            builder.danger_accept_invalid_certs(true);
        }
    }
    let connector = builder
        .build()
        .map_err(|e| DbError::Invalid(format!("cannot set up TLS: {e}")))?;
    Ok(MakeTlsConnector::new(connector))
}

/// The driver's error as one line: its kind, the server's message and code, and the
/// cause chain (never credentials: the driver does not put them in errors).
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(detail) = db.detail() {
            s.push_str("; ");
            s.push_str(detail);
        }
        return s;
    }
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Whether the error means the server cannot be used now, or the transaction lost a
/// race it may win next time (deadlock, serialization failure): retrying later is right.
/// A server that refuses writes (`25006`, read-only transaction) is a standby: during a
/// failover the endpoint may point at one for a while, so that is an outage too.
pub(crate) fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => e.as_db_error().is_none(),
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::TOO_MANY_CONNECTIONS
                || *code == SqlState::READ_ONLY_SQL_TRANSACTION
        }
    }
}

/// Whether a failed connection attempt is one retrying does not fix: bad credentials
/// (class `28`), a missing database (`3D000`), no `CONNECT` privilege (`42501`), or a
/// server certificate that fails verification (libpq does not retry these either).
pub(crate) fn is_refused(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        return code.code().starts_with("28")
            || *code == SqlState::INVALID_CATALOG_NAME
            || *code == SqlState::INSUFFICIENT_PRIVILEGE;
    }
    // OpenSSL (through native-tls) reports a refused certificate, or a host name it
    // does not name, as "certificate verify failed" somewhere in the cause chain.
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.to_string().contains("certificate verify failed") {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Translates a driver error.
pub(crate) fn map_error(label: &str, e: &tokio_postgres::Error) -> DbError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        return DbError::Conflict(describe(e));
    }
    // 42501 after connecting is a missing table privilege, not a refused connection.
    if is_refused(e) && e.code() != Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
        return DbError::Refused {
            host: label.to_owned(),
            reason: describe(e),
        };
    }
    if is_unavailable(e) {
        return DbError::Unavailable {
            host: label.to_owned(),
            reason: describe(e),
        };
    }
    DbError::Query(describe(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_path_is_quoted_and_escaped() {
        assert_eq!(search_path_option("public"), r#"-c search_path="public""#);
        assert_eq!(
            search_path_option("my schema"),
            r#"-c search_path="my\ schema",public"#
        );
        assert_eq!(
            search_path_option(r#"a"b\c"#),
            r#"-c search_path="a""b\\c",public"#
        );
    }
}

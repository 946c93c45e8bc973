//! Where and how to connect: connection arguments built once from
//! [`RabbitMqSettings`], a display name without credentials for logs and errors, and
//! the TLS configuration for `amqps`.

use std::sync::Arc;
use std::time::Duration;

use amqprs::connection::OpenConnectionArguments;
use amqprs::tls::TlsAdaptor;
use config8::RabbitMqSettings;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::error::AmqpError;

/// The lowest heartbeat amqp8 negotiates: amqprs sends heartbeats every half
/// interval in whole seconds, so one second would mean a busy loop.
pub(crate) const MIN_HEARTBEAT: Duration = Duration::from_secs(2);

/// A broker to connect to.
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// `amqp://host:port/vhost` (or `amqps://`), never with credentials.
    pub(crate) display: String,
    /// `RabbitMQ.username`, for errors about a refused login.
    pub(crate) user: String,
    /// `RabbitMQ.vhost` as configured, for errors about a refused virtual host.
    pub(crate) vhost: String,
    args: OpenConnectionArguments,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> AmqpError {
    AmqpError::Settings {
        key: format!("RabbitMQ.{key}"),
        reason: reason.into(),
    }
}

impl Endpoint {
    /// Checks the settings and prepares the connection arguments.
    pub(crate) fn new(s: &RabbitMqSettings) -> Result<Self, AmqpError> {
        if s.location.trim().is_empty() {
            return Err(invalid("location", "empty host name"));
        }
        if s.port == 0 {
            return Err(invalid("port", "0 is not a port"));
        }
        if s.vhost.len() > 255 {
            return Err(invalid("vhost", "longer than 255 bytes"));
        }
        if s.username.len() > 255 {
            return Err(invalid("username", "longer than 255 bytes"));
        }
        let heartbeat = s
            .heartbeat
            .max(MIN_HEARTBEAT)
            .as_secs()
            .min(u64::from(u16::MAX)) as u16;
        let mut args =
            OpenConnectionArguments::new(&s.location, s.port, &s.username, s.password.expose());
        args.virtual_host(&s.vhost).heartbeat(heartbeat);
        let scheme = if s.tls {
            args.tls_adaptor(tls(s)?);
            "amqps"
        } else {
            "amqp"
        };
        let vhost = if s.vhost.starts_with('/') {
            s.vhost.clone()
        } else {
            format!("/{}", s.vhost)
        };
        Ok(Endpoint {
            display: format!("{scheme}://{}:{}{vhost}", s.location, s.port),
            user: s.username.clone(),
            vhost: s.vhost.clone(),
            args,
        })
    }

    /// Arguments for one new connection, named for the broker's connection list.
    pub(crate) fn args(&self, name: &str) -> OpenConnectionArguments {
        let mut a = self.args.clone();
        a.connection_name(name);
        a
    }
}

/// TLS with the ring provider (explicitly: amqprs enables none), trusting `tls_ca`
/// when given, else the Mozilla root set.
fn tls(s: &RabbitMqSettings) -> Result<TlsAdaptor, AmqpError> {
    let mut roots = rustls::RootCertStore::empty();
    match &s.tls_ca {
        Some(path) => {
            let bad =
                |e: &dyn std::fmt::Display| invalid("tls_ca", format!("{}: {e}", path.display()));
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(&e))?
                .collect::<Result<_, _>>()
                .map_err(|e| bad(&e))?;
            if certs.is_empty() {
                return Err(bad(&"no PEM certificate in it"));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| bad(&e))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsAdaptor::new(
        tokio_rustls::TlsConnector::from(Arc::new(config)),
        s.location.clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_no_credentials() {
        let s = RabbitMqSettings {
            password: config8::Secret::new("hunter2-secret"),
            vhost: "cptm8".into(),
            ..Default::default()
        };
        let e = Endpoint::new(&s).unwrap();
        assert_eq!(e.display, "amqp://127.0.0.1:5672/cptm8");
        assert!(!format!("{e:?}").contains("hunter2"));
    }

    #[test]
    fn bad_settings_name_the_key() {
        let s = RabbitMqSettings {
            location: " ".into(),
            ..Default::default()
        };
        assert!(
            Endpoint::new(&s)
                .unwrap_err()
                .to_string()
                .contains("RabbitMQ.location")
        );
        let s = RabbitMqSettings {
            tls: true,
            tls_ca: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let err = Endpoint::new(&s).unwrap_err().to_string();
        assert!(
            err.contains("RabbitMQ.tls_ca") && err.contains("/nonexistent/ca.pem"),
            "{err}"
        );
        let s = RabbitMqSettings {
            tls: true,
            ..Default::default()
        };
        let e = Endpoint::new(&s).unwrap();
        assert_eq!(e.display, "amqps://127.0.0.1:5672/");
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("amqp8-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let s = RabbitMqSettings {
            tls: true,
            tls_ca: Some(path.clone()),
            ..Default::default()
        };
        let err = Endpoint::new(&s).unwrap_err().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

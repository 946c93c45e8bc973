//! The effective configuration as YAML in the file's shape, with every secret redacted.

use serde_norway::Value;

use crate::secret::Secret;
use crate::settings::Settings;

/// The configuration as YAML that loads back to the same settings (secrets aside).
///
/// A literal `${` in a value is printed `$${`, so that loading the output does not
/// expand it. Secret fields print `***`. A secret's value is also removed from every other string
/// (say a password repeated in a URL of `Services`), and URL passwords
/// (`scheme://user:password@host`) are redacted wherever they appear.
pub fn render_redacted(settings: &Settings) -> String {
    let mut value = serde_norway::to_value(settings).expect("settings serialise to YAML");
    scrub(&mut value, &secrets(settings));
    serde_norway::to_string(&value).expect("a YAML value serialises")
}

/// The values of the non-empty secrets of `s`, for keeping them out of messages.
pub(crate) fn secrets(s: &Settings) -> Vec<&str> {
    let mut v = vec![&s.database.password, &s.rabbitmq.password];
    v.extend(s.http.api_token.as_ref());
    v.extend(s.log.apm_secret_token.as_ref());
    v.into_iter()
        .map(Secret::expose)
        .filter(|x| !x.is_empty())
        .collect()
}

fn scrub(value: &mut Value, secrets: &[&str]) {
    match value {
        Value::String(s) => *s = scrub_str(s, secrets).replace("${", "$${"),
        Value::Sequence(items) => items.iter_mut().for_each(|v| scrub(v, secrets)),
        Value::Mapping(m) => m.iter_mut().for_each(|(_, v)| scrub(v, secrets)),
        Value::Tagged(t) => scrub(&mut t.value, secrets),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// `s` with URL passwords and the secrets redacted. Secrets shorter than 4 characters are
/// only redacted where they are the whole value (replacing every `a` of a text would
/// make it unreadable without protecting anything).
pub(crate) fn scrub_str(s: &str, secrets: &[&str]) -> String {
    let mut out = redact_url_password(s);
    for secret in secrets {
        if out == *secret {
            return Secret::REDACTED.to_owned();
        }
        if secret.chars().count() >= 4 {
            out = out.replace(secret, Secret::REDACTED);
        }
    }
    out
}

/// `scheme://user:password@host` -> `scheme://user:***@host`.
fn redact_url_password(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority_end = tail.find(['/', '?', '#', ' ']).unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..=colon]);
                        out.push_str(Secret::REDACTED);
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_redacted() {
        assert_eq!(
            redact_url_password("amqp://u:p@h:5672/v and https://x:y@z"),
            "amqp://u:***@h:5672/v and https://x:***@z"
        );
        assert_eq!(
            redact_url_password("http://h:8000/a@b"),
            "http://h:8000/a@b"
        );
        assert_eq!(redact_url_password("http://user@h"), "http://user@h");
        assert_eq!(redact_url_password("no url"), "no url");
    }

    #[test]
    fn secrets_repeated_elsewhere_are_redacted() {
        let mut s = Settings::default();
        s.database.password = Secret::new("pgSecret99");
        s.rabbitmq.password = Secret::new("mq");
        s.orchestrator
            .services
            .insert("asmm8".into(), "http://h:8000/?k=pgSecret99".into());
        s.orchestrator.services.insert("x".into(), "mq".into());
        s.orchestrator.services.insert("y".into(), "mqtt".into());
        let out = render_redacted(&s);
        assert!(!out.contains("pgSecret99"), "{out}");
        assert!(out.contains("k=***"), "{out}");
        assert!(out.contains("x: '***'"), "{out}");
        assert!(out.contains("y: mqtt"), "{out}");
    }

    #[test]
    fn literal_dollar_braces_are_escaped() {
        let mut s = Settings::default();
        s.orchestrator
            .services
            .insert("asmm8".into(), "http://h/a${b}c$d$${e}".into());
        let out = render_redacted(&s);
        assert!(out.contains("asmm8: http://h/a$${b}c$d$$${e}"), "{out}");
    }
}

//! What can go wrong loading a configuration, and the non-fatal warnings.

use std::fmt;
use std::path::PathBuf;

/// One invalid value: the key path (`Database.port`), and what is wrong with it, which
/// names the bad value (redacted for secrets) and what is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path in the file's spelling, e.g. `RabbitMQ.pool.pool.max_idle_time` or
    /// `Workflow.stages[1].depends_on`.
    pub path: String,
    /// What is wrong, e.g. `got "five", expected an integer between 1 and 65535`.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        path_message(f, &self.path, &self.message)
    }
}

/// Something suspicious but not fatal, e.g. an unknown key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Key path the warning is about.
    pub path: String,
    /// What is suspicious.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        path_message(f, &self.path, &self.message)
    }
}

/// Why no configuration could be loaded. Never contains a secret value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, no permission, ...).
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not YAML.
    #[error(
        "configuration file {} is not valid YAML: {message}",
        origin_name(path)
    )]
    Parse {
        /// The file (`None` when loaded from a string).
        path: Option<PathBuf>,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file is YAML, but some values are invalid. Every problem found is listed.
    #[error("configuration {} is invalid:{}", origin_name(path), list(problems))]
    Invalid {
        /// The file (`None` when loaded from a string).
        path: Option<PathBuf>,
        /// Every invalid value, in file order.
        problems: Vec<Problem>,
    },
    /// The file watcher could not be started.
    #[error("cannot watch configuration file {}: {source}", path.display())]
    Watch {
        /// The file.
        path: PathBuf,
        /// The watcher's error.
        source: notify::Error,
    },
}

impl ConfigError {
    /// The individual problems of an [`ConfigError::Invalid`]; empty otherwise.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

/// `path: message`, or the message alone when the path is empty (the top level).
fn path_message(f: &mut fmt::Formatter<'_>, path: &str, message: &str) -> fmt::Result {
    if path.is_empty() {
        f.write_str(message)
    } else {
        write!(f, "{path}: {message}")
    }
}

fn origin_name(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => p.display().to_string(),
        None => "<string>".to_owned(),
    }
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  - {p}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_lists_every_problem() {
        let e = ConfigError::Invalid {
            path: Some("c.yaml".into()),
            problems: vec![
                Problem {
                    path: "Database.port".into(),
                    message: "got \"five\", expected a port".into(),
                },
                Problem {
                    path: String::new(),
                    message: "other".into(),
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "configuration c.yaml is invalid:\n  - Database.port: got \"five\", expected a port\n  - other"
        );
        assert_eq!(e.problems().len(), 2);
    }
}

//! The command line the simulated stage workers share (`stage_worker`).
//!
//! argh has no `flatten`, so the shared options come into each worker's own
//! `#[derive(FromArgs)]` struct through [`worker_args!`](crate::worker_args!), next to the
//! worker's own options; [`WorkerOptions`] is what the shared options hold, and turns
//! them into the queue and the consumer the worker serves.

use std::path::PathBuf;
use std::time::Duration;

use amqp8::ConsumeOptions;
use config8::Settings;

use crate::runner::{Failure, Serve};
use crate::topology::{self, WorkerQueue};

/// Defines a worker's command line: a `#[derive(argh::FromArgs)]` struct with the options
/// every simulated worker takes (`--stage`, `--name`, `--queue`, `--config`, `--min-ms`,
/// `--max-ms`, `--prefetch`, `--grace-ms`, `--max-redeliveries`, `--seed`), then the
/// fields written inside, and a method `options()` returning the shared ones as
/// [`WorkerOptions`].
///
/// ```ignore
/// demo8::worker_args! {
///     /// What `--help` says this worker is.
///     struct Args {
///         /// share of scans that fail, 0 to 1 (default 0.1)
///         #[argh(option, default = "0.1")]
///         failure_rate: f64,
///     }
/// }
/// ```
#[macro_export]
macro_rules! worker_args {
    ($(#[$meta:meta])* struct $name:ident { $($own:tt)* }) => {
        $(#[$meta])*
        #[derive(argh::FromArgs, Debug)]
        struct $name {
            /// stage served, e.g. asmm8
            #[argh(option)]
            stage: String,
            /// worker name, the `source` of what it publishes (default: the stage name)
            #[argh(option)]
            name: Option<String>,
            /// queue consumed (default: the stage's service section `Queue[1]`, else `q<stage>`)
            #[argh(option)]
            queue: Option<String>,
            /// configuration file (default: $ORCHESTRATORM8_CONFIG, else configs/configuration.yaml)
            #[argh(option)]
            config: Option<std::path::PathBuf>,
            /// shortest simulated scan, in milliseconds (default 500)
            #[argh(option, default = "500")]
            min_ms: u64,
            /// longest simulated scan, in milliseconds (default 3000)
            #[argh(option, default = "3000")]
            max_ms: u64,
            /// jobs handled at once (default: the service section's prefetch, else 1)
            #[argh(option)]
            prefetch: Option<u16>,
            /// at shutdown, how long in-flight jobs may run on before they are requeued (default 10000)
            #[argh(option, default = "10000")]
            grace_ms: u64,
            /// a job delivered more often than this is dead-lettered (default 10)
            #[argh(option, default = "10")]
            max_redeliveries: u32,
            /// random seed, for reproducible runs
            #[argh(option)]
            seed: Option<u64>,
            $($own)*
        }

        impl $name {
            /// The options every simulated worker takes.
            fn options(&self) -> $crate::worker_args::WorkerOptions {
                $crate::worker_args::WorkerOptions {
                    stage: self.stage.clone(),
                    name: self.name.clone(),
                    queue: self.queue.clone(),
                    config: self.config.clone(),
                    min_ms: self.min_ms,
                    max_ms: self.max_ms,
                    prefetch: self.prefetch,
                    grace_ms: self.grace_ms,
                    max_redeliveries: self.max_redeliveries,
                    seed: self.seed,
                }
            }
        }
    };
}

/// The options every simulated worker takes, as given on the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerOptions {
    /// `--stage`: the stage served.
    pub stage: String,
    /// `--name`: the `source` of what the worker publishes.
    pub name: Option<String>,
    /// `--queue`: the queue consumed, instead of the service section's.
    pub queue: Option<String>,
    /// `--config`: the configuration file.
    pub config: Option<PathBuf>,
    /// `--min-ms`: shortest simulated scan.
    pub min_ms: u64,
    /// `--max-ms`: longest simulated scan.
    pub max_ms: u64,
    /// `--prefetch`: jobs handled at once, instead of the service section's.
    pub prefetch: Option<u16>,
    /// `--grace-ms`: how long in-flight jobs may run on at shutdown.
    pub grace_ms: u64,
    /// `--max-redeliveries`: a job delivered more often is dead-lettered.
    pub max_redeliveries: u32,
    /// `--seed`: the random seed.
    pub seed: Option<u64>,
}

impl WorkerOptions {
    /// Checks what needs no configuration: the stage is a plain name, the prefetch at
    /// least 1.
    pub fn check(&self) -> Result<(), Failure> {
        if self.stage.is_empty() || self.stage.contains(['.', '#', '*', ' ']) {
            return Err(Failure::Usage(format!(
                "--stage {:?}: expected a stage name such as asmm8 (no dots, spaces or wildcards)",
                self.stage
            )));
        }
        if self.prefetch == Some(0) {
            return Err(Failure::Usage("--prefetch must be at least 1".into()));
        }
        Ok(())
    }

    /// The worker's name: `--name`, else the stage.
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.stage.clone())
    }

    /// The queue served: the stage's service section, with `--queue` and `--prefetch`
    /// applied.
    pub fn queue(&self, settings: &Settings) -> WorkerQueue {
        let mut q = WorkerQueue::from_settings(settings, &self.stage);
        if let Some(name) = &self.queue {
            q.queue = name.clone();
        }
        if let Some(p) = self.prefetch {
            q.prefetch = p;
        }
        q
    }

    /// How to serve `q` with manual ack, dead-lettering what cannot be read, declaring
    /// also the exchanges the worker publishes to.
    pub fn serve(&self, settings: &Settings, q: &WorkerQueue, publishes_to: &[&str]) -> Serve {
        Serve {
            topology: topology::worker_topology(settings, q, publishes_to),
            consume: ConsumeOptions {
                queue: q.queue.clone(),
                tag: q.tag.clone(),
                prefetch: q.prefetch,
                autoack: false,
                max_redeliveries: self.max_redeliveries,
                dead_letter: Some(q.dead_letter_route()),
            },
            grace: Duration::from_millis(self.grace_ms),
            health_every: Duration::from_secs(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(stage: &str) -> WorkerOptions {
        WorkerOptions {
            stage: stage.into(),
            name: None,
            queue: None,
            config: None,
            min_ms: 500,
            max_ms: 3000,
            prefetch: None,
            grace_ms: 10_000,
            max_redeliveries: 10,
            seed: None,
        }
    }

    #[test]
    fn stage_names_and_prefetch_are_checked() {
        assert!(options("asmm8").check().is_ok());
        for bad in ["", "a.b", "a#", "a b", "*"] {
            let e = options(bad).check().unwrap_err();
            assert!(
                matches!(&e, Failure::Usage(m) if m.contains("--stage")),
                "{e:?}"
            );
        }
        let mut o = options("asmm8");
        o.prefetch = Some(0);
        assert!(matches!(o.check(), Err(Failure::Usage(m)) if m.contains("--prefetch")));
    }

    #[test]
    fn flags_override_the_service_section() {
        let settings = Settings::default();
        let mut o = options("asmm8");
        assert_eq!(o.name(), "asmm8");
        let q = o.queue(&settings);
        assert_eq!(q.queue, "qasmm8");
        o.name = Some("extra".into());
        o.queue = Some("qother".into());
        o.prefetch = Some(4);
        o.max_redeliveries = 3;
        o.grace_ms = 250;
        assert_eq!(o.name(), "extra");
        let q = o.queue(&settings);
        assert_eq!((q.queue.as_str(), q.prefetch), ("qother", 4));
        let s = o.serve(&settings, &q, &["cptm8"]);
        assert_eq!(s.consume.queue, "qother");
        assert_eq!(s.consume.prefetch, 4);
        assert_eq!(s.consume.max_redeliveries, 3);
        assert!(!s.consume.autoack);
        assert_eq!(s.grace, Duration::from_millis(250));
    }
}

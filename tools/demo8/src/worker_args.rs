//! The command line of the simulated stage worker (`stage_worker`): [`WorkerOptions`]
//! is parsed by argh and turns into the queue and the consumer the worker serves.

use std::path::PathBuf;
use std::time::Duration;

use amqp8::ConsumeOptions;
use config8::Settings;

use crate::runner::{Failure, Serve};
use crate::topology::{self, WorkerQueue};

/// Simulated CPTM8 stage worker for managed mode: consumes a stage's jobs, simulates a
/// scan and reports the outcome to orchestratorm8.
#[derive(argh::FromArgs, Debug, Clone, PartialEq)]
pub struct WorkerOptions {
    /// stage served, e.g. asmm8
    #[argh(option)]
    pub stage: String,
    /// worker name, the `source` of what it publishes (default: the stage name)
    #[argh(option)]
    pub name: Option<String>,
    /// queue consumed (default: the stage's service section `Queue[1]`, else `q<stage>`)
    #[argh(option)]
    pub queue: Option<String>,
    /// configuration file (default: $ORCHESTRATORM8_CONFIG, else configs/configuration.yaml)
    #[argh(option)]
    pub config: Option<PathBuf>,
    /// shortest simulated scan, in milliseconds (default 500)
    #[argh(option, default = "500")]
    pub min_ms: u64,
    /// longest simulated scan, in milliseconds (default 3000)
    #[argh(option, default = "3000")]
    pub max_ms: u64,
    /// jobs handled at once (default: the service section's prefetch, else 1)
    #[argh(option)]
    pub prefetch: Option<u16>,
    /// at shutdown, how long in-flight jobs may run on before they are requeued (default 10000)
    #[argh(option, default = "10000")]
    pub grace_ms: u64,
    /// a job delivered more often than this is dead-lettered (default 10)
    #[argh(option, default = "10")]
    pub max_redeliveries: u32,
    /// random seed, for reproducible runs
    #[argh(option)]
    pub seed: Option<u64>,
    /// share of scans that fail, 0 to 1 (default 0.1)
    #[argh(option, default = "0.1")]
    pub failure_rate: f64,
    /// share of jobs "lost": acked without a report, so the stage times out (default 0)
    #[argh(option, default = "0.0")]
    pub lost_rate: f64,
    /// from this attempt on every scan succeeds; 0: never forced (default 0)
    #[argh(option, default = "0")]
    pub succeed_at_attempt: u32,
    /// the error message of a simulated failure (default: a fixed text)
    #[argh(option)]
    pub failure_message: Option<String>,
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
                max_redeliveries: self.max_redeliveries,
                dead_letter: Some(q.dead_letter_route()),
                ..ConsumeOptions::new(&q.queue, &q.tag, q.prefetch)
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
            failure_rate: 0.1,
            lost_rate: 0.0,
            succeed_at_attempt: 0,
            failure_message: None,
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

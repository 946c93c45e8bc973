//! The benchmarks. Each module exposes `SPECS` (its report rows) and
//! `run(&Ctx) -> Outcomes`, measuring our side and its floor in the same run.

pub mod amqp_common;
pub mod amqp_consume;
pub mod amqp_publish;
pub mod amqp_recovery;
pub mod db_create;
pub mod db_stream;
pub mod failover;
pub mod fairness;
pub mod managed;
pub mod retention;

use std::time::Duration;

use crate::ctx::Ctx;
use crate::report::{Failure, Measured, Row, Spec};

/// A TCP port of 127.0.0.1 nothing listens on at the time of the call.
fn free_port() -> Result<u16, Failure> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Failure::Error(format!("finding a free port: {e}")))?;
    Ok(listener
        .local_addr()
        .map_err(|e| Failure::Error(e.to_string()))?
        .port())
}

/// `GET path` on 127.0.0.1:`port` (reqwest, at most 10 s); returns (status, body).
async fn http_get(port: u16, path: &str) -> reqwest::Result<(u16, String)> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let response = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await?;
    Ok((response.status().as_u16(), response.text().await?))
}

/// What a benchmark returns: a result per row name, or a failure for all its rows.
pub type Outcomes = Result<Vec<(&'static str, Result<Measured, Failure>)>, Failure>;

/// One benchmark.
#[derive(Debug)]
pub struct Bench {
    /// Name used on the command line.
    pub name: &'static str,
    /// One line on what it measures.
    pub about: &'static str,
    /// Its rows.
    pub specs: &'static [Spec],
}

/// Every benchmark, in run order.
pub const ALL: &[Bench] = &[
    Bench {
        name: "db_stream",
        about: "db8 PgStore::stream_enabled of 1,000,000 domains vs psql \\copy; peak RSS",
        specs: db_stream::SPECS,
    },
    Bench {
        name: "db_create",
        about: "db8 create_workflows of 100,000 per-domain workflows vs plain COPY of the same rows",
        specs: db_create::SPECS,
    },
    Bench {
        name: "amqp_publish",
        about: "amqp8 publish_many of 100,000 confirmed 300-byte messages vs raw amqprs (window 1,000)",
        specs: amqp_publish::SPECS,
    },
    Bench {
        name: "amqp_consume",
        about: "amqp8 consumer with manual ack of 100,000 messages vs raw amqprs, same prefetch",
        specs: amqp_consume::SPECS,
    },
    Bench {
        name: "amqp_recovery",
        about: "amqp8 consumer back after rabbitmqctl stop_app/start_app (median of 5)",
        specs: amqp_recovery::SPECS,
    },
    Bench {
        name: "managed",
        about: "orchestratorm8 launch, managed per_domain: 100,000 domains to stage-1 jobs; RSS, idle CPU",
        specs: managed::SPECS,
    },
    Bench {
        name: "fairness",
        about: "Workflow.fairness: company: small company's p99 wait behind 20,000 domains, max_in_flight 10, vs its fair share",
        specs: fairness::SPECS,
    },
    Bench {
        name: "failover",
        about: "two replicas under load: median time from kill -9 of the leader to the new leader acting (10 rounds), vs the 2 s budget",
        specs: failover::SPECS,
    },
    Bench {
        name: "retention",
        about: "db8 prune_finished of 1,000,000 finished workflows beside a 10,000-workflow fan-out vs the fan-out alone; tables afterwards",
        specs: retention::SPECS,
    },
];

/// Runs `bench` and turns its outcomes into rows, one per spec.
pub async fn run(bench: &Bench, ctx: &Ctx) -> Vec<Row> {
    let outcomes = match bench.name {
        "db_stream" => db_stream::run(ctx).await,
        "db_create" => db_create::run(ctx).await,
        "amqp_publish" => amqp_publish::run(ctx).await,
        "amqp_consume" => amqp_consume::run(ctx).await,
        "amqp_recovery" => amqp_recovery::run(ctx).await,
        "managed" => managed::run(ctx).await,
        "fairness" => fairness::run(ctx).await,
        "retention" => retention::run(ctx).await,
        "failover" => failover::run(ctx).await,
        other => Err(Failure::Error(format!("no runner for {other}"))),
    };
    rows(bench.specs, outcomes)
}

fn rows(specs: &[Spec], outcomes: Outcomes) -> Vec<Row> {
    match outcomes {
        Err(f) => specs.iter().map(|s| Row::new(s, Err(f.clone()))).collect(),
        Ok(mut list) => specs
            .iter()
            .map(|s| {
                let outcome = list
                    .iter()
                    .position(|(n, _)| *n == s.name)
                    .map(|i| list.swap_remove(i).1)
                    .unwrap_or_else(|| {
                        Err(Failure::Error(
                            "the benchmark produced no value for this row".into(),
                        ))
                    });
                Row::new(s, outcome)
            })
            .collect(),
    }
}

//! Fault injection on timing (docs/FAULTS.md): stage workers that report at once, so
//! that a result can reach the orchestrator before it has recorded the job as running
//! (RabbitMQ may deliver a persistent message to a consumer before it confirms it to
//! the publisher, and the record is a database commit after the confirm). Such a result
//! must not be lost: every workflow completes at the first attempt, without waiting
//! for the stage's time-out.
//!
//! It disrupts nothing shared: SHARED service lock. Ignored by default (it belongs to
//! the fault suite): `bash scripts/fault.sh`.

mod common;
mod e2e_support;
mod fault_support;

use std::time::{Duration, Instant};

use common::http_get;
use e2e_support::{PIPELINE, Service};
use fault_support::{Outcome, managed_once, metric};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault injection (timing): bash scripts/fault.sh"]
async fn results_reported_before_the_job_is_recorded_running_are_not_lost() {
    const DOMAINS: u64 = 60;
    let (env, _timing) = fault_support::env(
        "results_reported_before_the_job_is_recorded_running_are_not_lost",
        false,
    );
    // A short time-out, so that a lost result shows as a retry within the test.
    let config = env.pipeline_config("15s", managed_once);
    let mut svc = Service::start(&config, env.dir.path(), "svc").await;
    svc.ready().await;
    let client = env.client().await;
    let (seen, _handles) = client.completing_workers(&PIPELINE, Duration::ZERO).await;
    let started = Instant::now();
    env.insert_domains("fast", DOMAINS as usize);
    fault_support::all_completed(&env, DOMAINS, Duration::from_secs(120)).await;
    let took = started.elapsed();
    let text = http_get(svc.port, "/metrics").await.unwrap().1;
    let stale = metric(&text, "orchestratorm8_results_stale_total").unwrap_or(0.0);
    let retries: f64 = ["a", "b", "c"]
        .iter()
        .filter_map(|s| {
            metric(
                &text,
                &format!("orchestratorm8_stage_retries_total{{stage=\"{s}\"}}"),
            )
        })
        .sum();
    eprintln!(
        "{DOMAINS} workflows completed in {took:.1?}; {} jobs; results_stale_total {stale}, \
         stage_retries_total {retries}",
        seen.iter().map(|j| j.lock().unwrap().len()).sum::<usize>()
    );
    let outcome = Outcome::read(&env);
    let logs = svc.logs();
    let lost: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("duplicate or stale result ignored"))
        .collect();
    assert!(
        outcome == Outcome::clean(DOMAINS) && stale == 0.0,
        "{} result(s) of the running attempt were dropped as stale and their stages waited \
         for the 15 s time-out ({retries} retries; {outcome:?}). A worker's report reached the \
         orchestrator before the job was recorded as running (the stage was still `pending` \
         under the publisher's claim), so Complete found no running attempt and the result \
         was acked and dropped. With the default timeout (2h) the workflow stalls for hours. \
         Dropped results:\n{}",
        lost.len(),
        lost.join("\n")
    );
    let (code, _) = svc.terminate();
    assert_eq!(code, Some(0), "{}", svc.logs());
    fault_support::keep_logs(&env, "fast_worker");
}

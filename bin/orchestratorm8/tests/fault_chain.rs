//! Fault injection on managed mode driving the platform's scanners (`protocol: chain`,
//! docs/FAULTS.md): `kill -9` of the orchestrator while a scanner scans, twice in one
//! cycle. The state is in PostgreSQL and the scanner's report waits in the durable
//! result queue, so the restarted process applies it and the cycle resumes: it
//! completes, and every scanner ran exactly once, in order (no stage kicked twice).
//!
//! It disrupts only its own processes, so it holds the SHARED service lock. Ignored by
//! default: `bash scripts/fault.sh`, or alone
//! `cargo test -p orchestratorm8 --test fault_chain -- --ignored`.

mod chain_support;
mod common;
mod e2e_support;

use std::time::Duration;

use chain_support::{LIMIT, all_completed_first_time, cycle_is, each_once_in_order, stages};
use common::eventually;
use demo8::scanner::RING;
use e2e_support::{Env, Service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault injection (kill -9): bash scripts/fault.sh"]
async fn kill_9_mid_cycle_the_cycle_resumes_and_no_scanner_is_kicked_twice() {
    let env = Env::new();
    let config = env.chain_config("60s", 3);
    let mut svc = Service::start(&config, env.dir.path(), "first").await;
    svc.ready().await;
    // Scans long enough to kill the orchestrator in the middle of one.
    let scanners = env
        .scanners(&config, &[], Duration::from_millis(2500))
        .await;
    env.insert_domains("kill", 3);

    for (round, stage) in [(1, "naabum8"), (2, "num8")] {
        let index = RING.iter().position(|s| *s == stage).unwrap();
        eventually(&format!("{stage} running"), LIMIT, async || {
            let w = svc.workflows().await;
            w.len() == 1 && stages(&w[0])[index].1 == "running"
        })
        .await;
        svc.kill9();
        svc = Service::start(&config, env.dir.path(), &format!("restart-{round}")).await;
        svc.ready().await;
    }

    all_completed_first_time(&cycle_is(&svc, "completed").await);
    each_once_in_order(&scanners);
    scanners.stop(Duration::from_secs(2)).await;
}

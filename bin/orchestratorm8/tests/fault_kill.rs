//! Fault injection on the service itself (docs/FAULTS.md): `kill -9` at random points
//! of a managed run, round after round, with domains arriving meanwhile; in the end
//! every domain has exactly one workflow, completed exactly once, nothing stuck, and
//! every workflow's completion notification arrived (at least once: copies, counted by
//! their `message_id`, are reported).
//!
//! Rounds: `FAULT_KILL_ROUNDS` (default 20). Odd rounds kill anywhere in the first
//! seconds of a process's life (start-up, migrations, topology, the takeover grace of
//! leader election); even rounds wait until the process leads (its log says so), add
//! the domains, and kill it within a second, while it dispatches and applies results. The kill points come from a seeded
//! generator; the seed is printed, `FAULT_SEED=<seed>` replays a run.
//!
//! It disrupts only its own processes, so it holds the SHARED service lock (like the
//! e2e tests), not the exclusive one. Ignored by default (it takes a couple of minutes):
//! `bash scripts/fault.sh`.

mod common;
mod e2e_support;
mod fault_support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::http_get;
use e2e_support::Service;
use fault_support::{Outcome, Rng, managed_once, metric};

/// Domains added in each round.
const PER_ROUND: u64 = 5;
/// Kill points and domain arrivals fall in `[0, WINDOW)` after each round's reference
/// point: the start (odd rounds) or the moment the process leads (even rounds).
const WINDOW: Duration = Duration::from_millis(3000);
/// In even rounds: domains arrive in `[0, BUSY)` after the process leads, and the kill
/// falls in the `BUSY` that follows (the stage workers answer in 20 ms: five workflows
/// of three stages take a few hundred milliseconds).
const BUSY: Duration = Duration::from_millis(1000);
/// What the log says when a replica starts leading (controller8::leader).
const LEADING: &str = "this replica is now the leader";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault injection (kill -9, FAULT_KILL_ROUNDS rounds): bash scripts/fault.sh"]
async fn kill_9_at_random_points_every_workflow_completes_exactly_once() {
    let rounds = fault_support::env_number("FAULT_KILL_ROUNDS", 20);
    assert!(rounds >= 1, "FAULT_KILL_ROUNDS must be at least 1");
    let seed = fault_support::seed();
    let mut rng = Rng::new(seed);
    let (env, _timing) = fault_support::env(
        "kill_9_at_random_points_every_workflow_completes_exactly_once",
        false,
    );
    let config = env.pipeline_config("120s", managed_once);

    // A first start declares the topology the workers consume from.
    let run = env
        .start_pipeline(&config, "round-01", Duration::from_millis(20))
        .await;
    let (first, notes, seen) = (run.svc, &run.notes, &run.seen);

    let started = Instant::now();
    let mut first = Some(first);
    for round in 1..=rounds {
        let (insert_at, kill_at) = if round % 2 == 0 {
            // While it leads: the kill falls within a second of the domains' arrival,
            // while their workflows are created, dispatched and completed.
            let insert_at = rng.millis_below(BUSY);
            (insert_at, insert_at + rng.millis_below(BUSY))
        } else {
            (rng.millis_below(WINDOW), rng.millis_below(WINDOW))
        };
        // Round 1 reuses the instance started above; the others start now, and may
        // die before they even answer HTTP.
        let (mut child, mut service) = match first.take() {
            Some(s) => (None, Some(s)),
            None => (
                Some(fault_support::spawn(
                    &config,
                    env.dir.path(),
                    &format!("round-{round:02}"),
                )),
                None,
            ),
        };
        // Even rounds: from the moment this process leads (the takeover grace of leader
        // election is 3 s, so a kill counted from the start rarely finds it leading).
        let led_after = match child.as_mut() {
            Some(c) if round % 2 == 0 => {
                let log = env.dir.path().join(format!("round-{round:02}.log"));
                Some(leading(c, &log, Duration::from_secs(60)).await)
            }
            _ => None,
        };
        let t0 = Instant::now();
        for (at, insert) in sorted([(insert_at, true), (kill_at, false)]) {
            tokio::time::sleep(at.saturating_sub(t0.elapsed())).await;
            if insert {
                // Before the kill: the running process sees them (change feed);
                // after: no orchestrator runs, the next start must find them.
                env.insert_domains(&format!("r{round}"), PER_ROUND as usize);
            } else {
                if let Some(c) = child.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        panic!(
                            "round {round}: orchestratorm8 exited by itself ({status}); see {}",
                            env.dir
                                .path()
                                .join(format!("round-{round:02}.log"))
                                .display()
                        );
                    }
                    c.kill().unwrap();
                    c.wait().unwrap();
                }
                if let Some(s) = service.as_mut() {
                    s.kill9();
                }
            }
        }
        let done = fault_support::count(
            &env,
            "SELECT count(*) FROM orchestratorm8_workflow WHERE status = 'completed'",
        );
        let reference = match led_after {
            Some(t) => format!("after leading ({t:.1?} from start)"),
            None => "after start".to_owned(),
        };
        eprintln!(
            "round {round:2}: domains at {insert_at:>4.0?}, kill -9 at {kill_at:>4.0?} \
             {reference}; {done} of {} workflows completed",
            round * PER_ROUND
        );
    }

    let total = rounds * PER_ROUND;
    let last = Service::start(&config, env.dir.path(), "final").await;
    last.ready().await;
    let recovering = Instant::now();
    // Bounded: a job published by a killed process before it recorded it waits for
    // its claim to expire (60 s) and is published again.
    fault_support::all_completed(&env, total, Duration::from_secs(240)).await;
    eprintln!(
        "{rounds} rounds: all {total} workflows completed {:.1?} after the last start \
         ({:.1?} in all)",
        recovering.elapsed(),
        started.elapsed()
    );

    // The database: one workflow per domain, every workflow and stage completed, at
    // its first attempt (nothing was lost and retried after a time-out).
    assert_eq!(Outcome::read(&env), Outcome::clean(total), "seed {seed}");

    // The workers: every stage of every workflow reached them; nothing else did.
    let workflows: HashMap<String, String> = env
        .psql(
            "SELECT w.id || ' ' || d.domain_id FROM orchestratorm8_workflow w \
             JOIN orchestratorm8_workflow_domain d ON d.workflow_id = w.id",
        )
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(w, d)| (w.to_owned(), d.to_owned()))
        .collect();
    assert_eq!(workflows.len() as u64, total);
    for (s, jobs) in ["a", "b", "c"].iter().zip(seen) {
        let jobs = jobs.lock().unwrap();
        let mut per_workflow: HashMap<String, u32> = HashMap::new();
        for j in jobs.iter() {
            let id = j.workflow_id.to_string();
            let domain = workflows
                .get(&id)
                .unwrap_or_else(|| panic!("stage {s}: a job for unknown workflow {id}"));
            assert_eq!(j.stage, *s);
            assert_eq!(j.attempt, 1, "stage {s} of {id}");
            assert_eq!(j.domains.len(), 1);
            assert_eq!(j.domains[0].id.to_string(), *domain, "stage {s} of {id}");
            *per_workflow.entry(id).or_default() += 1;
        }
        let missing: Vec<_> = workflows
            .keys()
            .filter(|id| !per_workflow.contains_key(*id))
            .collect();
        assert!(
            missing.is_empty(),
            "stage {s}: no job for {missing:?} (seed {seed})"
        );
        let duplicated = per_workflow.values().filter(|n| **n > 1).count();
        eprintln!(
            "stage {s}: {} jobs for {total} workflows ({duplicated} delivered more than once: \
             at-least-once after a kill between publish and record)",
            jobs.len()
        );
    }

    // Every workflow's completion notification arrives (the outbox: written with the
    // completion, relayed with confirms; a row a killed process claimed is published
    // again once its 30 s lease ends), at least once; copies share their message_id.
    let waiting = Instant::now();
    let notices = loop {
        let notices = fault_support::completion_notices_by_id(&notes.lock().unwrap());
        let notified: HashSet<&String> = notices.iter().map(|(_, w)| w).collect();
        if notified.len() as u64 >= total {
            break notices;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(120),
            "{} of {total} completion notifications arrived (seed {seed})",
            notified.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut by_id: HashMap<&str, &str> = HashMap::new();
    for (id, workflow) in &notices {
        assert!(!id.is_empty(), "a notification without message_id");
        let first = by_id.entry(id).or_insert(workflow);
        assert_eq!(*first, workflow.as_str(), "one message_id, two workflows");
    }
    let notified: HashSet<&str> = by_id.values().copied().collect();
    assert!(notified.iter().all(|id| workflows.contains_key(*id)));
    // No completion was applied twice: one logical notification (message_id) per
    // workflow.
    assert_eq!(
        by_id.len(),
        notified.len(),
        "a workflow completed twice (seed {seed})"
    );
    let text = http_get(last.port, "/metrics").await.unwrap().1;
    eprintln!(
        "completion notifications: {} of {total} workflows notified, {} messages received, {} copies (same message_id); last process: results_stale_total {:?}",
        notified.len(),
        notices.len(),
        notices.len() - by_id.len(),
        metric(&text, "orchestratorm8_results_stale_total")
    );
    drop(last);
    fault_support::keep_logs(&env, "kill");
}

/// The two events of a round in time order.
fn sorted(mut events: [(Duration, bool); 2]) -> [(Duration, bool); 2] {
    events.sort_by_key(|e| e.0);
    events
}

/// Waits until `child`'s log at `log` says it leads; how long that took. Panics when
/// the process exits first or `limit` passes.
async fn leading(
    child: &mut std::process::Child,
    log: &std::path::Path,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        if std::fs::read_to_string(log).is_ok_and(|t| t.contains(LEADING)) {
            return started.elapsed();
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "orchestratorm8 exited ({status}) before leading; see {}",
                log.display()
            );
        }
        assert!(
            started.elapsed() < limit,
            "orchestratorm8 did not lead within {limit:?}; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

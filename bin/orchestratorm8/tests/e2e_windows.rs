//! End-to-end: scan windows with the real binary, PostgreSQL and RabbitMQ. A window
//! that excludes now publishes nothing and the API says until when; removing it from
//! the file while the service runs (a live setting) lets the work through.

mod common;
mod e2e_support;

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use common::eventually;
use e2e_support::{Env, managed};

const LIMIT: Duration = Duration::from_secs(60);

fn stage_of<'a>(wf: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    wf["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_that_excludes_now_publishes_nothing_until_it_is_lifted() {
    let env = Env::new();
    // A window of every day two to three hours from now (UTC): closed now.
    let now = Utc::now();
    let (from, to) = (now + TimeDelta::hours(2), now + TimeDelta::hours(3));
    let windows = format!(
        "  windows:\n    - {{ from: \"{}\", to: \"{}\", timezone: UTC }}\n",
        from.format("%H:%M"),
        to.format("%H:%M")
    );
    let with_window = |stages: &str| managed(stages) + &windows;
    let config = env.pipeline_config("30s", with_window);
    let run = env
        .start_pipeline(&config, "svc", Duration::from_millis(20))
        .await;
    let (mut svc, seen) = (run.svc, &run.seen);
    env.insert_domains("win", 3);

    eventually("3 workflows waiting for their window", LIMIT, async || {
        let wfs = svc.workflows().await;
        wfs.len() == 3
            && wfs
                .iter()
                .all(|w| stage_of(w, "a")["waiting_for_window_until"].is_string())
    })
    .await;
    for wf in svc.workflows().await {
        let a = stage_of(&wf, "a");
        assert_eq!(
            (a["status"].as_str(), a["attempt"].as_u64()),
            (Some("pending"), Some(0))
        );
        let until =
            chrono::DateTime::parse_from_rfc3339(a["waiting_for_window_until"].as_str().unwrap())
                .unwrap();
        let expected = from.format("%H:%M").to_string();
        assert_eq!(
            until.with_timezone(&Utc).format("%H:%M").to_string(),
            expected
        );
        assert!(stage_of(&wf, "b")["waiting_for_window_until"].is_null());
    }
    assert!(
        seen[0].lock().unwrap().is_empty(),
        "no job of stage a went out"
    );

    // Lifted live: the same file without windows.
    let without = env.pipeline_config("30s", managed);
    assert_eq!(without, config);
    eventually(
        "3 workflows completed after the window was lifted",
        LIMIT,
        async || {
            let wfs = svc.workflows().await;
            wfs.len() == 3 && wfs.iter().all(|w| w["status"] == "completed")
        },
    )
    .await;
    assert_eq!(seen[0].lock().unwrap().len(), 3);
    let (code, _) = svc.terminate();
    assert_eq!(code, Some(0), "{}", svc.logs());
}

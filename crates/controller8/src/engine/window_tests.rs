//! Scan windows in the engine, on the in-memory store, the test broker and a manual
//! clock (which starts on Wednesday 2025-11-19 at 10:00 UTC): nothing is published
//! outside a stage's windows (neither by a dispatch round nor at creation), the
//! dispatcher is woken when the window opens, a job's timeout starts when it is
//! published, and running jobs finish after their window closed.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc, Weekday};
use config8::ScanWindow;
use config8::window::parse_time;
use db8::WorkflowRepository;
use model8::{StageOutcome, StageStatus, WorkflowStatus};

use crate::testkit::{Harness, chain, confirmed, rk};

fn window(days: &[Weekday], from: &str, to: &str, tz: &str) -> ScanWindow {
    ScanWindow {
        days: days.to_vec(),
        from: parse_time(from).unwrap(),
        to: parse_time(to).unwrap(),
        timezone: tz.parse().unwrap(),
    }
}

fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 11, 19, h, m, s).unwrap()
}

#[tokio::test]
async fn outside_every_window_nothing_is_published_until_the_first_second_in() {
    let mut s = chain();
    s.workflow.stages[0].timeout = Duration::from_secs(5);
    s.workflow.windows = vec![window(&[Weekday::Wed], "10:30", "11:00", "UTC")];
    let h = Harness::new(s).await;
    h.add_domains(2).await;

    // Created at 10:00: the starter does not publish at creation outside the window.
    assert_eq!(h.engine.start_workflows().await.unwrap(), 2);
    assert_eq!(h.engine.dispatch().await.unwrap().published, 0);
    assert_eq!(confirmed(&h.broker, &rk("a")), 0);
    // The dispatcher sleeps until the window opens (no busy loop).
    assert_eq!(
        h.engine.dispatch_wake.next_after(h.clock_now()),
        Some(at(10, 30, 0))
    );

    // The last second out, then the first second in.
    h.advance(Duration::from_secs(29 * 60 + 59));
    assert_eq!(h.engine.dispatch().await.unwrap().published, 0);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.clock_now(), at(10, 30, 0));
    assert_eq!(h.engine.dispatch().await.unwrap().published, 2);
    let jobs = h.take_jobs("a");
    assert_eq!(jobs.len(), 2);

    // A job's timeout starts when it was published (10:30), not when created (10:00).
    h.advance(Duration::from_secs(5));
    assert_eq!(h.engine.expire_timeouts().await.unwrap(), 0);
    h.advance(Duration::from_millis(1));
    assert_eq!(h.engine.expire_timeouts().await.unwrap(), 2);
}

#[tokio::test]
async fn running_jobs_finish_after_the_window_closes_and_the_next_stage_waits() {
    let mut s = chain();
    s.workflow.windows = vec![window(&[], "09:00", "10:00:01", "UTC")];
    let h = Harness::new(s).await;
    h.add_domain("example.com").await;
    // 10:00:00, the last second in: published at creation.
    assert_eq!(h.engine.start_workflows().await.unwrap(), 1);
    let job = h.take_jobs("a").remove(0);
    // 10:00:01, the first second out: the running job's result still applies ...
    h.advance(Duration::from_secs(1));
    h.report(&job, StageOutcome::Completed).await;
    let v = h.wf(job.workflow_id).await.unwrap();
    assert_eq!(v.stages[0].status, StageStatus::Completed);
    assert_eq!(v.status, WorkflowStatus::Running);
    // ... but the next stage is not published until tomorrow's window.
    assert_eq!(h.engine.dispatch().await.unwrap().published, 0);
    // (The wake-up after the completed job's old deadline comes first.)
    assert_eq!(
        h.engine.dispatch_wake.next_after(at(10, 1, 1)),
        Some(Utc.with_ymd_and_hms(2025, 11, 20, 9, 0, 0).unwrap())
    );
    h.advance(Duration::from_secs(23 * 3600 - 1));
    assert_eq!(h.engine.dispatch().await.unwrap().published, 1);
    assert_eq!(h.take_jobs("b").len(), 1);
}

#[tokio::test]
async fn a_batch_claimed_before_the_window_closed_is_given_back_unpublished() {
    let mut s = chain();
    s.workflow.windows = vec![window(&[Weekday::Wed], "09:00", "10:00:01", "UTC")];
    let h = Harness::new(s).await;
    h.add_domains(2).await;
    h.create_unclaimed().await;
    let claimed = h
        .store
        .claim_due(
            "a",
            h.engine.owner,
            h.clock_now(),
            Duration::from_secs(60),
            10,
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    h.advance(Duration::from_secs(1));
    // The publish step (shared by the dispatcher and the starter) checks the window.
    let stage = h.engine.stage_settings("a");
    let p = h.engine.publish_batch(&stage, claimed).await.unwrap();
    h.engine.record(&stage, p).await.unwrap();
    assert_eq!(confirmed(&h.broker, &rk("a")), 0, "nothing published");
    // Released at once, not left to the lease: due again next Wednesday.
    let again = h
        .store
        .claim_due(
            "a",
            uuid::Uuid::new_v4(),
            h.clock_now(),
            Duration::from_secs(60),
            10,
        )
        .await
        .unwrap();
    assert_eq!(again.len(), 2);
}

#[tokio::test]
async fn a_stage_with_windows_of_its_own_ignores_the_global_ones() {
    let mut s = chain();
    // Globally closed now; stage a always open (an empty list of its own).
    s.workflow.windows = vec![window(&[Weekday::Sun], "01:00", "02:00", "UTC")];
    s.workflow.stages[0].windows = Some(Vec::new());
    let h = Harness::new(s).await;
    h.add_domain("example.com").await;
    assert_eq!(h.engine.start_workflows().await.unwrap(), 1);
    let job = h.take_jobs("a").remove(0);
    h.report(&job, StageOutcome::Completed).await;
    assert_eq!(h.engine.dispatch().await.unwrap().published, 0, "b waits");
    // A live change of the windows applies at the next round.
    let r = h.update(|s| s.workflow.windows.clear());
    assert_eq!(r.live, ["Workflow.windows"]);
    assert!(!r.needs_restart(), "{r:?}");
    assert_eq!(h.engine.dispatch().await.unwrap().published, 1);
}

#[tokio::test]
async fn a_window_across_midnight_on_a_daylight_saving_day() {
    // New York falls back on Sunday 2025-11-02 at 02:00 EDT (to 01:00 EST). A window
    // Saturday 22:00 to Sunday 03:00 New York time lasts six hours that night:
    // 02:00 UTC (22:00 EDT) to 08:00 UTC (03:00 EST).
    let mut s = chain();
    s.workflow.windows = vec![window(
        &[Weekday::Sat],
        "22:00",
        "03:00",
        "America/New_York",
    )];
    let h = Harness::new(s).await;
    let sat = Utc.with_ymd_and_hms(2025, 11, 2, 2, 0, 0).unwrap();
    let closes = Utc.with_ymd_and_hms(2025, 11, 2, 8, 0, 0).unwrap();
    let e = &h.engine;
    assert_eq!(
        e.window_closed_until("a", sat - chrono::TimeDelta::seconds(1)),
        Some(sat)
    );
    assert_eq!(e.window_closed_until("a", sat), None);
    assert_eq!(
        e.window_closed_until("a", closes - chrono::TimeDelta::seconds(1)),
        None
    );
    // Next Saturday 22:00 EST is 03:00 UTC.
    assert_eq!(
        e.window_closed_until("a", closes),
        Some(Utc.with_ymd_and_hms(2025, 11, 9, 3, 0, 0).unwrap())
    );
}

#[tokio::test]
async fn the_api_views_show_waiting_for_window_until() {
    let mut s = chain();
    s.workflow.windows = vec![window(&[Weekday::Wed], "10:30", "11:00", "UTC")];
    let h = Harness::new(s).await;
    h.add_domain("example.com").await;
    h.engine.start_workflows().await.unwrap();
    let api = crate::waking::WakingWorkflows {
        engine: h.engine.clone(),
    };
    let v = &crate::http::WorkflowApi::list(&api, &Default::default())
        .await
        .unwrap()[0];
    let until = v.stages[0]
        .waiting_for_window_until
        .as_ref()
        .map(|t| t.to_utc());
    assert_eq!(until, Some(at(10, 30, 0)));
    assert_eq!(v.stages[1].waiting_for_window_until, None, "b is not due");
    let json = serde_json::to_value(v).unwrap();
    assert!(
        json["stages"][0]["waiting_for_window_until"].is_string(),
        "{json}"
    );
    assert!(json["stages"][1].get("waiting_for_window_until").is_none());
    // Inside the window (and once published) the field is gone.
    h.advance(Duration::from_secs(30 * 60));
    let v = crate::http::WorkflowApi::get(&api, v.id).await.unwrap();
    assert_eq!(v.stages[0].waiting_for_window_until, None);
}

#[tokio::test]
async fn a_stages_own_windows_apply_live_and_are_reported_live() {
    let mut s = chain();
    // Stage a closed now (Sunday only); the clock is on a Wednesday.
    s.workflow.stages[0].windows = Some(vec![window(&[Weekday::Sun], "01:00", "02:00", "UTC")]);
    let h = Harness::new(s).await;
    h.add_domain("example.com").await;
    assert_eq!(h.engine.start_workflows().await.unwrap(), 1);
    assert_eq!(h.engine.dispatch().await.unwrap().published, 0, "closed");
    let r = h.update(|s| s.workflow.stages[0].windows = None);
    assert_eq!(r.live, ["Workflow.stages.a.windows"]);
    assert!(!r.needs_restart(), "{r:?}");
    assert_eq!(h.engine.dispatch().await.unwrap().published, 1);
}

//! End-to-end, real binary, PostgreSQL and RabbitMQ: a stray queue, full and
//! `x-overflow: reject-publish`, bound to a stage's routing key (issue 18, item 4). The
//! broker nacks every publish of the stage although the stage's queue receives it:
//! `config check` and start-up name the key, the engine warns after a few nacks and
//! stops re-publishing the attempt after a bounded number of copies.

mod common;
mod e2e_support;

use std::process::Command;
use std::time::Duration;

use common::{BIN, eventually};
use e2e_support::{Env, Service, managed, stage};

const LIMIT: Duration = Duration::from_secs(90);

/// The copies one attempt may cost while nacked before it is held back
/// (controller8's `engine::nacks::MAX_NACKED_PUBLISHES`; docs/ENGINE.md "Nacks").
const MAX_NACKED_PUBLISHES: u32 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_full_queue_on_the_stage_key_is_named_and_costs_bounded_copies() {
    let env = Env::new();
    let config = env.config(
        &[
            ("a", "{}"),
            ("stray", "{x-max-length: 0, x-overflow: reject-publish}"),
        ],
        &managed(&stage("a", &[], "1h", 3)),
    );
    // The stray section binds stage a's key.
    let yaml = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"cptm8.stray.#\"", "\"cptm8.a.#\"");
    std::fs::write(&config, yaml).unwrap();

    // config check names the key and both queues; the file still passes.
    let out = Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("cptm8.a.get.scan"), "{text}");
    assert!(text.contains("reaches 2 queues"), "{text}");
    assert!(text.contains("qa (binding cptm8.a.#)"), "{text}");
    assert!(text.contains("qstray (binding cptm8.a.#)"), "{text}");

    let svc = Service::start(&config, env.dir.path(), "svc").await;
    svc.ready().await;
    assert!(
        svc.logs().contains("reaches 2 queues"),
        "start-up warns:\n{}",
        svc.logs()
    );
    let client = env.client().await;
    env.insert_domains("nack", 1);

    eventually("the repeated nacks are named", LIMIT, async || {
        let logs = svc.logs();
        logs.contains("nacked 3 times in a row") && logs.contains("cptm8.a.get.scan")
    })
    .await;
    eventually("the attempt is held back", LIMIT, async || {
        svc.logs().contains("it is held back")
    })
    .await;
    // Every nacked copy reached qa: exactly the bounded number, and the attempt is
    // due again only after the stage's timeout (an hour), so no copy follows.
    assert_eq!(client.ready("qa").await, MAX_NACKED_PUBLISHES);
    assert_eq!(
        env.psql(
            "SELECT status || ' ' || (not_before > now() + interval '50 minutes') \
             FROM orchestratorm8_stage_run WHERE stage = 'a'"
        ),
        "pending true"
    );
    assert_eq!(client.ready("qa").await, MAX_NACKED_PUBLISHES);
}

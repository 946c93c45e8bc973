//! PostgreSQL behaviour beyond the conformance suite: migrations on empty and existing
//! databases, schemas, the statement-level trigger, lost sessions, start-up failures,
//! TLS. Each test has its own database; none restarts the server.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use db8::{
    ChangeFeed, DbError, DbHealth, DomainChange, DomainRepository, LeaderLock, NewWorkflow,
    PgChangeFeed, PgLeaderLock, PgStore, StagePlan, WorkflowFilter, WorkflowRepository,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use model8::{DomainRef, PostDomain8};
use support::{TestDb, column, eventually, next_event, value};
use uuid::Uuid;

fn post(name: &str) -> PostDomain8 {
    PostDomain8 {
        name: name.into(),
        companyname: "ACME".into(),
        enabled: true,
    }
}

/// The next event of `events`, within 20 s, is `Changed`.
async fn assert_changed(events: &mut BoxStream<'static, DomainChange>) {
    assert_eq!(
        next_event(events, Duration::from_secs(20)).await,
        Some(DomainChange::Changed)
    );
}

async fn migrated(db: &TestDb) -> PgStore {
    let store = PgStore::connect(&db.settings()).await.unwrap();
    store.migrate().await.unwrap();
    store
}

/// A migrated store on `db`, its change feed and a subscription to it (which ends when
/// the feed is dropped).
async fn migrated_with_feed(
    db: &TestDb,
) -> (PgStore, PgChangeFeed, BoxStream<'static, DomainChange>) {
    let store = migrated(db).await;
    let feed = PgChangeFeed::new(&db.settings()).unwrap();
    let events = feed.subscribe().await.unwrap();
    (store, feed, events)
}

/// A stage of a workflow's plan.
fn plan(name: &str, depends_on: &[&str]) -> StagePlan {
    StagePlan {
        name: name.into(),
        depends_on: depends_on.iter().map(|d| d.to_string()).collect(),
    }
}

/// A new workflow of `stages` for one new domain, `name` of company ACME.
fn workflow(name: &str, stages: &[StagePlan]) -> NewWorkflow {
    NewWorkflow {
        id: Uuid::new_v4(),
        domains: vec![DomainRef {
            id: Uuid::new_v4(),
            name: name.into(),
            companyname: "ACME".into(),
        }],
        stages: stages.to_vec(),
    }
}

/// Every row of cptm8domain, as text, in a stable order.
async fn dump_rows(admin: &tokio_postgres::Client, table: &str) -> Vec<String> {
    column(
        admin,
        &format!("SELECT t::text FROM {table} t ORDER BY t::text"),
        &[],
    )
    .await
}

#[tokio::test]
async fn migrations_are_tracked_and_idempotent() {
    let db = TestDb::create().await;
    let store = PgStore::connect(&db.settings()).await.unwrap();
    let applied = store.migrate().await.unwrap();
    assert_eq!(
        applied.iter().map(|m| m.version).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    );
    assert!(store.migrate().await.unwrap().is_empty());
    let admin = db.admin().await;
    let versions: Vec<i64> = column(
        &admin,
        "SELECT version FROM orchestratorm8_schema_migrations ORDER BY version",
        &[],
    )
    .await;
    assert_eq!(versions, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    // A fresh table gets the contract's shape, primary key included.
    let pk: i64 = value(
        &admin,
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'cptm8domain'::regclass \
         AND contype = 'p'",
        &[],
    )
    .await;
    assert_eq!(pk, 1);
}

#[tokio::test]
async fn concurrent_migrations_apply_each_version_once() {
    let db = TestDb::create().await;
    let store = PgStore::connect(&db.settings()).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move { s.migrate().await }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.extend(t.await.unwrap().unwrap().into_iter().map(|m| m.version));
    }
    versions.sort();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
}

/// The platform's own dump: uuid-ossp default, no primary key, duplicate names, a
/// mixed-case name and a NULL company.
async fn create_dump_table(admin: &tokio_postgres::Client, with_uuid_ossp: bool) {
    let default = if with_uuid_ossp {
        admin
            .batch_execute("CREATE EXTENSION IF NOT EXISTS \"uuid-ossp\"")
            .await
            .unwrap();
        "DEFAULT public.uuid_generate_v4()"
    } else {
        ""
    };
    admin
        .batch_execute(&format!(
            "CREATE TABLE public.cptm8domain (
                 id uuid {default},
                 name character varying(200) NOT NULL,
                 companyname character varying(50),
                 enabled boolean DEFAULT true NOT NULL
             );
             INSERT INTO public.cptm8domain (id, name, companyname, enabled) VALUES
                 (gen_random_uuid(), 'dup.example', 'A', true),
                 (gen_random_uuid(), 'dup.example', 'B', false),
                 (gen_random_uuid(), 'Upper.Example', 'C', true),
                 (gen_random_uuid(), 'nocompany.example', NULL, true);"
        ))
        .await
        .unwrap();
}

async fn existing_dump_table_is_kept(with_uuid_ossp: bool) {
    let db = TestDb::create().await;
    let admin = db.admin().await;
    create_dump_table(&admin, with_uuid_ossp).await;
    let before = dump_rows(&admin, "cptm8domain").await;
    let store = migrated(&db).await;
    assert_eq!(dump_rows(&admin, "cptm8domain").await, before);
    let constraints: i64 = value(
        &admin,
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'cptm8domain'::regclass",
        &[],
    )
    .await;
    assert_eq!(
        constraints, 0,
        "no constraint is added to an existing table"
    );
    let unique: i64 = value(
        &admin,
        "SELECT count(*) FROM pg_index WHERE indrelid = 'cptm8domain'::regclass \
         AND indisunique",
        &[],
    )
    .await;
    assert_eq!(unique, 0);

    let all = DomainRepository::list(&store).await.unwrap();
    assert_eq!(all.len(), 4);
    let nocompany = all.iter().find(|d| d.name == "nocompany.example").unwrap();
    assert_eq!(nocompany.companyname, "");
    let enabled: Vec<_> = store.stream_enabled().await.unwrap().collect().await;
    assert_eq!(enabled.len(), 3);

    // Existing names, whatever their case, conflict; new ones are inserted with an id
    // chosen by the application (the column default is not needed).
    for taken in ["dup.example", "upper.example"] {
        assert!(matches!(
            store.insert(&post(taken)).await,
            Err(DbError::Conflict(_))
        ));
    }
    let new = store.insert(&post("new.example")).await.unwrap();
    assert_eq!(DomainRepository::get(&store, new.id).await.unwrap(), new);
    // A duplicate may keep its name (e.g. to change its company) but not take another.
    let dup = all.iter().find(|d| d.name == "dup.example").unwrap();
    let mut renamed = post("dup.example");
    renamed.companyname = "Z".into();
    assert_eq!(
        store.update(dup.id, &renamed).await.unwrap().companyname,
        "Z"
    );
    assert!(matches!(
        store.update(dup.id, &post("new.example")).await,
        Err(DbError::Conflict(_))
    ));
    assert_eq!(DomainRepository::list(&store).await.unwrap().len(), 5);
    // Migrating again changes nothing.
    let rows = dump_rows(&admin, "cptm8domain").await;
    assert!(store.migrate().await.unwrap().is_empty());
    assert_eq!(dump_rows(&admin, "cptm8domain").await, rows);
}

#[tokio::test]
async fn existing_dump_table_with_uuid_ossp_default_is_kept() {
    existing_dump_table_is_kept(true).await;
}

#[tokio::test]
async fn existing_dump_table_without_id_default_is_kept() {
    existing_dump_table_is_kept(false).await;
}

#[tokio::test]
async fn a_configured_schema_is_created_and_used() {
    let db = TestDb::create().await;
    let mut settings = db.settings();
    settings.schema = "cptm8 \"orch\"".into();
    let store = PgStore::connect(&settings).await.unwrap();
    store.migrate().await.unwrap();
    let feed = PgChangeFeed::new(&settings).unwrap();
    let mut events = feed.subscribe().await.unwrap();
    let d = store.insert(&post("schema.example")).await.unwrap();
    assert_changed(&mut events).await;
    let admin = db.admin().await;
    let tables: Vec<String> = column(
        &admin,
        "SELECT table_schema || '.' || table_name FROM information_schema.tables \
         WHERE table_name LIKE 'cptm8domain' OR table_name LIKE 'orchestratorm8%' \
         ORDER BY 1",
        &[],
    )
    .await;
    assert_eq!(
        tables,
        [
            "cptm8 \"orch\".cptm8domain",
            "cptm8 \"orch\".orchestratorm8_domain_last_ended",
            "cptm8 \"orch\".orchestratorm8_leader_term",
            "cptm8 \"orch\".orchestratorm8_outbox",
            "cptm8 \"orch\".orchestratorm8_replica",
            "cptm8 \"orch\".orchestratorm8_ring_message",
            "cptm8 \"orch\".orchestratorm8_schema_migrations",
            "cptm8 \"orch\".orchestratorm8_stage_run",
            "cptm8 \"orch\".orchestratorm8_workflow",
            "cptm8 \"orch\".orchestratorm8_workflow_domain",
        ]
    );
    let n: i64 = value(
        &admin,
        "SELECT count(*) FROM \"cptm8 \"\"orch\"\"\".cptm8domain WHERE id = $1",
        &[&d.id],
    )
    .await;
    assert_eq!(n, 1);
    store.delete(d.id).await.unwrap();
    assert_changed(&mut events).await;
}

/// The payloads received on `rx` before the next one that is `marker` (each waited for
/// at most 30 s).
async fn payloads_before_the_marker(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let p = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .unwrap();
        if p == "marker" {
            return seen;
        }
        seen.push(p);
    }
}

#[tokio::test]
async fn the_trigger_notifies_once_per_statement() {
    let db = TestDb::create().await;
    let (store, _feed, mut events) = migrated_with_feed(&db).await;

    // A raw listener counts the notifications themselves.
    let (client, mut conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 user=postgres dbname={}", db.name),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(m)) = futures::future::poll_fn(|cx| conn.poll_message(cx)).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    client
        .batch_execute("LISTEN orchestratorm8_domain")
        .await
        .unwrap();

    let admin = db.admin().await;
    admin
        .batch_execute(
            "INSERT INTO cptm8domain (id, name, companyname) \
             SELECT gen_random_uuid(), 'd' || g || '.example', 'ACME' \
             FROM generate_series(1, 100000) g;
             UPDATE cptm8domain SET enabled = false WHERE name LIKE 'd1%';
             NOTIFY orchestratorm8_domain, 'marker';",
        )
        .await
        .unwrap();
    // PostgreSQL folded the identical notifications of the batch into one.
    assert_eq!(payloads_before_the_marker(&mut rx).await, ["public"]);
    // Per statement, not per row: a statement changing no row notifies too.
    admin
        .batch_execute(
            "UPDATE cptm8domain SET enabled = true WHERE false; \
             NOTIFY orchestratorm8_domain, 'marker';",
        )
        .await
        .unwrap();
    assert_eq!(payloads_before_the_marker(&mut rx).await, ["public"]);
    let row_level: i32 = value(
        &admin,
        "SELECT tgtype & 1 FROM pg_trigger WHERE tgname = 'orchestratorm8_domain_changed'",
        &[],
    )
    .await;
    assert_eq!(row_level, 0);
    assert_changed(&mut events).await;
    assert!(store.exists_enabled().await.unwrap());
}

/// The pid of the session holding advisory key `key` in `db`.
async fn lock_holder(db: &TestDb, key: i64) -> Option<i32> {
    let admin = support::admin("postgres").await;
    admin
        .query_opt(
            "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
             WHERE l.locktype = 'advisory' AND l.granted AND d.datname = $1 \
             AND l.classid = $2 AND l.objid = $3 AND l.objsubid = 1",
            &[&db.name, &((key as u64 >> 32) as u32), &(key as u64 as u32)],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

async fn terminate(pid: i32) {
    let admin = support::admin("postgres").await;
    let ok: bool = value(&admin, "SELECT pg_terminate_backend($1)", &[&pid]).await;
    assert!(ok);
}

#[tokio::test]
async fn a_lost_lock_session_is_detected() {
    let db = TestDb::create().await;
    // The lock's term table.
    PgStore::connect(&db.settings())
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let key = -0x1234_5678_9abc_def0_i64; // high bits set: classid and objid both used
    let a = PgLeaderLock::new(&db.settings(), key).unwrap();
    let b = PgLeaderLock::new(&db.settings(), key).unwrap();
    assert!(a.try_acquire().await.unwrap());
    let pid = lock_holder(&db, key).await.expect("the lock is visible");
    assert!(!b.try_acquire().await.unwrap());
    terminate(pid).await;
    eventually(Duration::from_secs(10), "the loss to be seen", || async {
        (!a.is_held().await.unwrap_or(false)).then_some(())
    })
    .await;
    // pg_terminate_backend only signals: the server frees the lock when the backend
    // has exited, which can be a moment after the client saw its connection die.
    eventually(
        Duration::from_secs(10),
        "b to take the freed lock",
        || async { b.try_acquire().await.unwrap().then_some(()) },
    )
    .await;
    assert!(b.is_held().await.unwrap());
    assert!(
        !a.try_acquire().await.unwrap(),
        "a reconnects but b holds it"
    );
    b.release().await.unwrap();
    assert_eq!(lock_holder(&db, key).await, None);
    assert!(a.try_acquire().await.unwrap());
    drop(a);
    eventually(Duration::from_secs(10), "dropping to release", || async {
        lock_holder(&db, key).await.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_feed_resyncs_after_its_session_is_terminated_and_ends_when_dropped() {
    let db = TestDb::create().await;
    let (store, feed, mut events) = migrated_with_feed(&db).await;
    let admin = support::admin("postgres").await;
    let pid: i32 = eventually(Duration::from_secs(10), "the listener", || async {
        admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 \
                 AND query LIKE 'LISTEN%'",
                &[&db.name],
            )
            .await
            .unwrap()
            .map(|r| r.get(0))
    })
    .await;
    terminate(pid).await;
    assert_eq!(
        next_event(&mut events, Duration::from_secs(30)).await,
        Some(DomainChange::Resync)
    );
    store.insert(&post("after.example")).await.unwrap();
    assert_changed(&mut events).await;
    drop(feed);
    assert_eq!(next_event(&mut events, Duration::from_secs(20)).await, None);
}

/// A TCP port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn start_up_gives_up_after_the_configured_attempts_naming_the_server() {
    let mut settings = support::settings("cptm8_nowhere");
    settings.port = closed_port();
    settings.password = config8::Secret::new("s3cr3t-pw");
    settings.retry_attempts = 3;
    settings.retry_delay = Duration::from_millis(50);
    let err = PgStore::connect(&settings).await.unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(matches!(err, DbError::Unavailable { .. }), "{shown}");
    assert!(
        shown.contains(&format!("127.0.0.1:{}/cptm8_nowhere", settings.port)),
        "{shown}"
    );
    assert!(shown.contains("postgres"), "names the user: {shown}");
    assert!(!shown.contains("s3cr3t-pw"), "{shown}");
}

#[tokio::test]
async fn an_unknown_database_is_refused_at_once_and_reported_by_name() {
    let _lock = support::ServiceLock::shared().await;
    let mut settings = support::settings("cptm8_does_not_exist");
    // Retrying cannot create the database: the first answer is final (no 30 s wait).
    settings.retry_attempts = 5;
    settings.retry_delay = Duration::from_secs(30);
    let err = tokio::time::timeout(Duration::from_secs(25), PgStore::connect(&settings))
        .await
        .expect("a missing database must not wait for a retry")
        .unwrap_err();
    assert!(matches!(err, DbError::Refused { .. }), "{err:?}");
    let err = err.to_string();
    assert!(
        err.contains("cptm8_does_not_exist") && err.contains("does not exist"),
        "{err}"
    );
    assert!(err.contains("SQLSTATE 3D000"), "{err}");
}

/// Whether the sessions of `db` opened by orchestratorm8 use TLS.
async fn sessions_use_tls(db: &TestDb) -> Vec<bool> {
    let admin = support::admin("postgres").await;
    column(
        &admin,
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = $1 AND a.application_name = 'orchestratorm8'",
        &[&db.name],
    )
    .await
}

#[tokio::test]
async fn tls_follows_sslmode_and_sslrootcert() {
    use config8::SslMode;
    let db = TestDb::create().await;
    let server_cert = support::server_certificate(&db).await;
    for (mode, tls) in [
        (SslMode::Disable, false),
        (SslMode::Prefer, true),
        (SslMode::Require, true),
    ] {
        let mut s = db.settings();
        s.sslmode = mode;
        s.min_connections = 1;
        let store = PgStore::connect(&s).await.unwrap();
        store.ping().await.unwrap();
        let seen = sessions_use_tls(&db).await;
        assert!(
            !seen.is_empty() && seen.iter().all(|t| *t == tls),
            "{mode:?}: {seen:?}"
        );
        drop(store);
        eventually(Duration::from_secs(10), "sessions to close", || async {
            sessions_use_tls(&db).await.is_empty().then_some(())
        })
        .await;
    }
    // Verified against the server's own (self-signed) certificate.
    let mut s = db.settings();
    s.sslmode = SslMode::Require;
    s.sslrootcert = Some(server_cert);
    PgStore::connect(&s).await.unwrap().ping().await.unwrap();

    // A root that did not sign the server's certificate is refused, clearly.
    let dir = tempfile::tempdir().unwrap();
    s.sslrootcert = Some(support::other_root(dir.path(), "other-ca"));
    s.retry_attempts = 1;
    let err = PgStore::connect(&s).await.unwrap_err().to_string();
    assert!(err.contains("TLS") || err.contains("certificate"), "{err}");
    assert!(err.contains(&db.name), "{err}");

    // A missing or bad file is a configuration error naming it.
    s.sslrootcert = Some(dir.path().join("missing.pem"));
    let err = PgStore::connect(&s).await.unwrap_err();
    assert!(
        matches!(&err, DbError::Invalid(m) if m.contains("missing.pem")),
        "{err}"
    );
    std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
    s.sslrootcert = Some(dir.path().join("junk.pem"));
    assert!(matches!(
        PgStore::connect(&s).await,
        Err(DbError::Invalid(_))
    ));
}

#[tokio::test]
async fn a_dropped_stream_gives_its_connection_back() {
    let db = TestDb::create().await;
    let mut settings = db.settings();
    settings.max_connections = 1;
    settings.connection_timeout = Duration::from_secs(20);
    let store = PgStore::connect(&settings).await.unwrap();
    store.migrate().await.unwrap();
    db.admin()
        .await
        .batch_execute(
            "INSERT INTO cptm8domain (id, name, companyname) \
             SELECT gen_random_uuid(), 'd' || g || '.example', NULL FROM generate_series(1, 20000) g",
        )
        .await
        .unwrap();
    let mut stream = store.stream_enabled().await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.companyname, "");
    drop(stream);
    // The pool's only connection is usable again.
    assert!(store.exists_enabled().await.unwrap());
    let all: Vec<_> = store.stream_enabled().await.unwrap().collect().await;
    let ids: HashSet<Uuid> = all.into_iter().map(|d| d.unwrap().id).collect();
    assert_eq!(ids.len(), 20000);
    assert_eq!(store.pool_stats().connections, 1);
}

#[tokio::test]
async fn large_batches_are_created_in_one_call() {
    let db = TestDb::create().await;
    let store = migrated(&db).await;
    let stages = vec![
        plan("asmm8", &[]),
        plan("naabum8", &["asmm8"]),
        plan("katanam8", &["asmm8", "naabum8"]),
    ];
    let batch: Vec<NewWorkflow> = (0..20_000)
        .map(|i| workflow(&format!("d{i}.example"), &stages))
        .collect();
    let now = Utc::now();
    let created = store.create_workflows(&batch, now).await.unwrap();
    assert_eq!(created, batch.iter().map(|w| w.id).collect::<Vec<_>>());
    assert!(
        store
            .create_workflows(&batch, now)
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = store
        .claim_due(
            "asmm8",
            Uuid::new_v4(),
            now,
            Duration::from_secs(60),
            50_000,
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 20_000);
    let one = WorkflowRepository::get(&store, batch[7].id).await.unwrap();
    assert_eq!(one.domains, ["d7.example"]);
    assert_eq!(one.stages.len(), 3);
    let listed = WorkflowRepository::list(&store, &WorkflowFilter::default())
        .await
        .unwrap();
    assert_eq!(listed.len(), 100);
    let _ = Arc::new(store);
}

#[tokio::test]
async fn a_claim_skips_a_workflow_whose_pause_is_committing() {
    // The claim-versus-pause race: a pause that commits while a claim runs must not let
    // the claim through on the workflow's status as it was before. A pause holds the
    // workflow row (FOR UPDATE) until it commits; the claim locks the workflow rows
    // too (SKIP LOCKED), so it skips a workflow being paused and, once the pause has
    // committed, re-checks the new status.
    let db = TestDb::create().await;
    let store = migrated(&db).await;
    let now = Utc::now();
    let stages = [plan("a", &[])];
    let (x, y) = (
        workflow("x.example", &stages),
        workflow("y.example", &stages),
    );
    store
        .create_workflows(&[x.clone(), y.clone()], now)
        .await
        .unwrap();
    let pausing = db.admin().await;
    pausing.batch_execute("BEGIN").await.unwrap();
    pausing
        .execute(
            "SELECT 1 FROM orchestratorm8_workflow WHERE id = $1 FOR UPDATE",
            &[&x.id],
        )
        .await
        .unwrap();
    pausing
        .execute(
            "UPDATE orchestratorm8_workflow SET status = 'paused' WHERE id = $1",
            &[&x.id],
        )
        .await
        .unwrap();
    let owner = Uuid::new_v4();
    let lease = Duration::from_secs(60);
    let claimed = store.claim_due("a", owner, now, lease, 10).await.unwrap();
    assert_eq!(
        claimed
            .iter()
            .map(|c| c.key.workflow_id)
            .collect::<Vec<_>>(),
        [y.id],
        "the workflow being paused is skipped"
    );
    pausing.batch_execute("COMMIT").await.unwrap();
    assert!(
        store
            .claim_due("a", owner, now, lease, 10)
            .await
            .unwrap()
            .is_empty(),
        "and stays unclaimed once paused"
    );
    assert_eq!(
        WorkflowRepository::get(&store, x.id).await.unwrap().stages[0].attempt,
        0,
        "never claimed"
    );
}

#[tokio::test]
async fn workflows_stored_before_the_jsonb_plan_are_migrated_and_run_as_before() {
    // Before migration 11 the plan was `text[]` (name, then dependencies, separated by
    // U+001F), and a workflow created before migration 4 had no plan but a stage-run
    // row for every stage (waiting ones included). Migration 11 turns both into the
    // jsonb plan; they are then read, promoted and completed as any other.
    let db = TestDb::create().await;
    let store = migrated(&db).await;
    let admin = db.admin().await;
    admin
        .batch_execute(
            "ALTER TABLE orchestratorm8_workflow DROP COLUMN plan; \
             ALTER TABLE orchestratorm8_workflow ADD COLUMN plan text[]; \
             ALTER TABLE orchestratorm8_stage_run ADD COLUMN depends_on text[] NOT NULL DEFAULT '{}'; \
             DELETE FROM orchestratorm8_schema_migrations WHERE version = 11",
        )
        .await
        .unwrap();
    let (id, text_plan) = (Uuid::new_v4(), Uuid::new_v4());
    let now = Utc::now();
    for (wf, plan) in [
        (id, None),
        (text_plan, Some(vec!["a", "b\u{1f}a", "c\u{1f}a\u{1f}b"])),
    ] {
        admin
            .execute(
                "INSERT INTO orchestratorm8_workflow \
                   (id, status, created_at, updated_at, active_domain, plan) \
                 VALUES ($1, 'pending', $2, $2, $3, $4)",
                &[&wf, &now, &Uuid::new_v4(), &plan],
            )
            .await
            .unwrap();
        admin
            .execute(
                "INSERT INTO orchestratorm8_workflow_domain VALUES ($1, 0, $2, 'old.example', 'ACME')",
                &[&wf, &Uuid::new_v4()],
            )
            .await
            .unwrap();
    }
    admin
        .execute(
            "INSERT INTO orchestratorm8_stage_run \
               (workflow_id, stage, position, depends_on, status, not_before, updated_at) \
             VALUES ($1, 'a', 0, '{}', 'pending', $3, $3), \
                    ($1, 'b', 1, '{a}', 'waiting', NULL, $3), \
                    ($1, 'c', 2, '{a,b}', 'waiting', NULL, $3), \
                    ($2, 'a', 0, '{}', 'pending', $3, $3)",
            &[&id, &text_plan, &now],
        )
        .await
        .unwrap();
    let applied = store.migrate().await.unwrap();
    assert_eq!(applied.len(), 1, "migration 11 applied: {applied:?}");
    for wf in [id, text_plan] {
        let plan: serde_json::Value = admin
            .query_one(
                "SELECT plan FROM orchestratorm8_workflow WHERE id = $1",
                &[&wf],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            plan,
            serde_json::json!([
                {"name": "a", "depends_on": []},
                {"name": "b", "depends_on": ["a"]},
                {"name": "c", "depends_on": ["a", "b"]},
            ]),
            "the plan of {wf}"
        );
    }
    let stages = |v: model8::WorkflowView| {
        v.stages
            .into_iter()
            .map(|s| (s.name, s.status, s.attempt))
            .collect::<Vec<_>>()
    };
    use model8::StageStatus::*;
    let owner = Uuid::new_v4();
    let lease = Duration::from_secs(60);
    // Both workflows are due at every step: each claim takes both.
    let run = |stage: &'static str| {
        let store = store.clone();
        async move {
            let c = store.claim_due(stage, owner, now, lease, 10).await.unwrap();
            assert_eq!(c.len(), 2, "{stage} due in both");
            assert!(c.iter().all(|c| c.domains[0].name == "old.example"));
            let keys: Vec<_> = c.iter().map(|c| c.key.clone()).collect();
            store.mark_running(&keys, owner, now, now).await.unwrap();
            let mut out = Vec::new();
            for key in &keys {
                out.push(store.complete_stage(key, None, now).await.unwrap());
            }
            out
        }
    };
    let assert_stages = async |want: [(&str, model8::StageStatus, u32); 3]| {
        for wf in [id, text_plan] {
            let got = stages(WorkflowRepository::get(&store, wf).await.unwrap());
            assert_eq!(
                got,
                want.map(|(name, s, a)| (name.to_owned(), s, a)),
                "{wf}"
            );
        }
    };
    assert_stages([("a", Pending, 0), ("b", Waiting, 0), ("c", Waiting, 0)]).await;
    run("a").await;
    assert_stages([("a", Completed, 1), ("b", Pending, 0), ("c", Waiting, 0)]).await;
    run("b").await;
    let done = db8::Transition::StageCompleted {
        workflow_completed: true,
    };
    assert_eq!(run("c").await, [done.clone(), done]);
    for wf in [id, text_plan] {
        let v = WorkflowRepository::get(&store, wf).await.unwrap();
        assert_eq!(v.status, model8::WorkflowStatus::Completed);
        assert!(stages(v).iter().all(|s| s.1 == Completed));
    }
}

//! `orchestratorm8 migrate` and `orchestratorm8 domains ...` as the real binary against
//! a throwaway database of the local PostgreSQL server (127.0.0.1:5432, user postgres,
//! trust authentication). Each test creates its own database and holds the shared
//! service lock (/tmp/cptm8-services.lock) while it runs.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Database, cli, free_port, text};

const PASSWORD: &str = "Pg-S3cret-Value";

/// A database named for this test, under the shared service lock; drops both.
fn database() -> Database {
    Database::create("cptm8_cli")
}

/// A configuration file in `dir` for database `db` on `port`, plus `extra` lines of the
/// `Database` section.
fn config(dir: &Path, db: &str, port: u16, extra: &str) -> PathBuf {
    let p = dir.join("configuration.yaml");
    std::fs::write(
        &p,
        format!(
            "APP_ENV: TEST\nLOG_LEVEL: \"1\"\nDatabase:\n  location: 127.0.0.1\n  port: {port}\n  \
             schema: public\n  database: {db}\n  username: postgres\n  password: \"{PASSWORD}\"\n  \
             retry_attempts: 2\n  retry_delay: 50ms\n{extra}"
        ),
    )
    .unwrap();
    p
}

fn run(cfg: &Path, args: &[&str]) -> Output {
    let (head, rest) = args.split_first().unwrap();
    let mut all: Vec<&OsStr> = vec![OsStr::new(head), OsStr::new("--config"), cfg.as_os_str()];
    all.extend(rest.iter().map(OsStr::new));
    cli(&all, &[], None)
}

fn ok(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    text(&out.stdout)
}

fn failed(out: &Output, code: i32) -> String {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stderr = text(&out.stderr);
    assert!(!stderr.contains(PASSWORD) && !text(&out.stdout).contains(PASSWORD));
    stderr
}

fn listed(cfg: &Path) -> Vec<serde_json::Value> {
    let out = ok(&run(cfg, &["domains", "list", "--json"]));
    serde_json::from_str::<Vec<serde_json::Value>>(&out).unwrap()
}

#[test]
fn migrate_then_add_list_disable_enable_remove() {
    let db = database();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &db.name, 5432, "");

    let out = ok(&run(&cfg, &["migrate"]));
    assert_eq!(
        out,
        "applied migration 1: domain table\napplied migration 2: workflow tables\n\
         applied migration 3: domain change trigger\napplied migration 4: cheaper dispatch\n\
         applied migration 5: workflow kind and stage times\napplied migration 6: observed ring\n\
         applied migration 7: retention and scan-now mark\napplied migration 8: transactional outbox\n\
         applied migration 9: leader term\napplied migration 10: replicas\n\
         applied migration 11: plan as jsonb\n\
         applied migration 12: dispatched stage status\n"
    );
    let out = ok(&run(&cfg, &["migrate"]));
    assert_eq!(
        out,
        format!("database 127.0.0.1:5432/{} is up to date\n", db.name)
    );

    let out = ok(&run(
        &cfg,
        &["domains", "add", "Example.COM.", "--company", "ACME Ltd"],
    ));
    assert!(out.starts_with("added example.com (id "), "{out}");
    let id = out["added example.com (id ".len()..][..36].to_owned();
    ok(&run(
        &cfg,
        &[
            "domains",
            "add",
            "b.example",
            "--company",
            "B",
            "--disabled",
        ],
    ));
    assert_eq!(
        db.psql(
            "SELECT name || ' ' || companyname || ' ' || enabled FROM cptm8domain ORDER BY name"
        ),
        "b.example B false\nexample.com ACME Ltd true"
    );

    let table = ok(&run(&cfg, &["domains", "list"]));
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.contains(&id) && table.contains("ACME Ltd"), "{table}");
    assert!(table.ends_with("2 domain(s)\n"), "{table}");
    let json = listed(&cfg);
    assert_eq!(json.len(), 2);
    assert_eq!(json[1]["id"], id.as_str());
    assert_eq!(json[1]["name"], "example.com");
    assert_eq!(json[1]["companyname"], "ACME Ltd");
    assert_eq!(json[1]["enabled"], true);

    let out = ok(&run(&cfg, &["domains", "disable", &id]));
    assert!(out.starts_with("disabled example.com"), "{out}");
    assert_eq!(listed(&cfg)[1]["enabled"], false);
    let out = ok(&run(&cfg, &["domains", "enable", &id]));
    assert!(out.starts_with("enabled example.com"), "{out}");
    assert_eq!(listed(&cfg)[1]["enabled"], true);
    let out = ok(&run(&cfg, &["domains", "remove", &id]));
    assert!(out.starts_with("removed example.com"), "{out}");
    assert_eq!(db.psql("SELECT count(*) FROM cptm8domain"), "1");
}

#[test]
fn invalid_input_exits_2_and_stores_nothing() {
    let db = database();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &db.name, 5432, "");
    ok(&run(&cfg, &["migrate"]));
    for (name, company, says) in [
        ("exa_mple.com", "ACME", "invalid character '_'"),
        ("10.0.0.1", "ACME", "IP addresses are not accepted"),
        ("a-.example", "ACME", "must not start or end with '-'"),
        ("", "ACME", "domain name is empty"),
        ("ok.example", "", "company name"),
    ] {
        let err = failed(
            &run(&cfg, &["domains", "add", name, "--company", company]),
            2,
        );
        assert!(err.contains(says), "{name:?}: {err}");
    }
    assert_eq!(db.psql("SELECT count(*) FROM cptm8domain"), "0");
    // Refused before the configuration is even read.
    let err = failed(
        &run(
            &dir.path().join("missing.yaml"),
            &["domains", "add", "a b", "--company", "X"],
        ),
        2,
    );
    assert!(err.contains("invalid character ' '"), "{err}");
}

#[test]
fn duplicates_and_unknown_ids_are_runtime_failures_with_clear_messages() {
    let db = database();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &db.name, 5432, "");
    ok(&run(&cfg, &["migrate"]));
    ok(&run(
        &cfg,
        &["domains", "add", "dup.example", "--company", "A"],
    ));
    let err = failed(
        &run(&cfg, &["domains", "add", "DUP.example", "--company", "B"]),
        1,
    );
    assert!(
        err.contains("a domain named \"dup.example\" already exists"),
        "{err}"
    );
    assert_eq!(db.psql("SELECT count(*) FROM cptm8domain"), "1");

    let unknown = uuid::Uuid::new_v4().to_string();
    for cmd in ["enable", "disable", "remove"] {
        let err = failed(&run(&cfg, &["domains", cmd, &unknown]), 1);
        assert!(
            err.contains(&format!("no domain with id {unknown}")),
            "{cmd}: {err}"
        );
    }
    assert_eq!(db.psql("SELECT count(*) FROM cptm8domain"), "1");
}

#[test]
fn an_unmigrated_database_gets_a_hint() {
    let db = database();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &db.name, 5432, "");
    let err = failed(&run(&cfg, &["domains", "list"]), 1);
    assert!(
        err.contains("cptm8domain") && err.contains("orchestratorm8 migrate"),
        "{err}"
    );
}

#[test]
fn an_unreachable_database_is_named_without_the_password() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "cptm8_nowhere", port, "");
    for args in [&["migrate"][..], &["domains", "list"][..]] {
        let err = failed(&run(&cfg, args), 1);
        assert!(
            err.contains(&format!(
                "database 127.0.0.1:{port}/cptm8_nowhere unavailable"
            )),
            "{err}"
        );
        // Each attempt was reported.
        assert!(err.contains("attempt=1 attempts=2"), "{err}");
    }
}

#[test]
fn configuration_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "x",
        5432,
        "  sslrootcert: /nonexistent/root.pem\n",
    );
    let err = failed(&run(&cfg, &["domains", "list"]), 2);
    assert!(err.contains("/nonexistent/root.pem"), "{err}");
    std::fs::write(&cfg, "Database:\n  port: nope\n").unwrap();
    let err = failed(&run(&cfg, &["migrate"]), 2);
    assert!(err.contains("Database.port"), "{err}");
    let err = failed(&run(&dir.path().join("absent.yaml"), &["migrate"]), 2);
    assert!(err.contains("absent.yaml"), "{err}");
}

#[test]
fn a_database_that_does_not_exist_is_a_configuration_error_named_at_once() {
    // Retrying cannot create it: exit 2 on the first answer, as libpq would.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "cptm8_never_created", 5432, "");
    for args in [&["migrate"][..], &["domains", "list"][..]] {
        let err = failed(&run(&cfg, args), 2);
        assert!(
            err.contains("database 127.0.0.1:5432/cptm8_never_created refused the connection")
                && err.contains("SQLSTATE 3D000"),
            "{err}"
        );
        assert!(
            !err.contains("not reachable; retrying"),
            "not retried: {err}"
        );
    }
}

#[test]
fn migrate_names_the_file_in_its_configuration_warnings() {
    let db = database();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &db.name, 5432, "Surprise: 1\n");
    let out = run(&cfg, &["migrate"]);
    ok(&out);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "orchestratorm8: warning: {}: Surprise: unknown key, ignored",
            cfg.display()
        )),
        "{stderr}"
    );
}

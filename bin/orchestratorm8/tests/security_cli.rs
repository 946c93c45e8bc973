//! The real binary never prints a secret: `config check` with every secret key set to
//! a canary (written in the file, given by `${VAR}`, given by an `ORCHESTRATORM8__`
//! override; valid and invalid configurations), and `migrate` / `domains` against a
//! throwaway PostgreSQL with password authentication, with the right and a wrong
//! password, at LOG_LEVEL 0. See docs/SECURITY.md.

mod security_support;

use std::path::Path;
use std::process::{Command, Output};

use security_support::*;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn orchestratorm8(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orchestratorm8"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(cwd)
        .output()
        .expect("the binary runs")
}

/// Runs the binary and checks that neither stdout nor stderr holds a canary.
fn clean(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> (Option<i32>, String, String) {
    let out = orchestratorm8(args, env, cwd);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_no_canary(&format!("stdout of {args:?}"), &stdout);
    assert_no_canary(&format!("stderr of {args:?}"), &stderr);
    (out.status.code(), stdout, stderr)
}

fn secrets_file(extra: &str) -> String {
    format!(
        "LOG_LEVEL: \"0\"\n\
         ORCHESTRATORM8:\n  Services:\n    asmm8: \"http://admin:{u}@asmm8:8000/\"\n    \
         naabum8: \"http://naabum8:8001/?token={p}\"\n\
         Database:\n  password: \"{p}\"\n\
         RabbitMQ:\n  password: '{m}'\n\
         HTTP:\n  api_token: {t}\n\
         Log:\n  apm_server_url: http://apm:8200\n  apm_secret_token: \"{a}\"\n{extra}",
        u = canary("url"),
        p = "S3cr3t-canary-pg-in-file",
        m = canary("mq"),
        t = canary("token"),
        a = canary("apm"),
    )
}

#[test]
fn config_check_shows_no_secret_however_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    let f = file.to_str().unwrap();

    // Written in the file.
    std::fs::write(&file, secrets_file("")).unwrap();
    let (code, stdout, stderr) = clean(&["config", "check", "--config", f], &[], dir.path());
    assert_eq!(code, Some(0), "{stderr}");
    for redacted in [
        "password: '***'",
        "api_token: '***'",
        "apm_secret_token: '***'",
        "http://admin:***@asmm8:8000/",
        "token=***",
    ] {
        assert!(stdout.contains(redacted), "{redacted}: {stdout}");
    }

    // From ${VAR} and from overrides.
    std::fs::write(
        &file,
        "Database: {password: \"${PGPW}\"}\nHTTP: {api_token: \"${TOKEN}\"}\n",
    )
    .unwrap();
    let (pg, token, mq, apm) = (canary("pg"), canary("token"), canary("mq"), canary("apm"));
    let env = [
        ("PGPW", pg.as_str()),
        ("TOKEN", token.as_str()),
        ("ORCHESTRATORM8__RABBITMQ__PASSWORD", mq.as_str()),
        ("ORCHESTRATORM8__LOG__APM_SECRET_TOKEN", apm.as_str()),
        ("ORCHESTRATORM8__LOG__APM_SERVER_URL", "http://apm:8200"),
    ];
    let (code, stdout, stderr) = clean(&["config", "check", "--config", f], &env, dir.path());
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.matches("'***'").count(), 4, "{stdout}");

    // Invalid configurations: the secrets around the errors stay hidden, and so do
    // secret values that are themselves invalid.
    for extra in [
        "Scheduler: {interval: 1d}\n",
        "Database2: {password: x}\n",
        "APP_ENV: prod\nRabbitMQ2: 1\n",
    ] {
        std::fs::write(&file, secrets_file(extra)).unwrap();
        let (code, _, stderr) = clean(&["config", "check", "--config", f], &[], dir.path());
        assert!(matches!(code, Some(0) | Some(2)), "{stderr}");
    }
    std::fs::write(
        &file,
        format!(
            "Database: {{password: [{}]}}\nHTTP: {{api_token: {{x: {}}}}}\n",
            canary("list"),
            canary("map")
        ),
    )
    .unwrap();
    let (code, _, stderr) = clean(&["config", "check", "--config", f], &[], dir.path());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("Database.password: got <redacted>"),
        "{stderr}"
    );
    // A secret in an override that cannot be applied.
    std::fs::write(&file, "Database: {password: x}\n").unwrap();
    let bad = canary("override");
    let (code, _, stderr) = clean(
        &["config", "check", "--config", f],
        &[("ORCHESTRATORM8__DATABASE__PASSWORD__0", bad.as_str())],
        dir.path(),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("ORCHESTRATORM8__DATABASE__PASSWORD__0"),
        "{stderr}"
    );
}

#[test]
fn database_commands_show_no_password_at_debug_level() {
    let pg = ThrowawayPg::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    let f = file.to_str().unwrap();
    let config = |password: &str| {
        std::fs::write(
            &file,
            format!(
                "LOG_LEVEL: \"0\"\nDatabase:\n  location: 127.0.0.1\n  port: {}\n  database: postgres\n  \
                 username: postgres\n  password: \"{password}\"\n  retry_attempts: 2\n  retry_delay: 50ms\n",
                pg.port
            ),
        )
        .unwrap();
    };

    // The right password (a canary too): the commands work and never print it.
    config(&pg.password);
    let (code, stdout, stderr) = clean(&["migrate", "--config", f], &[], dir.path());
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("applied migration 1"), "{stdout}");
    let (code, _, stderr) = clean(
        &[
            "domains",
            "--config",
            f,
            "add",
            "sec.example",
            "--company",
            "S",
        ],
        &[],
        dir.path(),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stdout, _) = clean(
        &["domains", "--config", f, "list", "--json"],
        &[],
        dir.path(),
    );
    assert_eq!(code, Some(0));
    assert!(stdout.contains("sec.example"), "{stdout}");

    // A wrong password: a runtime failure naming the cause.
    config(&canary("wrong"));
    for args in [
        &["migrate", "--config", f][..],
        &["domains", "--config", f, "list"],
        &[
            "domains",
            "--config",
            f,
            "add",
            "x.example",
            "--company",
            "S",
        ],
    ] {
        let (code, _, stderr) = clean(args, &[], dir.path());
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("password authentication failed for user \"postgres\""),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("127.0.0.1:{}/postgres", pg.port)),
            "{stderr}"
        );
    }
}

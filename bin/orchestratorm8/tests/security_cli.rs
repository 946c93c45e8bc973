//! The real binary never prints a secret: `config check` with every secret key set to
//! a canary (written in the file, given by `${VAR}`, given by an `ORCHESTRATORM8__`
//! override; valid and invalid configurations), and `migrate` / `domains` against a
//! throwaway PostgreSQL with password authentication, with the right and a wrong
//! password, at LOG_LEVEL 0. See docs/SECURITY.md.

mod common;
mod security_support;

use std::path::Path;
use std::process::Command;

use common::{BIN, ServiceLock, cli, free_port, launch, text};
use security_support::*;

/// Runs the binary and checks that neither stdout nor stderr holds a canary.
fn clean(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> (Option<i32>, String, String) {
    let out = cli(args, env, Some(cwd));
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

    // Invalid configurations (exit 2, the error path, naming the key): the secrets
    // around the errors stay hidden, and so do secret values that are themselves
    // invalid.
    for (extra, key) in [
        (
            "Scheduler: {interval: 1d}\n",
            "Scheduler.interval: got \"1d\"",
        ),
        ("APP_ENV: prod\n", "APP_ENV: got \"prod\""),
        ("Workflow: {stages: 5}\n", "Workflow.stages: got 5"),
    ] {
        std::fs::write(&file, secrets_file(extra)).unwrap();
        let (code, _, stderr) = clean(&["config", "check", "--config", f], &[], dir.path());
        assert_eq!(code, Some(2), "{extra}: {stderr}");
        assert!(stderr.contains("is invalid"), "{extra}: {stderr}");
        assert!(stderr.contains(key), "{extra}: {stderr}");
    }
    // A warning only (an unknown key): exit 0, the warning shown, no secret either.
    std::fs::write(
        &file,
        secrets_file("Database2: {password: x}\nRabbitMQ2: 1\n"),
    )
    .unwrap();
    let (code, _, stderr) = clean(&["config", "check", "--config", f], &[], dir.path());
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("Database2: unknown key, ignored"),
        "{stderr}"
    );
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

    // A wrong password: a configuration error (exit 2, not retried) naming the cause.
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
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
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

/// A blocking `GET` on 127.0.0.1 (reqwest); `None` while nothing answers.
fn get(port: u16, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .ok()?;
    let mut request = client.get(format!("http://127.0.0.1:{port}{path}"));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().ok()?;
    Some((response.status().as_u16(), response.text().ok()?))
}

/// A running `launch`, its stdout and stderr in files under `dir`. Killed on drop
/// (its stderr shown when the test failed).
struct Running {
    child: std::process::Child,
    err: std::path::PathBuf,
}

impl Running {
    fn start(config: &Path, port: u16, dir: &Path, label: &str) -> Running {
        let err = dir.join(format!("{label}.err"));
        let child = launch(BIN, config, port)
            .env_clear()
            .current_dir(dir)
            .stdout(std::fs::File::create(dir.join(format!("{label}.out"))).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Running { child, err }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits for the exit (at most `secs`); the exit code.
    fn exit_code(&mut self, secs: u64) -> Option<i32> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the service did not exit within {secs} s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("stderr of the service:\n{}", self.stderr());
        }
    }
}

#[test]
fn launch_at_log_level_0_logs_no_secret() {
    use std::os::unix::fs::PermissionsExt;
    let _lock = ServiceLock::shared();
    let pg = ThrowawayPg::start();
    let mq = RabbitUser::create();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    let (api_token, apm_token) = (canary("api"), canary("apm"));
    let write = |pg_password: &str, mq_password: &str| {
        std::fs::write(
            &cfg,
            format!(
                "APP_ENV: DEV\nLOG_LEVEL: \"0\"\n\
                 ORCHESTRATORM8:\n  Services: {{asmm8: \"http://admin:{pg_password}@asmm8:8000\"}}\n\
                 Database:\n  location: 127.0.0.1\n  port: {}\n  database: postgres\n  username: postgres\n  \
                 password: \"{pg_password}\"\n  retry_attempts: 2\n  retry_delay: 50ms\n\
                 RabbitMQ:\n  location: 127.0.0.1\n  port: 5672\n  username: {}\n  password: \"{mq_password}\"\n  \
                 pool: {{retry_attempts: 2, retry_delay: 50ms}}\n\
                 HTTP:\n  api_token: \"{api_token}\"\n\
                 LeaderElection:\n  enabled: false\n\
                 Log:\n  file: log/orchestratorm8.log\n  apm_server_url: \"http://127.0.0.1:{}\"\n  \
                 apm_secret_token: \"{apm_token}\"\n  apm_flush_timeout: 200ms\n",
                pg.port,
                mq.name,
                free_port(),
            ),
        )
        .unwrap();
    };
    let read = |label: &str| {
        let p = dir.path().join(label);
        std::fs::read_to_string(p).unwrap_or_default()
    };

    // A wrong database password, then a wrong RabbitMQ password: exit 2 (a
    // configuration error, not retried), the cause named, no secret.
    write(&canary("wrong-pg"), &mq.password);
    let mut svc = Running::start(&cfg, free_port(), dir.path(), "pg");
    assert_eq!(svc.exit_code(120), Some(2));
    let err = svc.stderr();
    assert_no_canary("launch's stderr", &err);
    assert!(err.contains("password authentication failed"), "{err}");

    write(&pg.password, &canary("wrong-mq"));
    let mut svc = Running::start(&cfg, free_port(), dir.path(), "mq");
    assert_eq!(svc.exit_code(120), Some(2));
    let err = svc.stderr();
    assert_no_canary("launch's stderr", &err);
    assert!(err.contains("RabbitMQ.password"), "{err}");

    // Everything right: serve, answer, take a broken configuration edit, stop.
    write(&pg.password, &mq.password);
    let port = free_port();
    let mut svc = Running::start(&cfg, port, dir.path(), "ok");
    wait_until(std::time::Duration::from_secs(120), "/ready 200", || {
        assert!(svc.child.try_wait().unwrap().is_none(), "exited");
        get(port, "/ready", None).is_some_and(|(s, _)| s == 200)
    });
    let api = "/api/orchestratorm8/workflows";
    let mut bodies = vec![];
    for (path, token) in [
        ("/ready", None),
        ("/metrics", None),
        ("/health", None),
        (api, None),
        (api, Some("wrong")),
        (api, Some(api_token.as_str())),
    ] {
        bodies.push(get(port, path, token).expect("an answer").1);
    }
    for body in &bodies {
        assert_no_canary("an HTTP response", body);
    }
    std::fs::write(
        &cfg,
        format!(
            "Database: {{port: nope, password: \"{}\"}}\nHTTP: {{api_token: [{}]}}\n",
            canary("edit"),
            canary("edit-token")
        ),
    )
    .unwrap();
    wait_until(
        std::time::Duration::from_secs(60),
        "the rejected edit logged",
        || svc.stderr().contains("configuration change rejected"),
    );
    let status = Command::new("kill")
        .args(["-TERM", &svc.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(svc.exit_code(60), Some(0));

    let err = svc.stderr();
    let file = read("log/orchestratorm8.log");
    for (what, text) in [("stderr", &err), ("the log file", &file)] {
        assert_no_canary(what, text);
        assert!(text.contains("DEBUG"), "{what} is at debug level: {text}");
        assert!(
            text.contains("configuration change rejected"),
            "{what}: {text}"
        );
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("log/orchestratorm8.log")), 0o640);
    assert_eq!(mode(&dir.path().join("log")), 0o750);
}

/// The guard of every test above, tested against a planted violation: a canary put
/// where the binary shows it by design (a key that is no secret, so `config check`
/// prints it) must make `assert_no_canary` fail on that very output.
#[test]
fn the_canary_guard_fires_on_a_planted_leak() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    let planted = canary("planted");
    std::fs::write(&file, format!("Log: {{apm_service_name: \"{planted}\"}}\n")).unwrap();
    let out = cli(
        &["config", "check", "--config", file.to_str().unwrap()],
        &[],
        Some(dir.path()),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let caught = std::panic::catch_unwind(|| assert_no_canary("stdout of config check", &stdout));
    assert!(caught.is_err(), "the guard missed {planted} in: {stdout}");
    // And it stays quiet on the same output without the canary.
    assert_no_canary("stdout without the canary", &stdout.replace(&planted, "x"));
}

//! `orchestratorm8 config check` as the real binary: exit codes, redaction, messages.
//! Every run starts from an empty environment so the caller's variables cannot leak in.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{cli, text};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/configs")
}

/// The variables the Go template references, with recognisable secrets.
const GO_ENV: &[(&str, &str)] = &[
    ("ASMM8_URL", "http://asmm8:8000"),
    ("NAABUM8_URL", "http://naabum8:8001"),
    ("KATANAM8_URL", "http://katanam8:8002"),
    ("NUM8_URL", "http://num8:8003"),
    ("POSTGRESQL_HOSTNAME", "db.internal"),
    ("POSTGRESQL_DB", "cptm8"),
    ("POSTGRESQL_USERNAME", "cptm8user"),
    ("POSTGRESQL_PASSWORD", "Pg-Passw0rd"),
    ("RABBITMQ_HOSTNAME", "mq.internal"),
    ("RABBITMQ_USERNAME", "cptm8mq"),
    ("RABBITMQ_PASSWORD", "Mq-Passw0rd"),
];

fn check(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Output {
    let all: Vec<&str> = ["config", "check"].iter().chain(args).copied().collect();
    cli(&all, env, Some(cwd))
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

#[test]
fn the_go_originals_file_passes_and_shows_no_password() {
    let dir = tempfile::tempdir().unwrap();
    let go = examples().join("go-original.yaml");
    let out = check(&["--config", go.to_str().unwrap()], GO_ENV, dir.path());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("LOG_LEVEL: 0"), "{stdout}");
    assert!(stdout.contains("location: db.internal"), "{stdout}");
    assert!(stdout.contains("pool.max_idle_time: 1h0m0s"), "{stdout}");
    assert!(stdout.contains("password: '***'"), "{stdout}");
    for secret in ["Pg-Passw0rd", "Mq-Passw0rd"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} leaked"
        );
    }
    assert_eq!(stderr, "", "no warnings for the Go file");

    // The same file with LOG_LEVEL as a number.
    let text_go = std::fs::read_to_string(&go).unwrap();
    assert!(text_go.contains("LOG_LEVEL: \"0\""));
    let numeric = write(
        dir.path(),
        "n.yaml",
        &text_go.replace("LOG_LEVEL: \"0\"", "LOG_LEVEL: 3"),
    );
    let out = check(&["--config", numeric.to_str().unwrap()], GO_ENV, dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("LOG_LEVEL: 3"));
}

#[test]
fn a_password_repeated_in_another_value_is_not_shown() {
    let dir = tempfile::tempdir().unwrap();
    let go = std::fs::read_to_string(examples().join("go-original.yaml")).unwrap();
    // A URL carrying credentials, one of them the database password.
    let env: Vec<_> = GO_ENV
        .iter()
        .copied()
        .filter(|(k, _)| *k != "ASMM8_URL")
        .chain([("ASMM8_URL", "http://admin:Pg-Passw0rd@asmm8:8000/")])
        .collect();
    let file = write(dir.path(), "c.yaml", &go);
    let out = check(&["--config", file.to_str().unwrap()], &env, dir.path());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!stdout.contains("Pg-Passw0rd"), "{stdout}");
    assert!(stdout.contains("http://admin:***@asmm8:8000/"), "{stdout}");
}

#[test]
fn a_missing_variable_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let go = examples().join("go-original.yaml");
    let env: Vec<_> = GO_ENV
        .iter()
        .copied()
        .filter(|(k, _)| *k != "RABBITMQ_PASSWORD")
        .collect();
    let out = check(&["--config", go.to_str().unwrap()], &env, dir.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("RabbitMQ.password: environment variable RABBITMQ_PASSWORD is not set"),
        "{stderr}"
    );
    assert_eq!(text(&out.stdout), "", "nothing printed on stdout");
}

#[test]
fn a_bad_port_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "c.yaml",
        "Database:\n  port: \"five\"\n  password: Pg-Passw0rd\n",
    );
    let out = check(&["--config", file.to_str().unwrap()], &[], dir.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("Database.port: got \"five\", expected an integer between 1 and 65535"),
        "{stderr}"
    );
    assert!(stderr.contains("c.yaml"), "{stderr}");
    assert!(!stderr.contains("Pg-Passw0rd"), "{stderr}");
}

#[test]
fn a_missing_file_exits_2_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope/configuration.yaml");
    let out = check(&["--config", missing.to_str().unwrap()], &[], dir.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");
    assert!(
        stderr.contains("cannot read configuration file"),
        "{stderr}"
    );
}

#[test]
fn default_path_and_environment_variable() {
    let dir = tempfile::tempdir().unwrap();
    // Without --config and ORCHESTRATORM8_CONFIG: configs/configuration.yaml under cwd.
    let out = check(&[], &[], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("configs/configuration.yaml"),
        "{}",
        text(&out.stderr)
    );
    std::fs::create_dir(dir.path().join("configs")).unwrap();
    write(
        &dir.path().join("configs"),
        "configuration.yaml",
        "LOG_LEVEL: 2\n",
    );
    let out = check(&[], &[], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("LOG_LEVEL: 2"));

    let other = write(dir.path(), "other.yaml", "LOG_LEVEL: 3\n");
    let out = check(
        &[],
        &[("ORCHESTRATORM8_CONFIG", other.to_str().unwrap())],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("LOG_LEVEL: 3"));
}

#[test]
fn warnings_go_to_stderr_and_the_output_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let managed = examples().join("managed.yaml");
    let base = std::fs::read_to_string(&managed).unwrap();
    let file = write(dir.path(), "c.yaml", &format!("{base}\nSurprise: 1\n"));
    let env = [
        ("ORCHESTRATORM8_API_TOKEN", "Api-T0ken-secret"),
        ("ORCHESTRATORM8__DATABASE__PASSWORD", "Pg-Passw0rd"),
    ];
    let out = check(&["--config", file.to_str().unwrap()], &env, dir.path());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "orchestratorm8: warning: {}: Surprise: unknown key, ignored\n",
            file.display()
        )
    );
    assert!(stdout.contains("mode: managed"), "{stdout}");
    assert!(stdout.contains("api_token: '***'"), "{stdout}");
    assert!(!stdout.contains("Api-T0ken-secret") && !stdout.contains("Pg-Passw0rd"));

    // What was printed is itself a valid configuration.
    let printed = write(dir.path(), "printed.yaml", &stdout);
    let again = check(&["--config", printed.to_str().unwrap()], &[], dir.path());
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert_eq!(text(&again.stderr), "");
}

#[test]
fn a_stage_that_no_binding_routes_is_warned_about_and_the_file_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let go = examples().join("go-original.yaml");
    let env: Vec<_> = GO_ENV
        .iter()
        .copied()
        .chain([("ORCHESTRATORM8__SCHEDULER__MODE", "managed")])
        .collect();
    let out = check(&["--config", go.to_str().unwrap()], &env, dir.path());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("mode: managed"), "{stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let prefix = format!(
        "orchestratorm8: warning: {}: Workflow.stages: stage \"num8\" publishes with routing key \"cptm8.num8.get.scan\" to topic exchange \"cptm8\", which matches no binding",
        go.display()
    );
    assert!(lines[0].starts_with(&prefix), "{stderr}");
    assert!(lines[0].contains("cptm8.qnum8.#"), "{stderr}");
}

#[test]
fn a_numeric_queue_argument_given_as_text_is_warned_about_naming_file_queue_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let go = std::fs::read_to_string(examples().join("go-original.yaml")).unwrap();
    let quoted = go.replacen(
        "\"x-max-length\": 1\n",
        "\"x-max-length\": 1\n      \"x-delivery-limit\": \"2\"\n",
        1,
    );
    assert_ne!(quoted, go);
    let file = write(dir.path(), "quoted.yaml", &quoted);
    let out = check(&["--config", file.to_str().unwrap()], GO_ENV, dir.path());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "orchestratorm8: warning: {}: ORCHESTRATORM8.naabum8.Queue-arguments.x-delivery-limit: queue \"qnaabum8\": x-delivery-limit is the text \"2\", but RabbitMQ expects an integer",
            file.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("without quotes"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // Shown as written: a warning, not a silent correction.
    assert!(stdout.contains("x-delivery-limit: '2'"), "{stdout}");
}

#[test]
fn a_user_name_equal_to_a_password_is_redacted_another_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    // RabbitMQ's defaults, guest/guest: showing the user name would show the password.
    let file = write(
        dir.path(),
        "c.yaml",
        "RabbitMQ:\n  username: guest\n  password: guest\nDatabase:\n  username: cptm8user\n  password: Pg-Passw0rd\nORCHESTRATORM8: {}\n",
    );
    let out = check(&["--config", file.to_str().unwrap()], &[], dir.path());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!stdout.contains("guest"), "{stdout}");
    assert!(!stdout.contains("Pg-Passw0rd"), "{stdout}");
    assert!(stdout.contains("username: cptm8user"), "{stdout}");
    let rabbit = stdout.split("RabbitMQ:").nth(1).unwrap();
    assert!(rabbit.contains("username: '***'"), "{stdout}");
    assert!(rabbit.contains("password: '***'"), "{stdout}");
}

#[test]
fn chain_stages_get_their_publisher_line_and_per_domain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let chain = "Scheduler: {mode: managed}\nWorkflow:\n  granularity: per_cycle\n  stages:\n    - {name: asmm8, protocol: chain}\n    - {name: naabum8, protocol: chain, depends_on: [asmm8]}\n    - {name: custom, depends_on: [naabum8]}\n";
    let f = write(dir.path(), "chain.yaml", chain);
    let out = check(&["--config", f.to_str().unwrap()], &[], dir.path());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for stage in ["asmm8", "naabum8"] {
        let line = format!(
            "#   {stage}: Publisher: [\"cptm8\", \"cptm8.orchestratorm8.{stage}.done\", \"{stage}\"]\n"
        );
        assert!(stdout.contains(&line), "{line} missing from\n{stdout}");
    }
    assert!(!stdout.contains("custom: Publisher"), "{stdout}");
    assert!(stdout.contains("protocol: chain"), "{stdout}");

    let f = write(
        dir.path(),
        "per_domain.yaml",
        &chain.replace("per_cycle", "per_domain"),
    );
    let out = check(&["--config", f.to_str().unwrap()], &[], dir.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("Workflow.stages[0].protocol") && stderr.contains("\"asmm8\""),
        "{stderr}"
    );
    assert!(!text(&out.stdout).contains("Publisher"));
}

#[test]
fn bad_windows_and_retention_exit_2_naming_the_key_path_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "windows.yaml",
        r#"
Workflow:
  fairness: company
  retention: "30d"
  windows:
    - { days: [mon, someday], from: "22:00", to: "06:00", timezone: "Mars/Olympus" }
    - { from: "9:00", to: "10:00" }
    - { from: "08:00", to: "08:00" }
"#,
    );
    let out = check(&["--config", file.to_str().unwrap()], &[], dir.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for expected in [
        "Workflow.windows[0].days[1]: got \"someday\"",
        "Workflow.windows[0].timezone: got \"Mars/Olympus\", expected an IANA time zone name",
        "Workflow.windows[1].from: got \"9:00\", expected a local time HH:MM",
        "Workflow.windows[2].to: got \"08:00\", the same as from",
    ] {
        assert!(stderr.contains(expected), "{expected} missing in {stderr}");
    }

    // The same keys with good values pass and are printed back.
    let good = write(
        dir.path(),
        "good.yaml",
        r#"
Workflow:
  fairness: company
  retention: "30d"
  windows:
    - { days: [sat, sun], from: "22:00", to: "06:00", timezone: "Europe/Madrid" }
"#,
    );
    let out = check(&["--config", good.to_str().unwrap()], &[], dir.path());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.contains("fairness: company"), "{stdout}");
    assert!(stdout.contains("retention: 720h0m0s"), "{stdout}");
    assert!(stdout.contains("timezone: Europe/Madrid"), "{stdout}");
}

//! Loading real files: the Go original's template, the shipped examples, and every kind
//! of invalid value, environment override and unknown key.

use std::path::PathBuf;
use std::time::Duration;

use config8::*;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(name)
}

/// The variables the Go template references.
fn go_env() -> Env {
    Env::empty()
        .with("ASMM8_URL", "http://asmm8:8000")
        .with("NAABUM8_URL", "http://naabum8:8001")
        .with("KATANAM8_URL", "http://katanam8:8002")
        .with("NUM8_URL", "http://num8:8003")
        .with("POSTGRESQL_HOSTNAME", "db.internal")
        .with("POSTGRESQL_DB", "cptm8")
        .with("POSTGRESQL_USERNAME", "cptm8user")
        .with("POSTGRESQL_PASSWORD", "pg-Secret-1")
        .with("RABBITMQ_HOSTNAME", "mq.internal")
        .with("RABBITMQ_USERNAME", "cptm8mq")
        .with("RABBITMQ_PASSWORD", "mq-Secret-2")
}

fn problems(yaml: &str, env: &Env) -> Vec<String> {
    match from_yaml_str(yaml, env) {
        Ok(l) => panic!("expected an invalid configuration, got {:?}", l.settings),
        Err(e) => e.problems().iter().map(ToString::to_string).collect(),
    }
}

fn load_ok(yaml: &str, env: &Env) -> Loaded {
    from_yaml_str(yaml, env).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_go_originals_template_loads_unchanged() {
    let loaded = load_with(&example("examples/configs/go-original.yaml"), &go_env()).unwrap();
    assert_eq!(loaded.warnings, [], "no warnings for the Go file");
    let s = loaded.settings;
    assert_eq!(s.app_env, AppEnv::Dev);
    assert_eq!(s.log_level, LogLevel::Debug, "LOG_LEVEL: \"0\"");
    let o = &s.orchestrator;
    assert_eq!(o.services["asmm8"], "http://asmm8:8000");
    assert_eq!(o.exchanges.len(), 3);
    assert_eq!(o.exchanges["notification"], ExchangeKind::Topic);
    assert_eq!(
        o.queues.keys().collect::<Vec<_>>(),
        ["asmm8", "katanam8", "naabum8", "num8", "reportingm8"]
    );
    let asmm8 = &o.queues["asmm8"];
    assert_eq!(
        (
            asmm8.exchange.as_str(),
            asmm8.queue.as_str(),
            asmm8.prefetch
        ),
        ("cptm8", "qasmm8", 1)
    );
    assert_eq!(asmm8.routing_keys, ["cptm8.asmm8.#"]);
    assert_eq!(asmm8.queue_arguments["x-max-length"], ArgValue::Int(1));
    assert_eq!(asmm8.max_length(), Some(1));
    assert_eq!(
        asmm8.queue_arguments["x-overflow"],
        ArgValue::Str("reject-publish".into())
    );
    assert_eq!(
        asmm8.consumer,
        Some(ConsumerSpec {
            queue: "qasmm8".into(),
            tag: "casmm8".into(),
            autoack: false
        })
    );
    let reporting = &o.queues["reportingm8"];
    assert!(
        reporting.queue_arguments.is_empty(),
        "empty Queue-arguments"
    );
    assert_eq!(reporting.exchange, "scheduler");

    assert_eq!(s.database.location, "db.internal");
    assert_eq!(s.database.port, 5432);
    assert_eq!(s.database.username, "cptm8user");
    assert_eq!(s.database.password.expose(), "pg-Secret-1");
    assert_eq!(s.rabbitmq.location, "mq.internal");
    assert_eq!(s.rabbitmq.password.expose(), "mq-Secret-2");
    assert_eq!(
        s.rabbitmq.pool,
        RabbitPoolSettings::default(),
        "null pool values"
    );

    // No new section: a bootstrap-mode service that observes the ring, healing off.
    assert_eq!(s.scheduler.mode, SchedulerMode::Bootstrap);
    assert_eq!(s.scheduler.interval, Duration::from_secs(900));
    assert!(s.scheduler.observe && !s.scheduler.heal);
    assert!(s.leader_election.enabled);
    assert_eq!(s.http.api_token, None);
}

#[test]
fn a_missing_variable_names_the_variable_and_the_key() {
    let err = load_with(&example("examples/configs/go-original.yaml"), &Env::empty()).unwrap_err();
    assert_eq!(
        err.problems().len(),
        11,
        "one problem per missing variable: {err}"
    );

    let env = go_env();
    let env: Env = Env::empty()
        .with("ASMM8_URL", env.get("ASMM8_URL").unwrap())
        .with("NAABUM8_URL", "x")
        .with("KATANAM8_URL", "x")
        .with("NUM8_URL", "x")
        .with("POSTGRESQL_HOSTNAME", "h")
        .with("POSTGRESQL_DB", "d")
        .with("POSTGRESQL_USERNAME", "u")
        .with("RABBITMQ_HOSTNAME", "h")
        .with("RABBITMQ_USERNAME", "u")
        .with("RABBITMQ_PASSWORD", "p");
    let err = load_with(&example("examples/configs/go-original.yaml"), &env).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("go-original.yaml"), "{text}");
    assert_eq!(
        err.problems()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["Database.password: environment variable POSTGRESQL_PASSWORD is not set"]
    );
}

#[test]
fn an_empty_file_gives_the_defaults() {
    let loaded = load_ok("", &Env::empty());
    assert_eq!(loaded.settings, Settings::default());
    let paths: Vec<_> = loaded.warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        paths,
        ["ORCHESTRATORM8", "Database", "RabbitMQ"],
        "absent core sections are warned about"
    );
}

#[test]
fn the_local_configuration_works_without_environment() {
    let loaded = load_with(&example("configs/configuration.yaml"), &Env::empty()).unwrap();
    assert_eq!(loaded.warnings, []);
    let s = loaded.settings;
    assert_eq!(s.database.location, "127.0.0.1");
    assert_eq!(s.database.username, "postgres");
    assert_eq!(s.database.database, "cptm8");
    assert!(s.database.password.is_empty());
    assert_eq!(s.rabbitmq.username, "guest");
    assert_eq!(s.rabbitmq.password.expose(), "guest");
    assert_eq!(s.log_level, LogLevel::Info);
    assert_eq!(s.scheduler.mode, SchedulerMode::Bootstrap);
    assert_eq!(s.http.api_token, None);
    assert_eq!(s.orchestrator.queues.len(), 5);

    let env = Env::empty()
        .with("POSTGRESQL_HOSTNAME", "pg")
        .with("ORCHESTRATORM8_MODE", "managed")
        .with("ORCHESTRATORM8_API_TOKEN", "tok");
    let s = load_with(&example("configs/configuration.yaml"), &env)
        .unwrap()
        .settings;
    assert_eq!(s.database.location, "pg");
    assert_eq!(s.scheduler.mode, SchedulerMode::Managed);
    assert_eq!(s.http.api_token, Some(Secret::new("tok")));
}

#[test]
fn the_managed_example_loads() {
    let loaded = load_with(&example("examples/configs/managed.yaml"), &Env::empty()).unwrap();
    assert_eq!(loaded.warnings, []);
    let s = loaded.settings;
    assert_eq!(s.scheduler.mode, SchedulerMode::Managed);
    assert_eq!(s.workflow.rescan_after, Duration::from_secs(86_400));
    let names: Vec<_> = s.workflow.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["asmm8", "naabum8", "katanam8", "num8"]);
    let num8 = s.stage("num8").unwrap();
    assert_eq!(num8.depends_on, ["naabum8"]);
    assert_eq!(num8.timeout, Duration::from_secs(4 * 3600));
    assert_eq!(num8.routing_key, "cptm8.num8.get.scan");
    assert_eq!(s.leader_election.lock_key, DEFAULT_LOCK_KEY);
    assert_eq!(s.log.file, None);
    assert_eq!(s.log.apm_server_url, None);
    assert_eq!(s.log.apm_secret_token, None);
}

#[test]
fn pool_values_null_zero_or_given() {
    let s = load_ok(
        "RabbitMQ:\n  pool:\n    max_connections: 0\n    min_connections: 3\n    pool.max_idle_time: 90m\n    max_lifetime: 0\n    retry_delay: 1.5s\n",
        &Env::empty(),
    )
    .settings
    .rabbitmq
    .pool;
    assert_eq!(s.max_connections, 10, "0 means the default, as in Go");
    assert_eq!(s.min_connections, 3);
    assert_eq!(s.max_idle_time, Duration::from_secs(5400));
    assert_eq!(s.max_lifetime, Duration::from_secs(7200));
    assert_eq!(s.retry_delay, Duration::from_millis(1500));
    // The key without the dot is accepted too.
    let s = load_ok("RabbitMQ: {pool: {max_idle_time: 5m}}", &Env::empty()).settings;
    assert_eq!(s.rabbitmq.pool.max_idle_time, Duration::from_secs(300));
}

#[test]
fn log_level_as_string_or_number() {
    for (text, level) in [
        ("\"0\"", LogLevel::Debug),
        ("3", LogLevel::Error),
        ("'2'", LogLevel::Warn),
    ] {
        let s = load_ok(&format!("LOG_LEVEL: {text}"), &Env::empty()).settings;
        assert_eq!(s.log_level, level, "{text}");
    }
    assert_eq!(
        problems("LOG_LEVEL: 7", &Env::empty()),
        ["LOG_LEVEL: got 7, expected 0 (debug), 1 (info), 2 (warn) or 3 (error)"]
    );
}

#[test]
fn a_bad_port_names_key_value_and_expectation() {
    assert_eq!(
        problems("Database:\n  port: \"five\"", &Env::empty()),
        ["Database.port: got \"five\", expected an integer between 1 and 65535"]
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let p = problems(
        r#"
APP_ENV: prod
Database: {port: 0, sslmode: allow}
RabbitMQ: {heartbeat: 1s, pool: {retry_delay: 10}}
ORCHESTRATORM8:
  Exchanges: {cptm8: topik}
  asmm8: {Queue: [cptm8, qasmm8], Routing-keys: []}
  naabum8: {Queue: [cptm8, qnaabum8, 70000], Consumer: [q, c, maybe]}
Scheduler: {mode: sometimes, interval: 1d}
Workflow: {granularity: per_week}
"#,
        &Env::empty(),
    );
    let expected = [
        "APP_ENV: got \"prod\", expected one of DEV, TEST, PROD",
        "ORCHESTRATORM8.Exchanges.cptm8: got \"topik\", expected one of topic, direct, fanout, headers",
        "ORCHESTRATORM8.asmm8.Queue: got a list, expected [exchange, queue, prefetch count], e.g. [\"cptm8\", \"qasmm8\", 1]",
        "ORCHESTRATORM8.naabum8.Queue[2]: got 70000, expected a prefetch count: an integer between 0 and 65535",
        "ORCHESTRATORM8.naabum8.Consumer[2]: got \"maybe\", expected the autoack flag: true or false",
        "Database.port: got 0, expected an integer between 1 and 65535",
        "Database.sslmode: got \"allow\", expected one of disable, prefer, require, verify-ca, verify-full",
        "RabbitMQ.heartbeat: got \"1s\", expected a Go duration of at least 2s",
        "RabbitMQ.pool.retry_delay: got 10, expected a Go duration such as \"30s\" or \"1h30m\": a bare number has no unit (units ns, us, µs, ms, s, m, h)",
        "Scheduler.mode: got \"sometimes\", expected one of bootstrap, managed",
        "Scheduler.interval: got \"1d\", expected a Go duration such as \"30s\" or \"1h30m\": unknown unit \"d\" (expected one of ns, us, µs, ms, s, m, h)",
        "Workflow.granularity: got \"per_week\", expected one of per_domain, per_cycle",
    ];
    assert_eq!(p, expected);
}

#[test]
fn unknown_keys_are_warnings_with_their_paths() {
    let loaded = load_ok(
        r#"
APP_ENV: DEV
Extra: 1
Database: {hostname: x}
RabbitMQ: {pool: {max_conections: 5}}
ORCHESTRATORM8:
  asmm8: {Queue: [cptm8, qasmm8, 1], Routing-keys: [a], Queue-args: {}}
Workflow:
  stages:
    - {name: asmm8, retries: 4}
"#,
        &Env::empty(),
    );
    let w: Vec<_> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        w,
        [
            "ORCHESTRATORM8.asmm8.Queue-args: unknown key, ignored",
            "Database.hostname: unknown key, ignored",
            "RabbitMQ.pool.max_conections: unknown key, ignored",
            "Workflow.stages[0].retries: unknown key, ignored",
            "Extra: unknown key, ignored",
        ]
    );
}

#[test]
fn keys_match_ignoring_case_like_viper() {
    let s = load_ok(
        "app_env: PROD\ndatabase: {PORT: 6432}\nrabbitmq: {Pool: {POOL.MAX_IDLE_TIME: 2m}}\norchestratorm8: {services: {a: b}}",
        &Env::empty(),
    )
    .settings;
    assert_eq!(s.app_env, AppEnv::Prod);
    assert_eq!(s.database.port, 6432);
    assert_eq!(s.rabbitmq.pool.max_idle_time, Duration::from_secs(120));
    assert_eq!(s.orchestrator.services["a"], "b");
    assert_eq!(
        problems("Database: {port: 1, Port: 2}", &Env::empty()),
        ["Database.port: given twice (also as \"Port\"); keep only one of them"]
    );
}

#[test]
fn environment_overrides_reach_every_key() {
    let yaml = std::fs::read_to_string(example("examples/configs/go-original.yaml")).unwrap();
    let env = go_env()
        .with("ORCHESTRATORM8__DATABASE__PASSWORD", "from-env")
        .with("ORCHESTRATORM8__DATABASE__PORT", "6432")
        .with("ORCHESTRATORM8__LOG_LEVEL", "2")
        .with("ORCHESTRATORM8__RABBITMQ__POOL__POOL_MAX_IDLE_TIME", "45m")
        .with(
            "ORCHESTRATORM8__ORCHESTRATORM8__ASMM8__QUEUE",
            "[cptm8, qasmm8x, 4]",
        )
        .with(
            "ORCHESTRATORM8__ORCHESTRATORM8__NAABUM8__QUEUE_ARGUMENTS__X_MAX_LENGTH",
            "5",
        )
        .with("ORCHESTRATORM8__ORCHESTRATORM8__NUM8__CONSUMER__2", "true")
        .with("ORCHESTRATORM8__SCHEDULER__MODE", "managed")
        .with("ORCHESTRATORM8__HTTP__API_TOKEN", "t0ken");
    let s = load_ok(&yaml, &env).settings;
    assert_eq!(s.database.password.expose(), "from-env");
    assert_eq!(s.database.port, 6432);
    assert_eq!(s.log_level, LogLevel::Warn);
    assert_eq!(s.rabbitmq.pool.max_idle_time, Duration::from_secs(2700));
    let asmm8 = &s.orchestrator.queues["asmm8"];
    assert_eq!((asmm8.queue.as_str(), asmm8.prefetch), ("qasmm8x", 4));
    assert_eq!(
        s.orchestrator.queues["naabum8"].queue_arguments["x-max-length"],
        ArgValue::Int(5),
        "an integer stays an integer"
    );
    assert!(
        s.orchestrator.queues["num8"]
            .consumer
            .as_ref()
            .unwrap()
            .autoack
    );
    assert_eq!(s.scheduler.mode, SchedulerMode::Managed);
    assert_eq!(s.http.api_token, Some(Secret::new("t0ken")));

    let env = Env::empty()
        .with("ORCHESTRATORM8__WORKFLOW__STAGES__0__TIMEOUT", "5m")
        .with("ORCHESTRATORM8__DATABASE__PORT", "five");
    let p = problems("Workflow: {stages: [{name: a}]}", &env);
    assert_eq!(
        p,
        [
            "Database.port: got \"five\", expected an integer between 1 and 65535 (set by environment variable ORCHESTRATORM8__DATABASE__PORT)"
        ]
    );
    let s = load_ok(
        "Workflow: {stages: [{name: a}]}",
        &Env::empty().with("ORCHESTRATORM8__WORKFLOW__STAGES__0__TIMEOUT", "5m"),
    )
    .settings;
    assert_eq!(s.workflow.stages[0].timeout, Duration::from_secs(300));
}

#[test]
fn overrides_apply_before_expansion() {
    // The Go file without POSTGRESQL_PASSWORD loads when the override replaces the key.
    let yaml = std::fs::read_to_string(example("examples/configs/go-original.yaml")).unwrap();
    let mut env: Env = Env::empty();
    for name in [
        "ASMM8_URL",
        "NAABUM8_URL",
        "KATANAM8_URL",
        "NUM8_URL",
        "POSTGRESQL_HOSTNAME",
        "POSTGRESQL_DB",
        "POSTGRESQL_USERNAME",
        "RABBITMQ_HOSTNAME",
        "RABBITMQ_USERNAME",
        "RABBITMQ_PASSWORD",
    ] {
        env = env.with(name, "x");
    }
    let env = env.with("ORCHESTRATORM8__DATABASE__PASSWORD", "direct");
    assert_eq!(
        load_ok(&yaml, &env).settings.database.password.expose(),
        "direct"
    );
}

#[test]
fn service_sections_and_stage_defaults() {
    let s = load_ok(
        r#"
ORCHESTRATORM8:
  Exchanges: {cptm8: topic, notification: topic, scans: direct}
  asmm8: {Queue: [scans, qasmm8, "2"], Routing-keys: ["scans.asmm8"], Consumer: [qasmm8, casmm8, true]}
Scheduler: {mode: managed}
Workflow:
  stages:
    - name: asmm8
    - name: custom-stage
      depends_on: [asmm8]
      max_in_flight: 2
      backoff: {initial: 1s, max: 1m, multiplier: 1.5}
"#,
        &Env::empty(),
    )
    .settings;
    let q = &s.orchestrator.queues["asmm8"];
    assert_eq!(q.prefetch, 2, "prefetch as a string");
    assert!(q.consumer.as_ref().unwrap().autoack, "autoack as a bool");
    let a = s.stage("asmm8").unwrap();
    assert_eq!(a.exchange, "scans", "the service section's Queue[0]");
    assert_eq!(a.routing_key, "cptm8.asmm8.get.scan");
    assert_eq!(a.max_attempts, 3);
    assert_eq!(a.backoff, BackoffSettings::default());
    let c = s.stage("custom-stage").unwrap();
    assert_eq!(c.exchange, "cptm8", "no service section: cptm8");
    assert_eq!(c.max_in_flight, 2);
    assert_eq!(c.backoff.multiplier, 1.5);
}

#[test]
fn stage_graph_and_limits_are_validated() {
    let p = problems(
        r#"
Scheduler: {mode: managed}
Workflow:
  stages:
    - {name: a, depends_on: [c]}
    - {name: b, depends_on: [a], max_attempts: 0}
    - {name: c, depends_on: [b], backoff: {multiplier: 0.5, initial: 1m, max: 10s}}
    - {name: a}
    - {name: d, depends_on: [nope]}
    - {name: "bad.name"}
    - {timeout: 1h}
"#,
        &Env::empty(),
    );
    let expected = [
        "Workflow.stages[1].max_attempts: got 0, expected an integer between 1 and 1000000",
        "Workflow.stages[2].backoff.multiplier: got 0.5, expected a number between 1.0 and 1000",
        "Workflow.stages[2].backoff.max: got 10s, expected at least backoff.initial (1m0s)",
        "Workflow.stages[5].name: got \"bad.name\", expected a stage name of letters, digits, '_' and '-' (it is part of routing keys)",
        "Workflow.stages[6].name: missing: every stage needs a name",
        "Workflow.stages: stage name \"a\" is used twice; names must be unique",
        "Workflow.stages: stage \"d\" depends on unknown stage \"nope\" (stages: a, b, c, a, d)",
        "Workflow.stages: dependency cycle: a -> c -> b -> a",
    ];
    assert_eq!(p, expected);

    assert_eq!(
        problems(
            "Scheduler: {mode: managed}\nWorkflow: {stages: []}",
            &Env::empty()
        ),
        [
            "Workflow.stages: got an empty list, expected at least one stage in managed mode (leave it out for the default pipeline)"
        ]
    );
}

#[test]
fn secrets_never_appear_in_problems() {
    let err = from_yaml_str(
        "Database: {password: {nested: hunter2}}\nHTTP: {api_token: [hunter3]}\nLog: {apm_secret_token: {x: hunter4}}",
        &Env::empty(),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(!text.contains("hunter"), "{text}");
    assert!(
        text.contains("Database.password: got <redacted>, expected a string"),
        "{text}"
    );
    assert!(text.contains("HTTP.api_token: got <redacted>"), "{text}");

    let err = from_yaml_str("Database: {password: \"abc${\"}", &Env::empty()).unwrap_err();
    assert!(!err.to_string().contains("abc"), "{err}");
}

#[test]
fn api_token_empty_is_none() {
    let s = load_ok("HTTP: {api_token: \"\"}", &Env::empty()).settings;
    assert_eq!(s.http.api_token, None);
    let s = load_ok(
        "HTTP: {api_token: \"${ORCHESTRATORM8_API_TOKEN}\"}",
        &Env::empty().with("ORCHESTRATORM8_API_TOKEN", ""),
    )
    .settings;
    assert_eq!(s.http.api_token, None, "set but empty");
}

#[test]
fn dollar_escapes_stay_literal() {
    let s = load_ok("Database: {password: \"a$${b}c$d\"}", &Env::empty()).settings;
    assert_eq!(s.database.password.expose(), "a${b}c$d");
}

#[test]
fn the_rendered_configuration_loads_back_and_hides_secrets() {
    for file in [
        "examples/configs/managed.yaml",
        "examples/configs/go-original.yaml",
    ] {
        let loaded = load_with(
            &example(file),
            &go_env().with("POSTGRESQL_PASSWORD", "pgpw"),
        )
        .unwrap();
        let text = render_redacted(&loaded.settings);
        assert!(
            !text.contains("pgpw") && !text.contains("mq-Secret-2"),
            "{text}"
        );
        assert!(text.contains("pool.max_idle_time: 1h0m0s"), "{text}");
        let again = from_yaml_str(&text, &Env::empty()).unwrap();
        assert_eq!(again.warnings, [], "{file}");
        let mut expected = loaded.settings.clone();
        expected.database.password = Secret::new("***");
        expected.rabbitmq.password = Secret::new("***");
        assert_eq!(again.settings, expected, "{file}: {text}");
    }
}

#[test]
fn unreadable_and_malformed_files() {
    let err = load_with(&PathBuf::from("/nonexistent/dir/conf.yaml"), &Env::empty()).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string().contains("/nonexistent/dir/conf.yaml"),
        "{err}"
    );

    let err = from_yaml_str("Database:\n  port: [1,\n", &Env::empty()).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    assert!(err.to_string().contains("line"), "{err}");

    let err = from_yaml_str("- a\n- b", &Env::empty()).unwrap_err();
    assert!(
        err.to_string().contains("expected a mapping of sections"),
        "{err}"
    );
}

#[test]
fn anchors_merge_keys_and_expanded_numbers() {
    let s = load_ok(
        r#"
x-queue-args: &args { "x-max-length": 1, "x-overflow": reject-publish }
ORCHESTRATORM8:
  asmm8:
    Queue: [cptm8, qasmm8, 1]
    Routing-keys: ["cptm8.asmm8.#"]
    Queue-arguments: { <<: *args, "x-max-length": 3 }
Database: { port: "${PGPORT}" }
"#,
        &Env::empty().with("PGPORT", "6543"),
    );
    let q = &s.settings.orchestrator.queues["asmm8"];
    assert_eq!(q.queue_arguments["x-max-length"], ArgValue::Int(3));
    assert_eq!(
        q.queue_arguments["x-overflow"],
        ArgValue::Str("reject-publish".into())
    );
    assert_eq!(s.settings.database.port, 6543);
    assert_eq!(
        s.warnings
            .iter()
            .map(|w| w.path.as_str())
            .collect::<Vec<_>>(),
        ["RabbitMQ", "x-queue-args"],
        "the anchor holder is an unknown key"
    );
}

#[test]
fn a_merge_key_left_by_a_nested_merge_is_refused_with_its_path() {
    // serde_norway merges one level: the inner `<<` is copied in as a plain key. Loaded,
    // it would be a service named `<<`, which `config check` prints back as a merge key
    // (found by fuzz_loader: the printed configuration did not load back).
    for text in [
        "ORCHESTRATORM8:\n  Services: {\"<<\": {\"<<\": x}}\n",
        "ORCHESTRATORM8:\n  Services: {\"<<\": [{\"<<\": x}]}\n",
    ] {
        let err = from_yaml_str(text, &Env::empty()).unwrap_err();
        let problems: Vec<String> = err.problems().iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 1, "{text:?}: {problems:#?}");
        assert!(
            problems[0].starts_with("ORCHESTRATORM8.Services.<<:")
                && problems[0].contains("merge key (<<) inside merged content"),
            "{text:?}: {problems:#?}"
        );
    }
    // One level of merging is still fine.
    let s = load_ok(
        "ORCHESTRATORM8:\n  Services: {\"<<\": {asmm8: x}}\n",
        &Env::empty(),
    );
    assert_eq!(s.settings.orchestrator.services["asmm8"], "x");
}

#[test]
fn a_stage_routing_key_that_no_binding_matches_is_a_warning() {
    // The Go template binds num8 as "cptm8.qnum8.#": in managed mode num8's jobs
    // (cptm8.num8.get.scan) would be unroutable. It still loads, unchanged.
    let go = example("examples/configs/go-original.yaml");
    let managed = go_env().with("ORCHESTRATORM8__SCHEDULER__MODE", "managed");
    let loaded = load_with(&go, &managed).unwrap();
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    let w = &warnings[0];
    assert!(w.starts_with("Workflow.stages: stage \"num8\""), "{w}");
    assert!(w.contains("routing key \"cptm8.num8.get.scan\""), "{w}");
    assert!(w.contains("topic exchange \"cptm8\""), "{w}");
    assert!(w.contains("cptm8.qnum8.#"), "{w}");
    assert_eq!(
        loaded.settings.orchestrator.queues["num8"].routing_keys,
        ["cptm8.qnum8.#"],
        "the binding is kept as written"
    );
    // Bootstrap mode publishes no stage jobs: no warning (the Go file as it is).
    assert_eq!(load_with(&go, &go_env()).unwrap().warnings, []);

    // Direct exchanges match exactly, fanout exchanges route to any bound queue,
    // headers exchanges are not judged.
    let warnings = |exchanges: &str, binding: &str| -> Vec<String> {
        load_ok(
            &format!(
                r#"
ORCHESTRATORM8:
  Exchanges: {{cptm8: topic, notification: topic, scans: {exchanges}}}
  asmm8: {{Queue: [scans, qasmm8, 1], Routing-keys: ["{binding}"]}}
Database: {{}}
RabbitMQ: {{}}
Scheduler: {{mode: managed}}
Workflow: {{stages: [{{name: asmm8, routing_key: scans.asmm8}}]}}
"#
            ),
            &Env::empty(),
        )
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect()
    };
    assert_eq!(warnings("direct", "scans.asmm8"), Vec::<String>::new());
    let w = warnings("direct", "scans.*");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("to direct exchange \"scans\"") && w[0].contains("scans.*"),
        "{w:?}"
    );
    assert_eq!(warnings("topic", "scans.*"), Vec::<String>::new());
    assert_eq!(warnings("topic", "#"), Vec::<String>::new());
    assert_eq!(warnings("fanout", "anything"), Vec::<String>::new());
    assert_eq!(warnings("headers", "anything"), Vec::<String>::new());
    let w = warnings("topic", "scans.asmm8.#.x");
    assert_eq!(w.len(), 1, "{w:?}");
}

#[test]
fn numeric_queue_arguments_given_as_text_are_warnings_and_kept_as_text() {
    let loaded = load_with(&example("examples/configs/go-original.yaml"), &go_env()).unwrap();
    assert_eq!(loaded.warnings, []);

    let yaml = r#"
ORCHESTRATORM8:
  Exchanges: {cptm8: topic, notification: topic}
  num8:
    Queue: [cptm8, qnum8, 1]
    Routing-keys: ["cptm8.num8.#"]
    Queue-arguments:
      "x-queue-type": "quorum"
      "x-delivery-limit": "2"
      "x-max-length": 1
      "x-overflow": "reject-publish"
      "x-message-ttl": "1h"
      "x-expires": 60000
      "x-custom": "5"
Database: {}
RabbitMQ: {}
"#;
    let loaded = load_ok(yaml, &Env::empty());
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(
        warnings[0].starts_with(
            "ORCHESTRATORM8.num8.Queue-arguments.x-delivery-limit: queue \"qnum8\": x-delivery-limit is the text \"2\", but RabbitMQ expects an integer"
        ),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[0].ends_with("(write x-delivery-limit: 2 without quotes)"),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[1].starts_with("ORCHESTRATORM8.num8.Queue-arguments.x-message-ttl: queue \"qnum8\": x-message-ttl is the text \"1h\""),
        "{}",
        warnings[1]
    );
    assert!(!warnings[1].contains("without quotes"), "{}", warnings[1]);
    // Not coerced: what is written is what is declared.
    let args = &loaded.settings.orchestrator.queues["num8"].queue_arguments;
    assert_eq!(args["x-delivery-limit"], ArgValue::Str("2".into()));
    assert_eq!(args["x-max-length"], ArgValue::Int(1));

    // An environment override is read as a YAML scalar, so it gives an integer.
    let env = Env::empty().with(
        "ORCHESTRATORM8__ORCHESTRATORM8__NUM8__QUEUE_ARGUMENTS__X_DELIVERY_LIMIT",
        "3",
    );
    let loaded = load_ok(yaml, &env);
    assert_eq!(
        loaded.settings.orchestrator.queues["num8"].queue_arguments["x-delivery-limit"],
        ArgValue::Int(3)
    );
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
}

#[test]
fn warnings_never_show_a_secret() {
    // A routing key, binding and queue argument that contain the passwords.
    let yaml = r#"
ORCHESTRATORM8:
  Exchanges: {cptm8: topic, notification: topic}
  x:
    Queue: [cptm8, "q-Pg-Secret-9", 1]
    Routing-keys: ["cptm8.Pg-Secret-9.#"]
    Queue-arguments: {"x-max-length": "Mq-Secret-8"}
Database: {password: Pg-Secret-9}
RabbitMQ: {password: Mq-Secret-8}
Scheduler: {mode: managed}
Workflow: {stages: [{name: a, routing_key: "a.Mq-Secret-8"}]}
"#;
    let loaded = load_ok(yaml, &Env::empty());
    let text: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 2, "{text:#?}");
    for w in &text {
        assert!(!w.contains("Secret"), "{w}");
        assert!(w.contains("***"), "{w}");
    }
}

#[test]
fn stage_protocols_and_chain_needs_per_cycle() {
    let s = load_ok(
        r#"
Scheduler: {mode: managed}
Workflow:
  granularity: per_cycle
  stages:
    - {name: asmm8, protocol: chain}
    - {name: custom, depends_on: [asmm8]}
"#,
        &Env::empty(),
    )
    .settings;
    assert_eq!(s.stage("asmm8").unwrap().protocol, StageProtocol::Chain);
    assert_eq!(s.stage("custom").unwrap().protocol, StageProtocol::Report);
    let p = problems(
        r#"
Scheduler: {mode: managed}
Workflow:
  stages:
    - {name: asmm8}
    - {name: naabum8, protocol: chain, depends_on: [asmm8]}
"#,
        &Env::empty(),
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].contains("Workflow.stages[1].protocol")
            && p[0].contains("naabum8")
            && p[0].contains("per_cycle"),
        "{p:?}"
    );
    let p = problems(
        "Workflow:\n  stages:\n    - {name: a, protocol: carrier-pigeon}\n",
        &Env::empty(),
    );
    assert!(
        p[0].contains("protocol") && p[0].contains("carrier-pigeon"),
        "{p:?}"
    );
}

#[test]
fn a_stage_routing_key_that_reaches_several_queues_is_a_warning() {
    // A second queue bound to asmm8's key: a full reject-publish one would make every
    // asmm8 job nacked although qasmm8 received it.
    let yaml = r#"
ORCHESTRATORM8:
  Exchanges: {cptm8: topic, notification: topic}
  asmm8: {Queue: [cptm8, qasmm8, 1], Routing-keys: ["cptm8.asmm8.#"]}
  audit: {Queue: [cptm8, qaudit, 1], Routing-keys: ["cptm8.*.get.scan"], Queue-arguments: {x-max-length: 0, x-overflow: reject-publish}}
Database: {}
RabbitMQ: {}
Scheduler: {mode: managed}
Workflow: {stages: [{name: asmm8}]}
"#;
    let loaded = load_ok(yaml, &Env::empty());
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    let w = &warnings[0];
    assert!(w.starts_with("Workflow.stages: stage \"asmm8\""), "{w}");
    assert!(w.contains("routing key \"cptm8.asmm8.get.scan\""), "{w}");
    assert!(w.contains("reaches 2 queues"), "{w}");
    assert!(w.contains("qasmm8 (binding cptm8.asmm8.#)"), "{w}");
    assert!(w.contains("qaudit (binding cptm8.*.get.scan)"), "{w}");
    assert!(w.contains("reject-publish"), "{w}");
    // One queue bound twice to the key is one queue: no warning.
    let once = yaml
        .replace("[cptm8, qaudit, 1]", "[cptm8, qasmm8, 1]")
        .replace(
            ", Queue-arguments: {x-max-length: 0, x-overflow: reject-publish}",
            "",
        );
    assert_eq!(load_ok(&once, &Env::empty()).warnings, []);
}

//! Bad command lines given to the real binary: every usage error exits 2 with the
//! problem named on stderr and nothing on stdout, `--help` exits 0 with the usage on
//! stdout (CONTRACT section 4). Catalogued in docs/BAD_INPUT.md.
//!
//! Only `add_with_a_bad_name_stores_nothing` uses a server (its own database on the
//! local PostgreSQL, under the shared service lock); the others fail before any
//! configuration is read.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Database, cli, text};

/// Runs the binary with `args` in an empty environment and an empty directory (so that
/// no configuration file can be found by accident).
fn run<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    cli(args, &[], Some(dir.path()))
}

/// Asserts a usage error: exit 2, nothing on stdout, stderr holding every `says`.
fn usage_error<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S], says: &[&str]) -> String {
    let out = run(args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(stdout, "", "{args:?}: nothing on stdout");
    for s in says {
        assert!(
            stderr.contains(s),
            "{args:?}: {s:?} not in stderr: {stderr}"
        );
    }
    stderr
}

#[test]
fn no_subcommand_exits_2_with_the_usage() {
    let err = usage_error::<&str>(
        &[],
        &[
            "One of the following subcommands must be present",
            "Run orchestratorm8 --help",
        ],
    );
    for sub in ["launch", "config", "migrate", "domains"] {
        assert!(err.contains(sub), "{sub} listed: {err}");
    }
}

#[test]
fn an_unknown_subcommand_or_flag_exits_2() {
    usage_error(&["bogus"], &["bogus"]);
    usage_error(&["--bogus"], &["--bogus"]);
    usage_error(&["launch", "--bogus"], &["--bogus"]);
    usage_error(&["launch", "extra"], &["extra"]);
    usage_error(&["config"], &["subcommands must be present", "check"]);
    usage_error(&["config", "show"], &["show"]);
    usage_error(&["config", "check", "extra"], &["extra"]);
    usage_error(&["migrate", "now"], &["now"]);
    usage_error(&["domains"], &["subcommands must be present", "enable"]);
    usage_error(&["domains", "purge"], &["purge"]);
    usage_error(&["domains", "list", "--yaml"], &["--yaml"]);
}

#[test]
fn help_exits_0_on_stdout() {
    for args in [
        &["--help"][..],
        &["help"],
        &["launch", "--help"],
        &["config", "check", "--help"],
        &["migrate", "--help"],
        &["domains", "add", "--help"],
    ] {
        let out = run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).starts_with("Usage: orchestratorm8"),
            "{args:?}: {}",
            text(&out.stdout)
        );
        assert_eq!(text(&out.stderr), "", "{args:?}");
    }
    let out = run(&["launch", "--help"]);
    let help = text(&out.stdout);
    for flag in ["--ip", "--port", "--config"] {
        assert!(help.contains(flag), "{help}");
    }
}

#[test]
fn launch_refuses_a_bad_port_or_address() {
    for port in ["99999", "65536", "-1", "abc", "", "8005.5"] {
        usage_error(&["launch", "--port", port], &["--port"]);
    }
    for ip in ["not-an-ip", "256.0.0.1", "0.0.0.0:8005", "", "localhost"] {
        usage_error(&["launch", "--ip", ip], &["--ip"]);
    }
    usage_error(&["launch", "--port"], &["--port"]);
    usage_error(&["launch", "--ip"], &["--ip"]);
    usage_error(&["launch", "--config"], &["--config"]);
    // The value is quoted back, so the operator sees what was refused.
    usage_error(&["launch", "--port", "99999"], &["99999"]);
    usage_error(&["launch", "--ip", "not-an-ip"], &["not-an-ip"]);
}

#[test]
fn domain_ids_must_be_uuids() {
    for cmd in ["enable", "disable", "remove"] {
        for id in [
            "not-a-uuid",
            "",
            "123",
            "6f1c1d0e-8a4b-4c1e-9f7a-2b3c4d5e6f7",
        ] {
            usage_error(&["domains", cmd, id], &["id"]);
        }
        usage_error(&["domains", cmd], &["id"]);
        usage_error(
            &[
                "domains",
                cmd,
                "6f1c1d0e-8a4b-4c1e-9f7a-2b3c4d5e6f70",
                "6f1c1d0e-8a4b-4c1e-9f7a-2b3c4d5e6f71",
            ],
            &[],
        );
    }
}

#[test]
fn domains_add_needs_a_name_and_a_company() {
    usage_error(&["domains", "add"], &["name"]);
    usage_error(&["domains", "add", "a.example"], &["--company"]);
    usage_error(
        &["domains", "add", "a.example", "--company"],
        &["--company"],
    );
    // A name starting with '-' reads as an unknown flag: still a usage error.
    usage_error(
        &["domains", "add", "-a.example", "--company", "X"],
        &["Unrecognized argument: -a.example"],
    );
}

#[test]
fn domains_add_refuses_bad_names_before_reading_the_configuration() {
    let long = format!("{}.example", "a.".repeat(100));
    let label = format!("{}.example", "a".repeat(64));
    let cases: &[(&str, &str, &str)] = &[
        ("bad_name!", "X", "invalid character '_'"),
        ("exa mple.com", "X", "invalid character ' '"),
        ("example.com/path", "X", "invalid character '/'"),
        ("a..example", "X", "must be 1 to 63 characters"),
        (&label, "X", "must be 1 to 63 characters"),
        (&long, "X", "at most 200 are allowed"),
        ("a-.example", "X", "must not start or end with '-'"),
        ("192.168.0.1", "X", "IP addresses are not accepted"),
        ("", "X", "domain name is empty"),
        (".", "X", "domain name is empty"),
        ("ok.example", "", "company name"),
        ("ok.example", "   ", "company name"),
        ("ok.example", "ACME\u{7}Ltd", "company name"),
        (
            "ok.example",
            "A company name much longer than fifty characters in total",
            "company name",
        ),
    ];
    for (name, company, says) in cases {
        // No configuration file exists: the name is refused first.
        usage_error(&["domains", "add", name, "--company", company], &[says]);
    }
}

#[cfg(unix)]
#[test]
fn a_non_utf8_argument_exits_2() {
    use std::os::unix::ffi::OsStrExt;
    let bad = OsStr::from_bytes(b"ex\xffample.com");
    usage_error(
        &[OsStr::new("domains"), OsStr::new("add"), bad],
        &["not valid UTF-8"],
    );
    usage_error(
        &[
            OsStr::new("config"),
            OsStr::new("check"),
            OsStr::new("--config"),
            bad,
        ],
        &["not valid UTF-8"],
    );
}

#[test]
fn configuration_paths_that_are_not_files_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.yaml");
    std::fs::write(&garbage, [0xff, 0xfe, 0x00, 0x01]).unwrap();
    let not_yaml = dir.path().join("not.yaml");
    std::fs::write(&not_yaml, "Database: [unclosed\n").unwrap();
    let list = dir.path().join("list.yaml");
    std::fs::write(&list, "- a\n- b\n").unwrap();
    let cases: &[(&Path, &str)] = &[
        (dir.path(), "cannot read configuration file"),
        (&garbage, "cannot read configuration file"),
        (&not_yaml, "is not valid YAML"),
        (&list, "expected a mapping of sections"),
    ];
    for (path, says) in cases {
        let p = path.as_os_str();
        let o = OsStr::new;
        for args in [
            vec![o("config"), o("check"), o("--config"), p],
            vec![o("migrate"), o("--config"), p],
            vec![o("domains"), o("--config"), p, o("list")],
        ] {
            usage_error(&args, &[says, &path.display().to_string()]);
        }
    }
}

/// A database of the local PostgreSQL for one test (under the shared service lock),
/// and a configuration file `c.yaml` for it in a temporary directory: `before`, the
/// `Database` section, then `after`.
fn database_and_config(before: &str, after: &str) -> (Database, tempfile::TempDir, PathBuf) {
    let db = Database::create("cptm8_badcli");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "{before}Database:\n  location: 127.0.0.1\n  port: 5432\n  database: {}\n  \
             username: postgres\n{after}",
            db.name
        ),
    )
    .unwrap();
    (db, dir, cfg)
}

/// The domains stored in `db`.
fn count(db: &Database) -> String {
    db.psql("SELECT count(*) FROM cptm8domain")
}

#[test]
fn add_with_a_bad_name_stores_nothing() {
    let (db, _dir, cfg) = database_and_config("", "");
    let cfg = cfg.to_str().unwrap();
    let migrate = run(&["migrate", "--config", cfg]);
    assert_eq!(migrate.status.code(), Some(0), "{}", text(&migrate.stderr));
    for (name, company) in [("bad_name!", "X"), ("good.example", ""), ("10.0.0.1", "X")] {
        usage_error(
            &[
                "domains",
                "--config",
                cfg,
                "add",
                name,
                "--company",
                company,
            ],
            &[],
        );
    }
    assert_eq!(count(&db), "0");
    // The same command with good input does store (so the count above can fail).
    let ok = run(&[
        "domains",
        "--config",
        cfg,
        "add",
        "good.example",
        "--company",
        "X",
    ]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert_eq!(count(&db), "1");
}

#[test]
fn launch_with_a_bad_configuration_exits_2_before_touching_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yaml");
    usage_error(
        &[
            OsStr::new("launch"),
            OsStr::new("--config"),
            missing.as_os_str(),
        ],
        &["cannot read configuration file", "missing.yaml"],
    );
    let bad = dir.path().join("bad.yaml");
    // The database port is one nothing listens on: a server would not be reached anyway,
    // but the configuration is refused first (exit 2, not 1).
    std::fs::write(
        &bad,
        "Database: {port: 1}\nScheduler: {mode: sometimes}\nWorkflow: {stages: [{name: a, depends_on: [b]}]}\n",
    )
    .unwrap();
    let err = usage_error(
        &[
            OsStr::new("launch"),
            OsStr::new("--config"),
            bad.as_os_str(),
        ],
        &["Scheduler.mode", "sometimes"],
    );
    assert!(err.contains("Workflow.stages"), "{err}");
}

#[test]
fn launch_on_a_port_in_use_exits_1_naming_the_address() {
    let (_db, _dir, cfg) =
        database_and_config("LOG_LEVEL: \"2\"\n", "LeaderElection: {enabled: false}\n");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = run(&[
        "launch",
        "--ip",
        "127.0.0.1",
        "--port",
        &port,
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("address 127.0.0.1:{port} already in use")),
        "{stderr}"
    );
}

#[test]
fn config_is_accepted_after_a_subcommands_options() {
    // CONTRACT section 4: `--config` anywhere among a command's options. The file does
    // not exist, so each command gets as far as reading it and names it (exit 2, a
    // configuration error), instead of refusing the flag.
    for args in [
        &[
            "domains",
            "add",
            "x.example",
            "--company",
            "C",
            "--config",
            "nowhere.yaml",
        ][..],
        &["domains", "list", "--json", "--config", "nowhere.yaml"],
        &["launch", "--port", "8005", "--config", "nowhere.yaml"],
        &["migrate", "--config=nowhere.yaml"],
    ] {
        let err = usage_error(args, &["nowhere.yaml"]);
        assert!(!err.contains("Unrecognized argument"), "{args:?}: {err}");
    }
    usage_error(
        &["migrate", "--config", "a.yaml", "--config", "b.yaml"],
        &["--config given more than once"],
    );
}

/// docs/BAD_INPUT.md §1, the RabbitMQ row: port 0 is refused by the configuration
/// loader (exit 2 naming the key, from `config check` and `launch` alike); a `tls_ca`
/// that does not exist passes the loader and is refused when `launch` builds the
/// broker endpoint: exit 2 too (a configuration error, not retried), naming the key
/// and the file.
#[test]
fn launch_with_a_bad_rabbitmq_port_or_tls_ca_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let zero = dir.path().join("zero.yaml");
    std::fs::write(&zero, "RabbitMQ: {port: 0}\n").unwrap();
    for cmd in [&["config", "check"][..], &["launch", "--port", "0"][..]] {
        let mut args: Vec<&OsStr> = cmd.iter().map(OsStr::new).collect();
        args.extend([OsStr::new("--config"), zero.as_os_str()]);
        usage_error(
            &args,
            &["RabbitMQ.port: got 0, expected an integer between 1 and 65535"],
        );
    }

    let (_db, _dir, cfg) = database_and_config(
        "",
        "RabbitMQ:\n  tls: true\n  tls_ca: /nonexistent/ca.pem\n",
    );
    let migrate = run(&["migrate", "--config", cfg.to_str().unwrap()]);
    assert_eq!(migrate.status.code(), Some(0), "{}", text(&migrate.stderr));
    let mut child = common::launch(common::BIN, &cfg, common::free_port())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("launch with a missing RabbitMQ.tls_ca still runs after 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("RabbitMQ.tls_ca"), "{stderr}");
    assert!(stderr.contains("/nonexistent/ca.pem"), "{stderr}");
}

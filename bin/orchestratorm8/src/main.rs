//! `orchestratorm8`: the CPTM8 coordinator.
//!
//! This binary only parses flags and wires the library crates together: it is the one
//! place where concrete implementations (PostgreSQL, RabbitMQ) meet `controller8`.

mod cli;
mod cmd;

use std::ffi::OsString;
use std::process::ExitCode;

use argh::{EarlyExit, FromArgs};

fn main() -> ExitCode {
    match parse(std::env::args_os().collect()) {
        Ok(cli) => cmd::run(cli),
        Err(code) => code,
    }
}

/// The command paths whose arguments struct holds `--config`.
const CONFIG_OWNERS: &[&[&str]] = &[
    &["launch"],
    &["migrate"],
    &["domains"],
    &["config", "check"],
];

/// Moves `--config PATH` (or `--config=PATH`), wherever it is among a command's
/// options, to right after the (sub)command that declares it (CONTRACT section 4:
/// `orchestratorm8 domains add x.example --company C --config f.yaml`). argh only
/// accepts an option on the command that declares it. Nothing changes for an
/// unknown command, after `--`, or when `--config` has no value (argh then reports
/// it); `--config` twice is an error.
fn hoist_config(args: Vec<&str>) -> Result<Vec<&str>, String> {
    let Some(owner) = CONFIG_OWNERS
        .iter()
        .find(|o| args.len() >= o.len() && args[..o.len()] == o[..])
    else {
        return Ok(args);
    };
    let mut rest = Vec::with_capacity(args.len());
    let mut config: Vec<&str> = Vec::new();
    let mut options = args[owner.len()..].iter().copied();
    while let Some(a) = options.next() {
        if a == "--" {
            rest.push(a);
            rest.extend(options);
            break;
        }
        match a.strip_prefix("--config=") {
            Some(v) => config.push(v),
            None if a != "--config" => rest.push(a),
            // Without a value it is left for argh to report.
            None => match options.next() {
                Some(v) => config.push(v),
                None => rest.push(a),
            },
        }
    }
    if config.len() > 1 {
        return Err("--config given more than once".into());
    }
    let mut out: Vec<&str> = args[..owner.len()].to_vec();
    if let Some(path) = config.first() {
        out.push("--config");
        out.push(path);
    }
    out.extend(rest);
    Ok(out)
}

/// Parses the command line as `argh::from_env` does, with the exit codes of CONTRACT
/// section 4 (argh's own helper exits 1 on a usage error): `--help` prints the usage
/// on stdout and exits 0; a bad argument (unknown subcommand or flag, a missing or
/// unparsable value, an argument that is not UTF-8) prints the error on stderr and
/// exits 2.
fn parse(args: Vec<OsString>) -> Result<cli::Cli, ExitCode> {
    let usage_error = ExitCode::from(2);
    let strings = args
        .into_iter()
        .map(OsString::into_string)
        .collect::<Result<Vec<String>, OsString>>()
        .map_err(|bad| {
            let bad = bad.to_string_lossy();
            eprintln!("orchestratorm8: error: argument {bad:?} is not valid UTF-8");
            usage_error
        })?;
    let cmd = strings
        .first()
        .and_then(|p| std::path::Path::new(p).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("orchestratorm8");
    let rest = match hoist_config(strings.iter().skip(1).map(String::as_str).collect()) {
        Ok(rest) => rest,
        Err(e) => {
            eprintln!("orchestratorm8: error: {e}\nRun {cmd} --help for more information.");
            return Err(usage_error);
        }
    };
    cli::Cli::from_args(&[cmd], &rest).map_err(|EarlyExit { output, status }| match status {
        Ok(()) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(()) => {
            eprintln!("{output}\nRun {cmd} --help for more information.");
            usage_error
        }
    })
}

#[cfg(test)]
mod tests {
    use super::hoist_config;

    #[test]
    fn config_is_accepted_anywhere_among_a_commands_options() {
        fn h<'a>(a: &[&'a str]) -> Result<Vec<&'a str>, String> {
            hoist_config(a.to_vec())
        }
        assert_eq!(
            h(&[
                "domains",
                "add",
                "x.example",
                "--company",
                "C",
                "--config",
                "f.yaml"
            ])
            .unwrap(),
            [
                "domains",
                "--config",
                "f.yaml",
                "add",
                "x.example",
                "--company",
                "C"
            ]
        );
        assert_eq!(
            h(&["domains", "list", "--config=f.yaml", "--json"]).unwrap(),
            ["domains", "--config", "f.yaml", "list", "--json"]
        );
        assert_eq!(
            h(&["launch", "--port", "1", "--config", "f.yaml"]).unwrap(),
            ["launch", "--config", "f.yaml", "--port", "1"]
        );
        assert_eq!(
            h(&["config", "check", "--config", "f.yaml"]).unwrap(),
            ["config", "check", "--config", "f.yaml"]
        );
        // Unchanged: other commands, after `--`, a missing value.
        assert_eq!(
            h(&["bogus", "--config", "f"]).unwrap(),
            ["bogus", "--config", "f"]
        );
        assert_eq!(h(&["launch", "--config"]).unwrap(), ["launch", "--config"]);
        assert_eq!(
            h(&["domains", "add", "--", "--config", "x"]).unwrap(),
            ["domains", "add", "--", "--config", "x"]
        );
        assert!(h(&["migrate", "--config", "a", "--config", "b"]).is_err());
    }
}

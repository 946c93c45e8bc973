//! Architecture invariants (docs/ARCHITECTURE.md) checked mechanically, in the spirit of
//! rust-analyzer's tidy tests: the crate dependency rules and the "traits, not concrete
//! implementations" rule of controller8.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Every workspace package with the names of its workspace (path) dependencies, and
/// all its normal (non-dev) external dependencies.
fn packages() -> BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut map = BTreeMap::new();
    for p in meta["packages"].as_array().unwrap() {
        let mut ours = BTreeSet::new();
        let mut external = BTreeSet::new();
        for d in p["dependencies"].as_array().unwrap() {
            if d["kind"].as_str() == Some("dev") {
                continue;
            }
            let name = d["name"].as_str().unwrap().to_owned();
            if d.get("path").is_some_and(|v| !v.is_null()) {
                ours.insert(name);
            } else {
                external.insert(name);
            }
        }
        map.insert(p["name"].as_str().unwrap().to_owned(), (ours, external));
    }
    map
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn crate_dependency_rules_hold() {
    let pkgs = packages();
    let allowed: &[(&str, &[&str])] = &[
        ("model8", &[]),
        ("config8", &["model8"]),
        ("log8", &["config8", "model8"]),
        ("db8", &["model8", "config8"]),
        ("amqp8", &["model8", "config8"]),
        ("controller8", &["model8", "config8", "db8", "amqp8"]),
        (
            "cptm8-examples",
            &["model8", "config8", "log8", "amqp8", "db8"],
        ),
    ];
    for (krate, ok) in allowed {
        let (ours, _) = pkgs
            .get(*krate)
            .unwrap_or_else(|| panic!("crate {krate} is missing"));
        let ok = set(ok);
        let extra: Vec<_> = ours.difference(&ok).collect();
        assert!(
            extra.is_empty(),
            "{krate} must not depend on {extra:?} (docs/ARCHITECTURE.md)"
        );
    }
}

#[test]
fn model8_has_no_io_dependencies() {
    let pkgs = packages();
    let (_, external) = &pkgs["model8"];
    let io = [
        "tokio",
        "amqprs",
        "tokio-postgres",
        "bb8",
        "warp",
        "notify",
        "reqwest",
        "hyper",
    ];
    for dep in io {
        assert!(
            !external.contains(dep),
            "model8 must do no I/O but depends on {dep}"
        );
    }
}

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn controller8_names_no_concrete_implementation() {
    let mut files = Vec::new();
    rust_sources(&workspace_root().join("crates/controller8/src"), &mut files);
    assert!(!files.is_empty());
    // Concrete PostgreSQL/RabbitMQ types and drivers: only the binary may use them.
    let forbidden = [
        "PgStore",
        "PgLeaderLock",
        "PgChangeFeed",
        "tokio_postgres",
        "bb8_postgres",
        "amqprs",
        "AmqpBroker",
        "amqp8::connect",
    ];
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for word in forbidden {
            assert!(
                !text.contains(word),
                "{} names the concrete `{word}`; controller8 must use db8/amqp8 traits",
                f.display()
            );
        }
    }
}

#[test]
fn every_library_crate_states_its_purpose() {
    for krate in ["model8", "config8", "log8", "db8", "amqp8", "controller8"] {
        let lib = workspace_root().join(format!("crates/{krate}/src/lib.rs"));
        let text = std::fs::read_to_string(&lib).unwrap();
        assert!(
            text.starts_with("//! `"),
            "{} must open with a `//!` summary",
            lib.display()
        );
        assert!(
            text.contains("Architecture invariant"),
            "{} must state what it must not depend on",
            lib.display()
        );
    }
}

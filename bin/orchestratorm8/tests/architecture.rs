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
        ("demo8", &["model8", "config8", "log8", "amqp8", "db8"]),
        ("sibling_consumer", &["config8", "amqp8"]),
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

/// External crates by family, with the workspace packages allowed to take each family
/// as a normal dependency. A package outside the list that takes one breaks an
/// invariant: the data layer knows nothing of AMQP or HTTP, the broker layer nothing of
/// SQL, the engine no driver at all (docs/ARCHITECTURE.md).
const DRIVER_FAMILIES: &[(&str, &[&str], &[&str])] = &[
    (
        "PostgreSQL driver",
        &[
            "tokio-postgres",
            "postgres",
            "bb8-postgres",
            "postgres-native-tls",
            "postgres-types",
            "sqlx",
            "diesel",
        ],
        &["db8", "bench8"],
    ),
    ("AMQP driver", &["amqprs", "lapin"], &["amqp8", "bench8"]),
    (
        "HTTP server",
        &["warp", "hyper", "hyper-util", "axum", "actix-web"],
        &["controller8"],
    ),
];

/// model8 is the vocabulary and performs no I/O: an allow-list, so that any new
/// dependency is a decision someone writes down here.
const MODEL8_EXTERNAL: &[&str] = &["chrono", "idna", "serde", "serde_json", "thiserror", "uuid"];

/// Every breach of the external-dependency rules in `cargo metadata` output.
fn dependency_violations(
    pkgs: &BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (krate, (_, external)) in pkgs {
        for (family, names, allowed) in DRIVER_FAMILIES {
            if allowed.contains(&krate.as_str()) {
                continue;
            }
            for dep in external.iter().filter(|d| names.contains(&d.as_str())) {
                out.push(format!("{krate} takes the {family} `{dep}`"));
            }
        }
    }
    let (_, model8) = &pkgs["model8"];
    for dep in model8.difference(&set(MODEL8_EXTERNAL)) {
        out.push(format!(
            "model8 takes `{dep}`, not on its no-I/O allow-list"
        ));
    }
    out
}

#[test]
fn external_dependency_rules_hold() {
    let violations = dependency_violations(&packages());
    assert!(
        violations.is_empty(),
        "{violations:#?} (docs/ARCHITECTURE.md)"
    );
}

#[test]
fn dependency_guard_fires_on_planted_violations() {
    let real = packages();
    for (krate, dep) in [
        ("db8", "amqprs"),
        ("amqp8", "tokio-postgres"),
        ("controller8", "bb8-postgres"),
        ("controller8", "amqprs"),
        ("config8", "warp"),
        ("model8", "tokio"),
        ("model8", "notify"),
    ] {
        let mut planted = real.clone();
        planted.get_mut(krate).unwrap().1.insert(dep.to_owned());
        let violations = dependency_violations(&planted);
        assert!(
            violations
                .iter()
                .any(|v| v.starts_with(&format!("{krate} takes")) && v.contains(dep)),
            "{dep} planted into {krate} went unnoticed: {violations:?}"
        );
    }
}

/// A normal or dev dependency of a package on one of our crates, as `cargo metadata`
/// gives it: (dependency, kind, whether it takes the default features, features).
type FeatureUse = (String, String, bool, Vec<String>);

/// controller8's dependencies on db8 and amqp8 with the features each takes.
fn controller8_feature_uses() -> Vec<FeatureUse> {
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
    let controller8 = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "controller8")
        .expect("controller8 in the workspace");
    controller8["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["name"] == "db8" || d["name"] == "amqp8")
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_owned(),
                d["kind"].as_str().unwrap_or("normal").to_owned(),
                d["uses_default_features"].as_bool().unwrap_or(true),
                d["features"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect()
}

/// Every way controller8 takes an implementation of db8 or amqp8 outside its tests: a
/// normal dependency with the default features (which hold the implementations) or
/// with any feature. With none, `PgStore`, `RabbitBroker` and the in-memory twins do
/// not exist for controller8's library, and naming one does not compile (`cargo check
/// -p controller8 --lib`, in scripts/lint.sh and scripts/test.sh).
fn feature_violations(uses: &[FeatureUse]) -> Vec<String> {
    let mut out = Vec::new();
    for (dep, kind, default, features) in uses {
        if kind == "dev" {
            continue;
        }
        if *default {
            out.push(format!("controller8 takes {dep} with its default features"));
        }
        for f in features {
            out.push(format!("controller8 takes {dep} with feature `{f}`"));
        }
    }
    out
}

#[test]
fn controller8_takes_no_implementation_of_db8_or_amqp8() {
    let uses = controller8_feature_uses();
    for dep in ["db8", "amqp8"] {
        assert!(
            uses.iter().any(|(d, k, _, _)| d == dep && k == "normal"),
            "controller8 depends on {dep}: {uses:?}"
        );
        assert!(
            uses.iter()
                .any(|(d, k, _, f)| d == dep && k == "dev" && f.contains(&"memory".to_owned())),
            "controller8's tests take {dep}'s memory feature: {uses:?}"
        );
    }
    let violations = feature_violations(&uses);
    assert!(
        violations.is_empty(),
        "{violations:#?} (docs/ARCHITECTURE.md: controller8 takes the in-memory \
         implementations only as dev-dependencies)"
    );
}

#[test]
fn feature_guard_fires_on_planted_violations() {
    let real = controller8_feature_uses();
    for (dep, plant) in [
        ("db8", "postgres"),
        ("db8", "memory"),
        ("amqp8", "rabbitmq"),
        ("amqp8", "memory"),
        ("db8", "default"),
    ] {
        let mut planted = real.clone();
        let normal = planted
            .iter_mut()
            .find(|(d, k, _, _)| d == dep && k == "normal")
            .unwrap();
        if plant == "default" {
            normal.2 = true;
        } else {
            normal.3.push(plant.to_owned());
        }
        let violations = feature_violations(&planted);
        assert!(
            violations.iter().any(|v| v.contains(dep)),
            "{dep}/{plant} planted went unnoticed: {violations:?}"
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

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The names of the concrete implementations of `krate` (db8 or amqp8) under `root`:
/// every top-level `pub` item and `pub use` name of its PostgreSQL/RabbitMQ and
/// in-memory modules, and the public module names themselves. Derived from the sources,
/// so that a new concrete type is covered without editing this test.
fn concrete_names(root: &Path, krate: &str) -> BTreeSet<String> {
    let src = root.join(format!("crates/{krate}/src"));
    let mut names = BTreeSet::new();
    for module in ["pg", "rabbit", "memory"] {
        let dir = src.join(module);
        if !dir.is_dir() {
            continue;
        }
        let mut files = Vec::new();
        rust_sources(&dir, &mut files);
        for f in files.iter().filter(|f| !f.ends_with("tests.rs")) {
            let text = std::fs::read_to_string(f).unwrap();
            for line in text.lines() {
                let Some(rest) = line.strip_prefix("pub ") else {
                    continue;
                };
                let rest = rest.trim_start_matches("async ");
                if let Some(used) = rest.strip_prefix("use ") {
                    // `pub use a::{B, C};` / `pub use a::B;`: the names exported.
                    let last = used.rsplit("::").next().unwrap_or(used);
                    for n in last
                        .split(|c: char| !is_ident_char(c))
                        .filter(|n| !n.is_empty())
                    {
                        names.insert(n.to_owned());
                    }
                    continue;
                }
                for kind in [
                    "struct ", "enum ", "fn ", "type ", "trait ", "const ", "static ",
                ] {
                    if let Some(item) = rest.strip_prefix(kind) {
                        let name: String = item.chars().take_while(|c| is_ident_char(*c)).collect();
                        names.insert(name);
                    }
                }
            }
        }
    }
    // Public concrete modules (`pub mod memory;` in amqp8) are concrete as a path.
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    for module in ["pg", "rabbit", "memory"] {
        if lib.contains(&format!("pub mod {module};")) {
            names.insert(module.to_owned());
        }
    }
    names.remove("");
    names
}

/// `text` without its test code: `#[cfg(test)] mod x { ... }` blocks and
/// `#[cfg(test)] mod x;` declarations (the declared file is skipped by name).
fn without_test_code(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        let decl_end = trimmed.find(['{', ';']).unwrap_or(trimmed.len());
        if trimmed.starts_with("mod ") && trimmed[decl_end..].starts_with('{') {
            let body = &trimmed[decl_end..];
            let mut depth = 0usize;
            let mut end = body.len();
            for (i, c) in body.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            rest = &body[end..];
        } else {
            // An attribute on anything else (a `mod tests;` declaration, an item):
            // drop the attribute's item up to its `;` or keep scanning.
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Every name a path rooted at `krate::` reaches in `text`: `krate::a::B`,
/// `use krate::{a, b::{C, D as E}, *}` (aliases are not names of the crate).
fn paths_from(text: &str, krate: &str) -> Vec<String> {
    let mut names = Vec::new();
    let needle = format!("{krate}::");
    let mut from = 0;
    while let Some(found) = text[from..].find(&needle) {
        let at = from + found;
        from = at + needle.len();
        if text[..at].chars().next_back().is_some_and(is_ident_char) {
            continue; // `xdb8::` is another crate
        }
        let chars: Vec<char> = text[from..].chars().collect();
        // `krate::{` opens a group straight away.
        let opens = chars.first() == Some(&'{');
        let (mut i, mut depth, mut after_as) = (usize::from(opens), usize::from(opens), false);
        loop {
            while depth > 0 && i < chars.len() && chars[i].is_whitespace() {
                i += 1;
            }
            let start = i;
            while i < chars.len() && (is_ident_char(chars[i]) || chars[i] == '*') {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            let empty = ident.is_empty();
            if ident == "as" {
                after_as = true;
            } else if !empty {
                if !after_as {
                    names.push(ident);
                }
                after_as = false;
            }
            while depth > 0 && i < chars.len() && chars[i].is_whitespace() {
                i += 1;
            }
            if i >= chars.len() {
                break;
            }
            if chars[i..].starts_with(&[':', ':', '{']) {
                depth += 1;
                i += 3;
            } else if chars[i..].starts_with(&[':', ':']) {
                i += 2;
            } else if depth > 0 && chars[i] == ',' {
                i += 1;
            } else if depth > 0 && chars[i] == '}' {
                depth -= 1;
                i += 1;
                if depth == 0 {
                    break;
                }
            } else if depth > 0 && empty {
                i += 1; // anything else inside a group (a comment): step over it
            } else if depth == 0 {
                break;
            }
        }
    }
    names
}

/// Every place under `root`'s controller8 sources (test code aside) that names a
/// concrete db8/amqp8 implementation or a driver crate.
fn concrete_name_violations(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_sources(&root.join("crates/controller8/src"), &mut files);
    assert!(
        !files.is_empty(),
        "no controller8 sources under {}",
        root.display()
    );
    let concrete: Vec<(&str, BTreeSet<String>)> = ["db8", "amqp8"]
        .into_iter()
        .map(|k| (k, concrete_names(root, k)))
        .collect();
    for (k, names) in &concrete {
        assert!(
            names.len() >= 3,
            "too few concrete names found in {k}: {names:?}"
        );
    }
    let drivers = [
        "tokio_postgres",
        "bb8_postgres",
        "postgres_native_tls",
        "amqprs",
        "lapin",
    ];
    let mut out = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy();
        if name.ends_with("tests.rs") || name == "testkit.rs" {
            continue;
        }
        let text = without_test_code(&std::fs::read_to_string(&f).unwrap());
        let idents: BTreeSet<&str> = text.split(|c: char| !is_ident_char(c)).collect();
        for (krate, names) in &concrete {
            for path_name in paths_from(&text, krate) {
                if names.contains(&path_name) {
                    out.push(format!("{}: `{krate}::…{path_name}`", f.display()));
                }
                if path_name == "*" {
                    out.push(format!(
                        "{}: a glob import from {krate} hides which names it uses",
                        f.display()
                    ));
                }
            }
            // Type names (capitalised) anywhere, however they were imported.
            for n in names
                .iter()
                .filter(|n| n.starts_with(|c: char| c.is_ascii_uppercase()))
            {
                if idents.contains(n.as_str()) {
                    out.push(format!("{}: names `{n}` ({krate})", f.display()));
                }
            }
        }
        for d in drivers {
            if idents.contains(d) {
                out.push(format!("{}: names the driver `{d}`", f.display()));
            }
        }
    }
    out
}

#[test]
fn controller8_names_no_concrete_implementation() {
    let root = workspace_root();
    for (krate, must) in [
        (
            "db8",
            &["PgStore", "PgLeaderLock", "PgChangeFeed", "MemoryStore"][..],
        ),
        (
            "amqp8",
            &["RabbitBroker", "connect", "MemoryBroker", "memory"][..],
        ),
    ] {
        let names = concrete_names(&root, krate);
        for m in must {
            assert!(
                names.contains(*m),
                "{krate}: `{m}` not derived from the sources: {names:?}"
            );
        }
    }
    let violations = concrete_name_violations(&root);
    assert!(
        violations.is_empty(),
        "controller8 must use db8/amqp8 traits (docs/ARCHITECTURE.md): {violations:#?}"
    );
}

/// Copies the sources the guard reads into a temporary tree.
fn source_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = workspace_root();
    for krate in ["db8", "amqp8", "controller8"] {
        let mut files = Vec::new();
        let src = root.join(format!("crates/{krate}/src"));
        rust_sources(&src, &mut files);
        for f in files {
            let to = dir.path().join(f.strip_prefix(&root).unwrap());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&f, &to).unwrap();
        }
    }
    dir
}

#[test]
fn concrete_name_guard_fires_on_planted_violations() {
    let plants = [
        "use amqp8::{connect};\n",
        "use amqp8::{Broker, connect as dial};\n",
        "fn f() { let _ = amqp8::connect; }\n",
        "use amqp8::RabbitBroker;\n",
        "use amqp8::*;\n",
        "use db8::{\n    DbError,\n    PgStore,\n};\n",
        "fn f(_: db8::PgLeaderLock) {}\n",
        "fn f() { let _ = db8::MemoryStore::new(); }\n",
        "use amqp8::memory::MemoryBroker;\n",
        "fn f() -> Option<RabbitBroker> { None }\n",
        "use tokio_postgres::Client;\n",
        "use amqprs::channel::Channel;\n",
        "#[cfg(test)]\nmod t;\nuse db8::PgChangeFeed;\n",
    ];
    let copy = source_copy();
    assert!(
        concrete_name_violations(copy.path()).is_empty(),
        "the unplanted copy must pass"
    );
    let target = copy.path().join("crates/controller8/src/scheduler.rs");
    let original = std::fs::read_to_string(&target).unwrap();
    for plant in plants {
        std::fs::write(&target, format!("{original}\n{plant}")).unwrap();
        let violations = concrete_name_violations(copy.path());
        assert!(!violations.is_empty(), "planted {plant:?} went unnoticed");
    }
    // Test code may use the in-memory twins, and only test code.
    std::fs::write(
        &target,
        format!("{original}\n#[cfg(test)]\nmod planted {{\n    use db8::MemoryStore;\n    use amqp8::memory::MemoryBroker;\n}}\n"),
    )
    .unwrap();
    assert_eq!(concrete_name_violations(copy.path()), Vec::<String>::new());
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

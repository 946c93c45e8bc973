//! `domains list | add NAME --company C [--disabled] | enable ID | disable ID |
//! remove ID`: manage the targets in `cptm8domain`.
//!
//! Exit codes (CONTRACT section 4): an invalid name or company is a usage error (2) and
//! touches nothing, not even the configuration; an unknown id and a name that already
//! exists are run-time failures (1) with a message naming them.

use db8::{DbError, DomainRepository, PgStore};
use model8::{Domain8, PostDomain8};
use uuid::Uuid;

use super::Failure;
use super::migrate::{connect, console_logging, db_failure, load_settings, print, runtime};
use crate::cli::{DomainsArgs, DomainsCommand};

/// Runs the command.
pub fn run(args: DomainsArgs) -> Result<(), Failure> {
    // Validate before anything else: bad input stores nothing and needs no database.
    let new = match &args.command {
        DomainsCommand::Add(a) => Some(
            PostDomain8 {
                name: a.name.clone(),
                companyname: a.company.clone(),
                enabled: !a.disabled,
            }
            .validated()
            .map_err(|e| Failure::Usage(e.to_string()))?,
        ),
        _ => None,
    };
    let (_, settings) = load_settings(args.config)?;
    let _log = console_logging(&settings)?;
    runtime()?.block_on(async {
        let store = connect(&settings).await?;
        let text = match args.command {
            DomainsCommand::List(l) => {
                let all = DomainRepository::list(&store).await.map_err(db_failure)?;
                if l.json {
                    let mut s = serde_json::to_string_pretty(&all)
                        .map_err(|e| Failure::Runtime(format!("cannot encode JSON: {e}")))?;
                    s.push('\n');
                    s
                } else {
                    table(&all)
                }
            }
            DomainsCommand::Add(_) => {
                let new = new.expect("validated above");
                let d = store.insert(&new).await.map_err(|e| match e {
                    DbError::Conflict(_) => Failure::Runtime(format!(
                        "a domain named {:?} already exists (see `orchestratorm8 domains list`)",
                        new.name
                    )),
                    other => db_failure(other),
                })?;
                format!("added {}\n", describe(&d))
            }
            DomainsCommand::Enable(a) => set(&store, a.id, true).await?,
            DomainsCommand::Disable(a) => set(&store, a.id, false).await?,
            DomainsCommand::Remove(a) => {
                let d = DomainRepository::get(&store, a.id)
                    .await
                    .map_err(|e| by_id(e, a.id))?;
                store.delete(a.id).await.map_err(|e| by_id(e, a.id))?;
                format!("removed {}\n", describe(&d))
            }
        };
        print(&text)
    })
}

async fn set(store: &PgStore, id: Uuid, enabled: bool) -> Result<String, Failure> {
    let d = store
        .set_enabled(id, enabled)
        .await
        .map_err(|e| by_id(e, id))?;
    let verb = if enabled { "enabled" } else { "disabled" };
    Ok(format!("{verb} {}\n", describe(&d)))
}

/// Failures of a command addressing a domain by id: absent is a clear run-time error.
fn by_id(e: DbError, id: Uuid) -> Failure {
    match e {
        DbError::NotFound(_) => Failure::Runtime(format!("no domain with id {id}")),
        other => db_failure(other),
    }
}

fn describe(d: &Domain8) -> String {
    format!(
        "{} (id {}, company {:?}, {})",
        d.name,
        d.id,
        d.companyname,
        if d.enabled { "enabled" } else { "disabled" }
    )
}

/// Aligned columns: ID, ENABLED, COMPANY, NAME.
fn table(all: &[Domain8]) -> String {
    let width = all
        .iter()
        .map(|d| d.companyname.chars().count())
        .max()
        .unwrap_or(0)
        .max("COMPANY".len());
    let mut s = format!(
        "{:<36}  {:<8} {:<width$}  NAME\n",
        "ID", "ENABLED", "COMPANY"
    );
    for d in all {
        s.push_str(&format!(
            "{:<36}  {:<8} {:<width$}  {}\n",
            d.id,
            if d.enabled { "yes" } else { "no" },
            d.companyname,
            d.name
        ));
    }
    s.push_str(&format!("{} domain(s)\n", all.len()));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_columns() {
        let id = Uuid::nil();
        let t = table(&[
            Domain8 {
                id,
                name: "a.example".into(),
                companyname: "ACME Corporation".into(),
                enabled: true,
            },
            Domain8 {
                id,
                name: "b.example".into(),
                companyname: "".into(),
                enabled: false,
            },
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        let name_col = lines[0].find("NAME").unwrap();
        assert_eq!(lines[1].find("a.example"), Some(name_col));
        assert_eq!(lines[2].find("b.example"), Some(name_col));
        assert_eq!(lines[3], "2 domain(s)");
    }
}

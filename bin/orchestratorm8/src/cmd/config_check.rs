//! `config check [--config PATH]`: load and validate the configuration, print it
//! (effective values, secrets redacted) on stdout and its warnings on stderr, each
//! naming the file, and for each `protocol: chain` stage the `Publisher` line its
//! scanner's configuration needs (as YAML comments). Touches no server. Exit 0 when valid, 2 with the error otherwise (CONTRACT section 4).

use super::Failure;
use super::migrate::{load_settings, print};
use crate::cli::ConfigCheckArgs;

/// Runs the command.
pub fn run(args: ConfigCheckArgs) -> Result<(), Failure> {
    let (path, settings) = load_settings(args.config)?;
    print(&format!(
        "# effective configuration of {} (secrets redacted)\n{}\n{}",
        path.display(),
        config8::render_redacted(&settings),
        publisher_lines(&settings)
    ))
}

/// For each chain stage, the exact `Publisher` line its scanner needs (CONTRACT 3b), as
/// YAML comments so the output stays a valid YAML document; empty without chain stages.
fn publisher_lines(settings: &config8::Settings) -> String {
    let chain: Vec<&config8::StageSettings> = settings
        .workflow
        .stages
        .iter()
        .filter(|s| s.protocol == config8::StageProtocol::Chain)
        .collect();
    if chain.is_empty() {
        return String::new();
    }
    let mut text = String::from(
        "# chain stages: in each scanner's own configuration, under ORCHESTRATORM8.<scanner>, set\n",
    );
    for s in chain {
        text.push_str(&format!(
            "#   {}: {}\n",
            s.name,
            model8::chain::publisher_line(&s.name)
        ));
    }
    text
}

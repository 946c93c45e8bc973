//! `config check [--config PATH]`: load and validate the configuration, print it
//! (effective values, secrets redacted) on stdout and its warnings on stderr, each
//! naming the file, and for each `protocol: chain` stage the `Publisher` line its
//! scanner's configuration needs (as YAML comments). Touches no server. Exit 0 when valid, 2 with the error otherwise (CONTRACT section 4).

use std::io::Write;

use super::Failure;
use crate::cli::ConfigCheckArgs;

/// Runs the command.
pub fn run(args: ConfigCheckArgs) -> Result<(), Failure> {
    let path = config8::resolve_path(args.config);
    let loaded = config8::load(&path).map_err(|e| Failure::Usage(e.to_string()))?;
    let mut err = std::io::stderr().lock();
    for w in &loaded.warnings {
        let _ = writeln!(err, "orchestratorm8: warning: {}: {w}", path.display());
    }
    let text = config8::render_redacted(&loaded.settings);
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "# effective configuration of {} (secrets redacted)\n{text}",
        path.display()
    )
    .and_then(|()| write!(out, "{}", publisher_lines(&loaded.settings)))
    .and_then(|()| out.flush())
    .map_err(|e| Failure::Runtime(format!("cannot write to stdout: {e}")))
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

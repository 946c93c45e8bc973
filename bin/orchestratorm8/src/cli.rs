//! Command-line flags (argh). CONTRACT section 4.

use std::net::IpAddr;
use std::path::PathBuf;

use argh::FromArgs;
use uuid::Uuid;

/// CPTM8 orchestrator: coordinates the scanner services over RabbitMQ.
#[derive(FromArgs, Debug)]
pub struct Cli {
    #[argh(subcommand)]
    pub command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Launch(LaunchArgs),
    Config(ConfigArgs),
    Migrate(MigrateArgs),
    Domains(DomainsArgs),
}

/// Run the service.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "launch")]
pub struct LaunchArgs {
    /// address to bind the HTTP server to (default 0.0.0.0)
    #[argh(option, default = "IpAddr::from([0, 0, 0, 0])")]
    pub ip: IpAddr,
    /// port to bind the HTTP server to (default 8005)
    #[argh(option, default = "8005")]
    pub port: u16,
    /// configuration file (default: $ORCHESTRATORM8_CONFIG, else configs/configuration.yaml)
    #[argh(option)]
    pub config: Option<PathBuf>,
}

/// Configuration commands.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "config")]
pub struct ConfigArgs {
    #[argh(subcommand)]
    pub command: ConfigCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum ConfigCommand {
    Check(ConfigCheckArgs),
}

/// Validate the configuration and print it with secrets redacted; touches no server.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "check")]
pub struct ConfigCheckArgs {
    /// configuration file (default: $ORCHESTRATORM8_CONFIG, else configs/configuration.yaml)
    #[argh(option)]
    pub config: Option<PathBuf>,
}

/// Apply the database migrations (idempotent).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "migrate")]
pub struct MigrateArgs {
    /// configuration file (default: $ORCHESTRATORM8_CONFIG, else configs/configuration.yaml)
    #[argh(option)]
    pub config: Option<PathBuf>,
}

/// Manage target domains in cptm8domain.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "domains")]
pub struct DomainsArgs {
    /// configuration file (default: $ORCHESTRATORM8_CONFIG, else configs/configuration.yaml)
    #[argh(option)]
    pub config: Option<PathBuf>,
    #[argh(subcommand)]
    pub command: DomainsCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum DomainsCommand {
    List(DomainsList),
    Add(DomainsAdd),
    Enable(DomainsEnable),
    Disable(DomainsDisable),
    Remove(DomainsRemove),
}

/// List every domain.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub struct DomainsList {
    /// print JSON instead of a table
    #[argh(switch)]
    pub json: bool,
}

/// Add a domain (enabled).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "add")]
pub struct DomainsAdd {
    /// domain name, e.g. example.com
    #[argh(positional)]
    pub name: String,
    /// company owning the domain
    #[argh(option)]
    pub company: String,
    /// add it disabled
    #[argh(switch)]
    pub disabled: bool,
}

/// Enable a domain.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "enable")]
pub struct DomainsEnable {
    /// domain id
    #[argh(positional)]
    pub id: Uuid,
}

/// Disable a domain.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "disable")]
pub struct DomainsDisable {
    /// domain id
    #[argh(positional)]
    pub id: Uuid,
}

/// Remove a domain.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "remove")]
pub struct DomainsRemove {
    /// domain id
    #[argh(positional)]
    pub id: Uuid,
}

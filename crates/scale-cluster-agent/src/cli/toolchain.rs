//! `scale-cluster-agent toolchain install|status`.

use clap::{Args, Subcommand};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};

use crate::config::Settings;
use crate::toolchain::{self, Progress, SourcePreference, ToolchainOptions};

#[derive(Debug, Subcommand)]
pub enum ToolchainCommand {
    /// Find, build or download every binary a KWOK cluster needs.
    #[command(after_long_help = toolchain::MIRROR_LAYOUT)]
    Install(InstallArgs),
    /// Show each component's version, path and source.
    Status,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Provision missing components by building or by downloading (overrides --toolchain-source).
    #[arg(long, value_enum)]
    pub source: Option<SourcePreference>,

    /// Print plain progress lines even on a terminal.
    #[arg(long)]
    pub plain: bool,

    /// Print no progress, only the final table.
    #[arg(long, short, conflicts_with = "plain")]
    pub quiet: bool,
}

pub async fn run(settings: &Settings, cmd: ToolchainCommand) -> anyhow::Result<()> {
    let mut opts = settings.toolchain_options();
    match cmd {
        ToolchainCommand::Install(args) => {
            if let Some(source) = args.source {
                opts.source = source;
            }
            let progress = if args.quiet {
                Progress::Silent
            } else if args.plain {
                Progress::Plain
            } else {
                Progress::auto()
            };
            toolchain::install(&opts, progress).await?;
            println!("{}", status_table(&opts));
            Ok(())
        }
        ToolchainCommand::Status => {
            let statuses = toolchain::status(&opts);
            let missing = statuses.iter().filter(|s| !s.usable).count();
            println!("{}", table(&statuses));
            if missing > 0 {
                anyhow::bail!(
                    "{missing} component(s) missing or unusable; run `scale-cluster-agent toolchain install`"
                );
            }
            Ok(())
        }
    }
}

fn status_table(opts: &ToolchainOptions) -> Table {
    table(&toolchain::status(opts))
}

fn table(statuses: &[toolchain::ComponentStatus]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["component", "version", "path", "source", "note"]);
    for s in statuses {
        table.add_row([
            s.component.to_string(),
            s.version.clone().unwrap_or_else(|| "-".into()),
            s.path
                .as_ref()
                .map_or_else(|| "-".into(), |p| p.display().to_string()),
            s.source.to_string(),
            s.note.clone().unwrap_or_default(),
        ]);
    }
    table
}

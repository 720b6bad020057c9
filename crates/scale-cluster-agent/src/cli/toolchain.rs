//! `scale-cluster-agent toolchain install|status`.

use clap::{Args, Subcommand};
use serde::Serialize;

use super::output::{or_none, out, print_object, Output, OutputArgs, Table};
use crate::config::Settings;
use crate::toolchain::{self, Progress, SourcePreference};

#[derive(Debug, Subcommand)]
pub enum ToolchainCommand {
    /// Find, build or download every binary a KWOK cluster needs.
    #[command(after_long_help = toolchain::MIRROR_LAYOUT)]
    Install(InstallArgs),
    /// Show each component's version, path and source.
    Status(OutputArgs),
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
            out!("{}", table(&toolchain::status(&opts).await, Output::Table))?;
            Ok(())
        }
        ToolchainCommand::Status(output) => {
            let statuses = toolchain::status(&opts).await;
            let missing = statuses.iter().filter(|s| !s.usable).count();
            let rows: Vec<StatusRow> = statuses.iter().map(StatusRow::from).collect();
            if !print_object(&rows, output.output)? {
                out!("{}", table(&statuses, output.output))?;
            }
            if missing > 0 {
                anyhow::bail!(
                    "{missing} component(s) missing or unusable; run `scale-cluster-agent toolchain install`"
                );
            }
            Ok(())
        }
    }
}

/// One component as `-o json|yaml` prints it.
#[derive(Debug, Serialize)]
struct StatusRow {
    component: String,
    version: Option<String>,
    pinned_version: &'static str,
    path: Option<String>,
    source: String,
    usable: bool,
    note: Option<String>,
}

impl From<&toolchain::ComponentStatus> for StatusRow {
    fn from(s: &toolchain::ComponentStatus) -> Self {
        Self {
            component: s.component.to_string(),
            version: s.version.clone(),
            pinned_version: s.component.pinned_version(),
            path: s.path.as_ref().map(|p| p.display().to_string()),
            source: s.source.to_string(),
            usable: s.usable,
            note: s.note.clone(),
        }
    }
}

/// COMPONENT, VERSION, SOURCE, PATH, NOTE; `-o wide` adds the pinned version and whether the
/// component is usable.
fn table(statuses: &[toolchain::ComponentStatus], output: Output) -> Table {
    let wide = output == Output::Wide;
    let mut headers = vec!["COMPONENT", "VERSION", "SOURCE", "PATH"];
    if wide {
        headers.extend(["PINNED", "USABLE"]);
    }
    headers.push("NOTE");
    let mut table = Table::new(headers);
    for s in statuses {
        let mut row = vec![
            s.component.to_string(),
            or_none(s.version.as_deref()),
            s.source.to_string(),
            s.path
                .as_ref()
                .map_or_else(String::new, |p| p.display().to_string()),
        ];
        if wide {
            row.extend([
                s.component.pinned_version().to_string(),
                s.usable.to_string(),
            ]);
        }
        row.push(s.note.clone().unwrap_or_default());
        table.row(row);
    }
    table
}

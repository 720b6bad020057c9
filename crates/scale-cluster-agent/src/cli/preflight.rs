//! `scale-cluster-agent preflight [--fix] [--clusters N]`.

use clap::Args;
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};

use crate::config::Settings;
use crate::preflight::{self, Check, FixOutcome, Plan, Readings, Status};

#[derive(Debug, Args)]
pub struct PreflightArgs {
    /// Apply the fixes that can be applied (needs root).
    #[arg(long)]
    pub fix: bool,

    /// Number of clusters to size the checks for.
    #[arg(long, default_value_t = preflight::DEFAULT_CLUSTERS)]
    pub clusters: u32,
}

pub async fn run(settings: &Settings, args: PreflightArgs) -> anyhow::Result<()> {
    let plan = Plan {
        clusters: args.clusters,
        ports: settings.ports,
    };
    let readings = Readings::read(&settings.kwok_workdir);
    let mut checks = preflight::evaluate(&readings, &plan);
    println!(
        "Preflight for {} clusters (kwok workdir {}):",
        plan.clusters,
        settings.kwok_workdir.display()
    );
    println!("{}", table(&checks));

    if args.fix {
        let outcomes = preflight::apply_fixes(&checks, readings.is_root);
        if outcomes.is_empty() {
            println!("--fix: nothing to apply automatically.");
        } else {
            if !readings.is_root {
                println!("--fix needs root to write /proc/sys; nothing was changed:");
            }
            for outcome in &outcomes {
                println!("  {outcome}");
            }
            if outcomes
                .iter()
                .any(|o| matches!(o, FixOutcome::Applied { .. }))
            {
                println!(
                    "Changes last until reboot; persist them in {} (lines shown above).",
                    preflight::SYSCTL_FILE
                );
                checks = preflight::evaluate(&Readings::read(&settings.kwok_workdir), &plan);
                println!("After --fix:\n{}", table(&checks));
            }
        }
    }

    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if failed > 0 {
        anyhow::bail!(
            "{failed} preflight check(s) failed for {} clusters; apply the fixes above",
            plan.clusters
        );
    }
    Ok(())
}

fn table(checks: &[Check]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(["check", "status", "measured", "need", "fix"]);
    for c in checks {
        table.add_row([
            c.name.to_string(),
            c.status.to_string(),
            c.measured.clone(),
            c.need.clone(),
            c.fix.join("\n"),
        ]);
    }
    table
}

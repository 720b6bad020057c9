//! `scale-cluster-agent preflight [--fix] [--clusters N]`.

use clap::Args;

use super::output::{out, outln, Table};
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
        shared_etcd_port: settings.shared_etcd_port(),
    };
    let readings = Readings::read(&settings.kwok_workdir);
    let mut checks = preflight::evaluate(&readings, &plan);
    outln!(
        "Preflight for {} clusters (kwok workdir {}):",
        plan.clusters,
        settings.kwok_workdir.display()
    )?;
    print_checks(&checks)?;

    if args.fix {
        let outcomes = preflight::apply_fixes(&checks, readings.is_root);
        if outcomes.is_empty() {
            outln!("--fix: nothing to apply automatically.")?;
        } else {
            if !readings.is_root {
                outln!("--fix needs root to write /proc/sys and /sys; nothing was changed:")?;
            }
            for outcome in &outcomes {
                outln!("  {outcome}")?;
            }
            if outcomes
                .iter()
                .any(|o| matches!(o, FixOutcome::Applied { .. }))
            {
                outln!(
                    "Changes last until reboot; persist them as the lines above show ({} for \
                     sysctls).",
                    preflight::SYSCTL_FILE
                )?;
                checks = preflight::evaluate(&Readings::read(&settings.kwok_workdir), &plan);
                outln!("After --fix:")?;
                print_checks(&checks)?;
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

/// The checks as a table, then the commands that fix each one not OK (a command per line, ready
/// to copy).
fn print_checks(checks: &[Check]) -> std::io::Result<()> {
    let mut table = Table::new(["CHECK", "STATUS", "MEASURED", "NEED"]);
    for c in checks {
        table.row([
            c.name.to_string(),
            c.status.to_string(),
            c.measured.clone(),
            c.need.clone(),
        ]);
    }
    out!("{table}")?;
    for c in checks.iter().filter(|c| !c.fix.is_empty()) {
        outln!("To fix {} ({}):", c.name, c.status)?;
        for command in &c.fix {
            outln!("  {command}")?;
        }
    }
    Ok(())
}

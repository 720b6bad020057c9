//! `scale-cluster-agent up`: the main job with embedded defaults. Provisions the toolchain if
//! anything is missing, makes sure `--count` clusters named `<prefix>-NNN` exist and run, and prints
//! how to reach each one. Running it again is safe: existing clusters are started, not recreated.

use anyhow::bail;
use clap::Args;

use super::cluster::{create_many, open_manager};
use crate::config::Settings;
use crate::kwok::{ComponentProfile, PopulationProfile};
use crate::store::Phase;
use crate::toolchain::{self, Progress, ToolchainOptions};

#[derive(Debug, Args)]
pub struct UpArgs {
    /// How many simulated clusters to run.
    #[arg(long, default_value_t = 3)]
    pub count: usize,
    /// Cluster name prefix.
    #[arg(long, default_value = "sim")]
    pub prefix: String,
    /// Component profile: `lean` or `full`.
    #[arg(long, default_value = "lean")]
    pub profile: ComponentProfile,
    /// How many clusters to create at once.
    #[arg(long, default_value_t = 3)]
    pub parallel: usize,
}

pub async fn run(settings: &Settings, args: UpArgs) -> anyhow::Result<()> {
    let opts = ToolchainOptions::from_settings(settings);
    if toolchain::locate(&opts).is_err() {
        eprintln!("provisioning the KWOK and Kubernetes toolchain (first run only; a cold build takes several minutes)");
        toolchain::install(&opts, Progress::auto()).await?;
    }
    let manager = open_manager(settings).await?;
    let names: Vec<String> = (1..=args.count)
        .map(|i| format!("{}-{i:03}", args.prefix))
        .collect();
    let mut missing = Vec::new();
    for name in &names {
        match manager.store().get(name).await? {
            Some(record) if record.phase == Phase::Stopped => {
                manager.start(name).await?;
            }
            Some(_) => {}
            None => missing.push(name.clone()),
        }
    }
    let results = create_many(
        &manager,
        &missing,
        args.profile,
        &PopulationProfile::default(),
        args.parallel,
    )
    .await;
    let mut failures = 0;
    for result in results {
        if let Err((name, err)) = result {
            eprintln!("cluster {name}: {err:#}");
            failures += 1;
        }
    }
    println!("\n{} simulated clusters:", names.len());
    for name in &names {
        if let Ok(info) = manager.get(name).await {
            println!(
                "  {name:<10} {health:<9} {server}  kubectl --kubeconfig {kc} get nodes",
                health = info.health,
                server = info.server,
                kc = info.kubeconfig.display()
            );
        }
    }
    println!("\nlist them with `scale-cluster-agent cluster list`; remove them with `scale-cluster-agent cluster delete --all`");
    if failures > 0 {
        bail!("{failures} clusters failed to come up");
    }
    Ok(())
}

//! `scale-cluster-agent shard cleanup`: removes from Rancher the clusters of shards whose agent is
//! gone for good (a StatefulSet scaled down, a release uninstalled), without that agent or its
//! database. It deletes only clusters named in the shard's series (`<prefix>-<shard>-NNNNN`) that
//! carry the shard's instance label, once none of them is connected any more (the agent is gone;
//! otherwise it would recreate them), then waits until Rancher no longer lists them.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use crate::agent::desired::{series_number, shard_instance_id};
use crate::config::{RancherArgs, Settings, ShardArgs};
use crate::rancher::{RancherClient, RancherCluster};

#[derive(Debug, Subcommand)]
pub enum ShardCommand {
    /// Delete a gone shard's clusters from Rancher (its agent must no longer run, or it recreates
    /// them).
    Cleanup(CleanupArgs),
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Every shard from this index up (what a scale-down to this many replicas leaves behind);
    /// instead of --shard.
    #[arg(long, conflicts_with = "shard")]
    pub from_shard: Option<u32>,

    /// Instance id the shard's agent ran with, when it was set explicitly (default:
    /// `<prefix>-shard-<K>`, the one shard mode derives); only with --shard.
    #[arg(long, requires = "shard")]
    pub owner: Option<String>,

    /// Seconds to wait, in all, for the shard's agent to be gone (its clusters no longer
    /// connected) and for Rancher to finish removing the clusters.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,

    /// Delete even while the shard's clusters are still connected (an agent that still runs
    /// recreates them).
    #[arg(long)]
    pub force: bool,

    #[command(flatten)]
    pub shard: ShardArgs,

    #[command(flatten)]
    pub rancher: RancherArgs,
}

pub async fn run(settings: &Settings, cmd: ShardCommand) -> anyhow::Result<()> {
    match cmd {
        ShardCommand::Cleanup(args) => cleanup(settings, args).await,
    }
}

async fn cleanup(settings: &Settings, args: CleanupArgs) -> anyhow::Result<()> {
    let prefix = args.shard.prefix(settings);
    let select = match (args.shard.shard, args.from_shard) {
        (Some(shard), None) => Selection::One {
            shard,
            owner: args
                .owner
                .clone()
                .unwrap_or_else(|| shard_instance_id(&prefix, shard)),
        },
        (None, Some(from)) => Selection::From(from),
        _ => bail!("say which shards: --shard K or --from-shard K"),
    };
    let agent = args.rancher.resolve(settings)?;
    let rancher = RancherClient::new(agent.rancher)
        .await
        .context("setting up the Rancher client")?;
    rancher
        .check_access()
        .await
        .context("checking access to Rancher")?;

    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut doomed = classify(&rancher, &select, &prefix, true).await?;
    if doomed.is_empty() {
        println!("no clusters of {} in Rancher", select.describe(&prefix));
        return Ok(());
    }
    // A shard whose agent still runs would recreate what is deleted: wait until Rancher sees
    // every tunnel of the shard gone (its Connected condition no longer True).
    if !args.force {
        loop {
            let connected: Vec<String> = doomed
                .iter()
                .filter(|(c, _)| is_connected(c))
                .map(|(c, _)| c.name.clone())
                .collect();
            if connected.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} is still connected to Rancher ({}): its agent still runs; stop it (scale the \
                     StatefulSet down) first, or pass --force",
                    select.describe(&prefix),
                    connected.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            doomed = classify(&rancher, &select, &prefix, false).await?;
        }
    }
    for (cluster, owner) in &doomed {
        if !cluster.removing {
            rancher
                .delete_owned_cluster(&cluster.id, owner)
                .await
                .with_context(|| format!("deleting {} ({})", cluster.name, cluster.id))?;
        }
        println!("deleted {} ({})", cluster.name, cluster.id);
    }
    let ids: Vec<&str> = doomed.iter().map(|(c, _)| c.id.as_str()).collect();
    loop {
        let listed = rancher
            .list_clusters()
            .await
            .context("listing Rancher's clusters")?;
        let left = listed
            .iter()
            .filter(|c| ids.contains(&c.id.as_str()))
            .count();
        if left == 0 {
            println!("{} clusters removed from Rancher", ids.len());
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{left} of {} clusters still listed in Rancher after {}s (deletion requested; \
                 Rancher finishes it in the background)",
                ids.len(),
                args.timeout
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The selected shards' clusters in Rancher with the owner to delete them as; clusters named
/// like theirs but owned by someone else are reported (when `report`) and left out.
async fn classify(
    rancher: &RancherClient,
    select: &Selection,
    prefix: &str,
    report: bool,
) -> anyhow::Result<Vec<(RancherCluster, String)>> {
    let clusters = rancher
        .list_clusters()
        .await
        .context("listing Rancher's clusters")?;
    let mut doomed = Vec::new();
    for cluster in clusters {
        match select.verdict(prefix, &cluster) {
            Verdict::Ignore => {}
            Verdict::Foreign if report => eprintln!(
                "left alone: {} ({}) is named like the shard's but owned by {:?}",
                cluster.name,
                cluster.id,
                cluster.owner().unwrap_or("nobody")
            ),
            Verdict::Foreign => {}
            Verdict::Delete(owner) => doomed.push((cluster, owner)),
        }
    }
    Ok(doomed)
}

/// Whether Rancher reaches the cluster through its agent's tunnel right now.
fn is_connected(cluster: &RancherCluster) -> bool {
    cluster
        .condition("Connected")
        .is_some_and(|c| c.status == "True")
}

enum Selection {
    One { shard: u32, owner: String },
    From(u32),
}

enum Verdict {
    Ignore,
    /// In the series, but without the shard's instance label: never touched.
    Foreign,
    /// The shard's: delete it as this owner.
    Delete(String),
}

impl Selection {
    fn verdict(&self, prefix: &str, cluster: &RancherCluster) -> Verdict {
        let (shard, owner) = match self {
            Selection::One { shard, owner } => (*shard, owner.clone()),
            Selection::From(from) => {
                let Some(shard) = shard_of(prefix, &cluster.name).filter(|s| s >= from) else {
                    return Verdict::Ignore;
                };
                (shard, shard_instance_id(prefix, shard))
            }
        };
        if series_number(prefix, shard, &cluster.name).is_none() {
            Verdict::Ignore
        } else if cluster.owner() == Some(owner.as_str()) {
            Verdict::Delete(owner)
        } else {
            Verdict::Foreign
        }
    }

    fn describe(&self, prefix: &str) -> String {
        match self {
            Selection::One { shard, .. } => format!("shard {shard} ({prefix}-{shard}-NNNNN)"),
            Selection::From(from) => format!("shards {from} and up ({prefix}-<shard>-NNNNN)"),
        }
    }
}

/// The shard of a name `<prefix>-<shard>-NNNNN`, if it is one.
fn shard_of(prefix: &str, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let (shard, _) = rest.split_once('-')?;
    let shard: u32 = shard.parse().ok()?;
    series_number(prefix, shard, name).map(|_| shard)
}

#[cfg(test)]
mod tests {
    #[test]
    fn shard_of_reads_only_series_names() {
        assert_eq!(super::shard_of("sim", "sim-12-00003"), Some(12));
        assert_eq!(super::shard_of("sim", "sim-12-3"), None);
        assert_eq!(super::shard_of("sim", "sim-x-00003"), None);
        assert_eq!(super::shard_of("sim", "other-1-00003"), None);
    }
}

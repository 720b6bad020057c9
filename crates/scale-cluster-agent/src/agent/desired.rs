//! Shard mode (`serve --desired-clusters N --shard K`): the agent owns the series
//! `<prefix>-<K>-00001 … <prefix>-<K>-N` and converges its clusters to it, as a controller does
//! with a replica count. Desired state is the count; observed state is the store's rows of this
//! series. Each pass creates the missing numbers (through [`Agent`]'s own insert path, so the
//! bounded bring-up and progress of `POST /clusters` apply) and requests the deletion of the
//! numbers above N, highest first. Names outside the series (another shard's, a hand-made
//! `demo`) are never touched, and the store only holds clusters this instance created, whose
//! Rancher twins carry its instance label: ownership stays with the existing marker.
//!
//! A pass is idempotent and reads everything again, so a restart (same data dir) resumes without
//! duplicates, and a cluster deleted in Rancher or through the API is recreated by the next pass.

use std::collections::HashSet;
use std::time::Duration;

use super::{Agent, AgentError, MAX_BULK};
use crate::kwok::{names, ComponentProfile};

/// How often the series is compared with the store again (also right at start).
const RESYNC: Duration = Duration::from_secs(10);

/// Most clusters one shard may hold: the numbers are written with five digits.
pub const MAX_SHARD_CLUSTERS: usize = 99_999;

/// What one shard converges to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSpec {
    pub prefix: String,
    pub shard: u32,
    pub count: usize,
    pub profile: ComponentProfile,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardError {
    #[error(
        "--desired-clusters {0} is above the {MAX_SHARD_CLUSTERS} clusters one shard may hold"
    )]
    TooMany(usize),
    #[error("cluster prefix {prefix:?} with shard {shard}: {source}")]
    InvalidName {
        prefix: String,
        shard: u32,
        source: names::InvalidName,
    },
}

impl ShardSpec {
    /// Checks that every name of the series (the longest included) is a valid cluster name.
    pub fn new(
        prefix: &str,
        shard: u32,
        count: usize,
        profile: ComponentProfile,
    ) -> Result<Self, ShardError> {
        if count > MAX_SHARD_CLUSTERS {
            return Err(ShardError::TooMany(count));
        }
        let spec = Self {
            prefix: prefix.to_string(),
            shard,
            count,
            profile,
        };
        names::validate(&spec.name(MAX_SHARD_CLUSTERS)).map_err(|source| {
            ShardError::InvalidName {
                prefix: prefix.to_string(),
                shard,
                source,
            }
        })?;
        Ok(spec)
    }

    /// The `n`th cluster of the series.
    pub fn name(&self, n: usize) -> String {
        series_name(&self.prefix, self.shard, n)
    }
}

/// `<prefix>-<shard>-NNNNN`.
pub fn series_name(prefix: &str, shard: u32, n: usize) -> String {
    format!("{prefix}-{shard}-{n:05}")
}

/// The number of `name` in the series of `prefix` and `shard`, only for names written exactly as
/// [`series_name`] writes them (`sim-1-1` or `sim-1-0-00001` are not shard 1's).
pub fn series_number(prefix: &str, shard: u32, name: &str) -> Option<usize> {
    let digits = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let digits = digits.strip_prefix(&shard.to_string())?.strip_prefix('-')?;
    let n: usize = digits
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| digits.parse().ok())??;
    (n >= 1 && series_name(prefix, shard, n) == name).then_some(n)
}

/// The instance id of a shard's agent unless one is set: stable across a lost volume, so a
/// replacement pod adopts its shard's Rancher clusters instead of failing on their names, and
/// known to `shard cleanup` without the pod's database.
pub fn shard_instance_id(prefix: &str, shard: u32) -> String {
    format!("{prefix}-shard-{shard}")
}

/// What one pass does: names to create, and names whose deletion to request (highest first).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub create: Vec<String>,
    pub delete: Vec<String>,
}

/// Compares the series with the stored clusters: `(name, deletion requested)`. A number still
/// being deleted is created again only once it is gone (its name is taken until then).
pub fn plan<'a>(spec: &ShardSpec, stored: impl IntoIterator<Item = (&'a str, bool)>) -> Plan {
    let mut present = HashSet::new();
    let mut beyond = Vec::new();
    for (name, deleting) in stored {
        let Some(n) = series_number(&spec.prefix, spec.shard, name) else {
            continue;
        };
        present.insert(n);
        if n > spec.count && !deleting {
            beyond.push((n, name.to_string()));
        }
    }
    beyond.sort_by_key(|b| std::cmp::Reverse(b.0));
    Plan {
        create: (1..=spec.count)
            .filter(|n| !present.contains(n))
            .map(|n| spec.name(n))
            .collect(),
        delete: beyond.into_iter().map(|(_, name)| name).collect(),
    }
}

/// Converges until the agent shuts down; a failed pass is logged and retried at the next one.
pub(super) async fn run(agent: Agent, spec: ShardSpec) {
    tracing::info!(prefix = %spec.prefix, shard = spec.shard, count = spec.count, "shard mode");
    loop {
        match converge(&agent, &spec).await {
            Ok(plan) if !plan.create.is_empty() || !plan.delete.is_empty() => {
                tracing::info!(
                    shard = spec.shard,
                    created = plan.create.len(),
                    deleting = plan.delete.len(),
                    "shard converging"
                )
            }
            Ok(_) | Err(AgentError::ShuttingDown) => {}
            Err(err) => tracing::warn!(shard = spec.shard, error = %err, "shard pass failed"),
        }
        tokio::select! {
            _ = agent.inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
}

/// One pass: reads the store, inserts what is missing, requests the deletions.
async fn converge(agent: &Agent, spec: &ShardSpec) -> Result<Plan, AgentError> {
    agent.check_running()?;
    let stored = agent.inner.store.agent_clusters().await?;
    let plan = plan(
        spec,
        stored
            .iter()
            .map(|r| (r.name.as_str(), r.deletion_requested())),
    );
    for batch in plan.create.chunks(MAX_BULK) {
        agent
            .inner
            .store
            .insert_agent_clusters(batch.to_vec(), spec.profile.as_str().to_string())
            .await?;
        agent.inner.wake.notify_one();
    }
    for name in &plan.delete {
        agent.delete(name).await?;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(count: usize) -> ShardSpec {
        ShardSpec::new("sim", 1, count, ComponentProfile::Lean).unwrap()
    }

    #[test]
    fn series_names_belong_to_one_shard_only() {
        assert_eq!(series_name("sim", 1, 7), "sim-1-00007");
        assert_eq!(series_number("sim", 1, "sim-1-00007"), Some(7));
        assert_eq!(series_number("sim", 1, "sim-1-123456"), Some(123_456));
        for other in [
            "sim-10-00007",
            "sim-0-00007",
            "sim-1-7",
            "sim-1-0-00001",
            "sim-1-00000",
            "sim-1-0000a",
            "simx-1-00007",
            "demo",
        ] {
            assert_eq!(series_number("sim", 1, other), None, "{other}");
        }
    }

    #[test]
    fn plan_creates_the_missing_and_deletes_the_highest_beyond_the_count() {
        let stored = [
            ("sim-1-00001", false),
            ("sim-1-00004", false),
            ("sim-1-00003", false),
            ("sim-1-00005", true),
            ("sim-0-00002", false),
            ("demo", false),
        ];
        assert_eq!(
            plan(&spec(2), stored),
            Plan {
                create: vec!["sim-1-00002".into()],
                delete: vec!["sim-1-00004".into(), "sim-1-00003".into()],
            }
        );
        assert_eq!(
            plan(&spec(6), stored),
            Plan {
                create: vec!["sim-1-00002".into(), "sim-1-00006".into()],
                delete: vec![],
            }
        );
        assert_eq!(plan(&spec(0), [("sim-1-00001", true)]), Plan::default());
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(matches!(
            ShardSpec::new("Sim", 0, 1, ComponentProfile::Lean),
            Err(ShardError::InvalidName { .. })
        ));
        assert!(matches!(
            ShardSpec::new(&"x".repeat(51), 0, 1, ComponentProfile::Lean),
            Err(ShardError::InvalidName { .. })
        ));
        assert_eq!(
            ShardSpec::new("sim", 0, 100_000, ComponentProfile::Lean),
            Err(ShardError::TooMany(100_000))
        );
    }
}

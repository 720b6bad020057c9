//! The scenario file: what a user writes (YAML), parsed with errors that point at the stage and
//! key, and checked for numbers that cannot work before anything runs.
//!
//! ```yaml
//! name: reconnect-storm
//! seed: 42
//! clusters: {prefix: storm, profile: lean, population: {nodes: 20, podsPerNode: 10}}
//! stages:
//!   - ramp: {to: 50, rate: 2/s}
//!   - waitActive: {timeout: 20m}
//!   - tunnelDrop: {clusters: 100%, spread: 0s}
//! ```

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::kwok::names;
use crate::kwok::population::PopulationProfile;
use crate::kwok::profile::ComponentProfile;

/// Most clusters one scenario may ask for: far beyond what one machine holds, so only typos
/// (an extra zero or two) are refused here; the port range is checked against the real settings.
pub const MAX_CLUSTERS: u32 = 100_000;
/// Most fake nodes one cluster may be scaled to.
pub const MAX_NODES: u32 = 10_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scenario {
    /// Names the run in records and reports.
    pub name: String,
    /// Seeds every random choice (which clusters, which nodes, jitter); chosen and printed when absent.
    #[serde(default)]
    pub seed: Option<u64>,
    pub clusters: ClusterTemplate,
    #[serde(with = "serde_yaml::with::singleton_map_recursive")]
    pub stages: Vec<Stage>,
}

/// How the scenario's clusters are made: named `<prefix>-NNNNN`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterTemplate {
    pub prefix: String,
    /// The agent's default profile when absent.
    #[serde(default)]
    pub profile: Option<ComponentProfile>,
    #[serde(default)]
    pub population: PopulationProfile,
}

/// One step of a scenario; they run in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Stage {
    /// Create (or delete the highest-numbered) clusters until `to` exist, at most `rate` per second.
    Ramp(Ramp),
    /// Wait until every scenario cluster is active in Rancher.
    WaitActive(WaitActive),
    /// Do nothing for a while (the clusters stay connected and Rancher keeps probing).
    Hold(Span),
    /// Flap nodes NotReady and back to Ready, with their leases.
    NodeChurn(NodeChurn),
    /// Delete pods and create them again.
    PodChurn(PodChurn),
    /// Close the clusters' tunnels: they reconnect as the real agent would.
    TunnelDrop(TunnelDrop),
    /// Scale the clusters' fake nodes to a number.
    ScaleNodes(ScaleNodes),
    /// Kill one control-plane process of the clusters: the agent's healing must bring it back.
    ComponentKill(ComponentKill),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ramp {
    pub to: u32,
    /// As fast as the agent's bring-up concurrency allows when absent.
    #[serde(default)]
    pub rate: Option<Rate>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaitActive {
    pub timeout: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeChurn {
    pub clusters: Share,
    /// Of each chosen cluster's nodes.
    pub nodes: Share,
    pub every: Span,
    #[serde(rename = "for")]
    pub duration: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodChurn {
    pub clusters: Share,
    /// Pods deleted (and created again) per second over all chosen clusters.
    pub rate: Rate,
    #[serde(rename = "for")]
    pub duration: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelDrop {
    pub clusters: Share,
    /// The drops are spread evenly over this long; `0s` cuts them all at once.
    #[serde(default)]
    pub spread: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleNodes {
    pub clusters: Share,
    pub to: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComponentKill {
    pub component: KillableComponent,
    pub clusters: Share,
}

/// The per-cluster processes a scenario may kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KillableComponent {
    KubeApiserver,
    Etcd,
    KubeControllerManager,
    KwokController,
}

impl KillableComponent {
    pub fn as_str(self) -> &'static str {
        match self {
            KillableComponent::KubeApiserver => "kube-apiserver",
            KillableComponent::Etcd => "etcd",
            KillableComponent::KubeControllerManager => "kube-controller-manager",
            KillableComponent::KwokController => "kwok-controller",
        }
    }
}

/// A part of a population: `10%` (rounded up, so never zero of a non-empty population) or a
/// count (`3`, at most the population).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    Percent(u32),
    Count(u32),
}

impl Share {
    /// How many of `population` this share picks.
    pub fn of(self, population: u32) -> u32 {
        match self {
            Share::Percent(p) => (u64::from(population) * u64::from(p)).div_ceil(100) as u32,
            Share::Count(n) => n.min(population),
        }
    }
}

impl FromStr for Share {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let bad = || format!("invalid share {text:?}: expected a percentage (10%) or a count (3)");
        let share = match text.strip_suffix('%') {
            Some(p) => {
                let p: u32 = p.trim().parse().map_err(|_| bad())?;
                if p > 100 {
                    return Err(format!("invalid share {text:?}: at most 100%"));
                }
                Share::Percent(p)
            }
            None => Share::Count(text.parse().map_err(|_| bad())?),
        };
        if matches!(share, Share::Percent(0) | Share::Count(0)) {
            return Err(format!(
                "invalid share {text:?}: must pick something (drop the stage instead)"
            ));
        }
        Ok(share)
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Share::Percent(p) => write!(f, "{p}%"),
            Share::Count(n) => write!(f, "{n}"),
        }
    }
}

/// Events per unit of time: `2/s`, `30/m`, `0.5/s`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    per_second: f64,
}

impl Rate {
    pub fn per_second(self) -> f64 {
        self.per_second
    }

    /// How long `count` events take at this rate.
    pub fn time_for(self, count: u32) -> Duration {
        Duration::from_secs_f64(f64::from(count) / self.per_second)
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let bad = || format!("invalid rate {text:?}: expected e.g. 2/s, 30/m or 100/h");
        let (number, unit) = text.split_once('/').ok_or_else(bad)?;
        let seconds = match unit.trim() {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        let n: f64 = number.trim().parse().map_err(|_| bad())?;
        if !n.is_finite() || n <= 0.0 {
            return Err(format!("invalid rate {text:?}: must be positive"));
        }
        Ok(Rate {
            per_second: n / seconds,
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.per_second >= 1.0 || self.per_second * 60.0 < 1.0 {
            write!(f, "{}/s", round3(self.per_second))
        } else {
            write!(f, "{}/m", round3(self.per_second * 60.0))
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A length of time: `500ms`, `30s`, `10m`, `1h`, `1h30m`, or a bare number of seconds; `0s` is
/// allowed (a spread of nothing), and stages that need a positive time say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span(pub Duration);

impl FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let bad = || format!("invalid duration {text:?}: expected e.g. 500ms, 90s, 10m or 1h30m");
        if text.is_empty() {
            return Err(bad());
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(Span(Duration::from_secs(text.parse().map_err(|_| bad())?)));
        }
        let mut total = Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
            if digits == 0 {
                return Err(bad());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let part = match &rest[..unit_len] {
                "ms" => Duration::from_millis(n),
                "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(n.saturating_mul(60)),
                "h" => Duration::from_secs(n.saturating_mul(3600)),
                _ => return Err(bad()),
            };
            total = total.saturating_add(part);
            rest = &rest[unit_len..];
        }
        Ok(Span(total))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 != 0 {
            return write!(f, "{ms}ms");
        }
        let (h, m, s) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60);
        let mut out = String::new();
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if m > 0 {
            out.push_str(&format!("{m}m"));
        }
        if s > 0 || out.is_empty() {
            out.push_str(&format!("{s}s"));
        }
        f.write_str(&out)
    }
}

/// The three text-typed values read from YAML through their `FromStr`, so a number (`3`, `30`)
/// and a string (`"10%"`, `"30s"`) are both accepted where they make sense.
macro_rules! text_serde {
    ($ty:ty) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Raw {
                    Number(u64),
                    Text(String),
                }
                let text = match Raw::deserialize(d)? {
                    Raw::Number(n) => n.to_string(),
                    Raw::Text(text) => text,
                };
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

text_serde!(Share);
text_serde!(Rate);
text_serde!(Span);

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid scenario {path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// What the machine running a scenario can hold, to refuse impossible numbers up front.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Clusters the agent's port range has room for.
    pub max_clusters: u32,
}

impl Stage {
    /// Every stage kind, as [`Stage::kind`] names them (so `/metrics` can show zeros for kinds
    /// that have not run).
    pub const KINDS: [&'static str; 8] = [
        "ramp",
        "waitActive",
        "hold",
        "nodeChurn",
        "podChurn",
        "tunnelDrop",
        "scaleNodes",
        "componentKill",
    ];

    /// The key the stage is written with.
    pub fn kind(&self) -> &'static str {
        match self {
            Stage::Ramp(_) => "ramp",
            Stage::WaitActive(_) => "waitActive",
            Stage::Hold(_) => "hold",
            Stage::NodeChurn(_) => "nodeChurn",
            Stage::PodChurn(_) => "podChurn",
            Stage::TunnelDrop(_) => "tunnelDrop",
            Stage::ScaleNodes(_) => "scaleNodes",
            Stage::ComponentKill(_) => "componentKill",
        }
    }

    /// Whether the stage acts on existing clusters (and so needs some).
    fn acts_on_clusters(&self) -> bool {
        matches!(
            self,
            Stage::NodeChurn(_)
                | Stage::PodChurn(_)
                | Stage::TunnelDrop(_)
                | Stage::ScaleNodes(_)
                | Stage::ComponentKill(_)
        )
    }
}

impl Scenario {
    /// Reads, parses and validates a scenario file.
    pub fn from_file(path: &Path, limits: Limits) -> Result<Self, ScenarioError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, limits).map_err(|reason| ScenarioError::Invalid {
            path: shown,
            reason,
        })
    }

    /// Parses and validates scenario YAML.
    pub fn parse(text: &str, limits: Limits) -> Result<Self, String> {
        let scenario: Scenario = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        scenario.validate(limits)?;
        Ok(scenario)
    }

    /// Checks what the types alone cannot: names, numbers that cannot work, stages that would act
    /// on nothing. Errors name the stage (`stages[3].nodeChurn`) as the parser does.
    pub fn validate(&self, limits: Limits) -> Result<(), String> {
        names::validate(&self.name).map_err(|e| format!("name: {}", e.reason))?;
        let example = names::numbered(&self.clusters.prefix, 0);
        names::validate(&example).map_err(|e| {
            format!(
                "clusters.prefix {:?}: cluster names like {example:?} would be invalid: {}",
                self.clusters.prefix, e.reason
            )
        })?;
        self.clusters
            .population
            .validate()
            .map_err(|e| format!("clusters.population: {e}"))?;
        if self.stages.is_empty() {
            return Err("stages: a scenario needs at least one stage".into());
        }
        let max = limits.max_clusters.min(MAX_CLUSTERS);
        let mut clusters = 0u32;
        let mut nodes = self.clusters.population.nodes;
        let pods_per_node = self.clusters.population.pods_per_node;
        for (i, stage) in self.stages.iter().enumerate() {
            let at = format!("stages[{i}].{}", stage.kind());
            if stage.acts_on_clusters() && clusters == 0 {
                return Err(format!(
                    "{at}: no cluster exists at this point (put a ramp before it)"
                ));
            }
            match stage {
                Stage::Ramp(ramp) => {
                    if ramp.to > max {
                        return Err(format!(
                            "{at}.to: {} clusters asked, but at most {max} fit (the agent's port \
                             range has {} blocks; raise --port-blocks)",
                            ramp.to, limits.max_clusters
                        ));
                    }
                    clusters = ramp.to;
                }
                Stage::WaitActive(wait) => positive(&at, "timeout", wait.timeout)?,
                Stage::Hold(span) => positive(&at, "", *span)?,
                Stage::NodeChurn(churn) => {
                    if nodes == 0 {
                        return Err(format!("{at}: the clusters have no nodes to churn"));
                    }
                    positive(&at, "every", churn.every)?;
                    positive(&at, "for", churn.duration)?;
                    if churn.every.0 < Duration::from_secs(1) {
                        return Err(format!(
                            "{at}.every: {} is shorter than a node heartbeat can follow (at \
                             least 1s)",
                            churn.every
                        ));
                    }
                    if churn.every.0 > churn.duration.0 {
                        return Err(format!(
                            "{at}: every ({}) is longer than for ({}): nothing would flap",
                            churn.every, churn.duration
                        ));
                    }
                }
                Stage::PodChurn(churn) => {
                    if nodes == 0 || pods_per_node == 0 {
                        return Err(format!("{at}: the clusters have no pods to churn"));
                    }
                    positive(&at, "for", churn.duration)?;
                }
                Stage::TunnelDrop(_) => {}
                Stage::ScaleNodes(scale) => {
                    if scale.to > MAX_NODES {
                        return Err(format!(
                            "{at}.to: {} nodes per cluster is beyond what a simulated cluster is \
                             for (at most {MAX_NODES})",
                            scale.to
                        ));
                    }
                    // Later stages see the scaled clusters' nodes; the others keep theirs.
                    nodes = nodes.max(scale.to);
                }
                Stage::ComponentKill(_) => {}
            }
        }
        Ok(())
    }
}

fn positive(at: &str, key: &str, span: Span) -> Result<(), String> {
    if span.0.is_zero() {
        let at = if key.is_empty() {
            at.to_string()
        } else {
            format!("{at}.{key}")
        };
        return Err(format!("{at}: must be longer than 0s"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_clusters: 1000 };

    const STORM: &str = "\
name: reconnect-storm-500
seed: 42
clusters: {prefix: storm, profile: lean, population: {nodes: 20, podsPerNode: 10}}
stages:
  - ramp: {to: 500, rate: 2/s}
  - waitActive: {timeout: 20m}
  - hold: 10m
  - nodeChurn: {clusters: 10%, nodes: 20%, every: 30s, for: 10m}
  - podChurn: {clusters: 50%, rate: 100/s, for: 5m}
  - tunnelDrop: {clusters: 100%, spread: 0s}
  - waitActive: {timeout: 10m}
  - scaleNodes: {clusters: 5%, to: 200}
  - componentKill: {component: kube-apiserver, clusters: 3}
  - ramp: {to: 100, rate: 5/s}
";

    #[test]
    fn kinds_lists_every_stage_kind() {
        let s = Scenario::parse(STORM, LIMITS).unwrap();
        let mut kinds: Vec<&str> = s.stages.iter().map(Stage::kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        let mut all = Stage::KINDS.to_vec();
        all.sort_unstable();
        assert_eq!(kinds, all);
    }

    #[test]
    fn the_issue_example_parses() {
        let s = Scenario::parse(STORM, LIMITS).unwrap();
        assert_eq!(s.seed, Some(42));
        assert_eq!(s.clusters.profile, Some(ComponentProfile::Lean));
        assert_eq!(s.clusters.population.nodes, 20);
        assert_eq!(s.stages.len(), 10);
        assert_eq!(
            s.stages[3],
            Stage::NodeChurn(NodeChurn {
                clusters: Share::Percent(10),
                nodes: Share::Percent(20),
                every: Span(Duration::from_secs(30)),
                duration: Span(Duration::from_secs(600)),
            })
        );
        assert_eq!(
            s.stages[5],
            Stage::TunnelDrop(TunnelDrop {
                clusters: Share::Percent(100),
                spread: Span(Duration::ZERO),
            })
        );
        assert_eq!(s.stages[2], Stage::Hold(Span(Duration::from_secs(600))));
        let Stage::Ramp(ramp) = &s.stages[0] else {
            panic!("{:?}", s.stages[0])
        };
        assert_eq!(ramp.rate.unwrap().per_second(), 2.0);
        // What is written can be read back.
        let again: Scenario = serde_yaml::from_str(&serde_yaml::to_string(&s).unwrap()).unwrap();
        assert_eq!(again, s);
    }

    fn error(yaml: &str) -> String {
        Scenario::parse(yaml, LIMITS).unwrap_err()
    }

    const HEAD: &str = "name: t\nclusters: {prefix: c}\nstages:\n";

    #[test]
    fn mistakes_are_named_where_they_are() {
        let cases = [
            (
                "  - ramp: {to: 5, rat: 2/s}\n",
                "stages[0].ramp: unknown field `rat`",
            ),
            ("  - rmp: {to: 5}\n", "unknown variant `rmp`"),
            ("  - ramp: {to: 5, rate: 2/d}\n", "invalid rate \"2/d\""),
            ("  - ramp: {to: 5, rate: 0/s}\n", "must be positive"),
            (
                "  - ramp: {to: 5000}\n",
                "stages[0].ramp.to: 5000 clusters asked, but at most 1000 fit",
            ),
            ("  - hold: soon\n", "invalid duration \"soon\""),
            ("  - hold: 0s\n", "stages[0].hold: must be longer than 0s"),
            (
                "  - tunnelDrop: {clusters: 10%}\n",
                "stages[0].tunnelDrop: no cluster exists",
            ),
            (
                "  - ramp: {to: 2}\n  - tunnelDrop: {clusters: 110%}\n",
                "at most 100%",
            ),
            (
                "  - ramp: {to: 2}\n  - tunnelDrop: {clusters: 0%}\n",
                "must pick something",
            ),
            (
                "  - ramp: {to: 2}\n  - nodeChurn: {clusters: 1, nodes: 1, every: 1m, for: 30s}\n",
                "stages[1].nodeChurn: every (1m) is longer than for (30s)",
            ),
            (
                "  - ramp: {to: 2}\n  - scaleNodes: {clusters: 1, to: 99999}\n",
                "stages[1].scaleNodes.to: 99999 nodes",
            ),
            (
                "  - ramp: {to: 2}\n  - componentKill: {component: kubelet, clusters: 1}\n",
                "unknown variant `kubelet`",
            ),
            ("", "stages: a scenario needs at least one stage"),
        ];
        for (stages, expected) in cases {
            let yaml = if stages.is_empty() {
                "name: t\nclusters: {prefix: c}\nstages: []\n".to_string()
            } else {
                format!("{HEAD}{stages}")
            };
            let err = error(&yaml);
            assert!(err.contains(expected), "{stages:?}: {err}");
        }
        assert!(
            error("name: t\nclusters: {prefix: c, profile: tiny}\nstages: []\n")
                .contains("unknown variant `tiny`")
        );
        assert!(
            error("name: t\nclusters: {prefix: Bad_}\nstages:\n  - hold: 1s\n")
                .contains("clusters.prefix \"Bad_\"")
        );
        assert!(
            error("name: T\nclusters: {prefix: c}\nstages:\n  - hold: 1s\n").starts_with("name: ")
        );
        assert!(error("name: t\ncluster: {prefix: c}\nstages: []\n")
            .contains("unknown field `cluster`"));
        assert!(error(
            "name: t\nclusters: {prefix: c, population: {nodes: 0}}\nstages:\n  - ramp: {to: 1}\n  \
             - nodeChurn: {clusters: 1, nodes: 1, every: 1s, for: 2s}\n"
        )
        .contains("no nodes to churn"));
    }

    #[test]
    fn the_example_scenarios_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                Scenario::from_file(&path, Limits { max_clusters: 1000 })
                    .unwrap_or_else(|e| panic!("{e}"));
                seen += 1;
            }
        }
        assert!(seen >= 4, "examples under {}", dir.display());
    }

    #[test]
    fn shares_round_up_and_stay_within_the_population() {
        assert_eq!(Share::Percent(10).of(15), 2);
        assert_eq!(Share::Percent(100).of(7), 7);
        assert_eq!(Share::Percent(5).of(1), 1);
        assert_eq!(Share::Percent(50).of(0), 0);
        assert_eq!(Share::Count(3).of(2), 2);
        assert_eq!("7".parse::<Share>().unwrap(), Share::Count(7));
    }

    #[test]
    fn spans_and_rates_read_as_people_write_them() {
        let span = |t: &str| t.parse::<Span>().unwrap().0;
        assert_eq!(span("500ms"), Duration::from_millis(500));
        assert_eq!(span("90"), Duration::from_secs(90));
        assert_eq!(span("1h30m"), Duration::from_secs(5400));
        assert_eq!(span("0s"), Duration::ZERO);
        for bad in ["", "m", "5x", "1.5s", "-3s", "s5"] {
            assert!(bad.parse::<Span>().is_err(), "{bad:?}");
        }
        assert_eq!(Span(Duration::from_secs(5400)).to_string(), "1h30m");
        assert_eq!(Span(Duration::from_millis(1500)).to_string(), "1500ms");
        let rate = |t: &str| t.parse::<Rate>().unwrap().per_second();
        assert_eq!(rate("30/m"), 0.5);
        assert_eq!(rate("0.5/s"), 0.5);
        assert_eq!("30/m".parse::<Rate>().unwrap().to_string(), "30/m");
        assert_eq!(
            "2/s".parse::<Rate>().unwrap().time_for(10),
            Duration::from_secs(5)
        );
    }
}

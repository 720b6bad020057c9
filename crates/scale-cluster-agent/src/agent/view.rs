//! What the agent shows of itself and its clusters ([`ClusterView`], [`Health`]): the wire
//! format of the HTTP API, which by construction holds no token or tunnel params. Times travel as
//! RFC 3339 UTC strings, as Kubernetes writes `creationTimestamp`; in memory they are unix
//! seconds.

use serde::{Deserialize, Serialize};

use super::tunnels;
use crate::store::AgentPhase;

/// A cluster as the API shows it: never any token or params.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterView {
    pub name: String,
    /// The observed phase; `deleting` as soon as a deletion is requested and `stopping` as soon
    /// as a stop is, as Kubernetes shows a terminating object.
    pub phase: AgentPhase,
    pub profile: String,
    /// The run state the user asked for: stopped (`true`) or running.
    #[serde(default)]
    pub stop_requested: bool,
    /// The node count the user asked for (the agent's population profile unless scaled).
    pub desired_nodes: u32,
    /// The node count the KWOK cluster has, as last applied; `None` before it exists.
    #[serde(default)]
    pub nodes: Option<u32>,
    pub rancher_cluster_id: Option<String>,
    /// Rancher's own `state` of the cluster, as last seen.
    pub rancher_state: Option<String>,
    /// The simulated cluster's apiserver, once it runs.
    pub apiserver: Option<String>,
    pub tunnels: tunnels::TunnelsView,
    pub last_error: Option<String>,
    /// The last time the agent healed the cluster: what it restarted and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heal: Option<String>,
    /// When that heal was.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339::option"
    )]
    pub last_heal_at: Option<u64>,
    /// What the agent holds back for this cluster now, and why: a bring-up waiting while the
    /// machine is full, or a restart deferred while the CPU is saturated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    pub attempts: u32,
    #[serde(with = "rfc3339")]
    pub created_at: u64,
    /// When the cluster first went active.
    #[serde(default, with = "rfc3339::option")]
    pub active_at: Option<u64>,
}

/// Health of the agent process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Health {
    /// `ok`, or `shutting-down`.
    pub status: String,
    /// The instance id that marks this agent's clusters in Rancher.
    pub instance_id: String,
    pub clusters: usize,
    pub active: usize,
    pub failed: usize,
    pub tunnels_connected: usize,
    /// Clusters with something held back now ([`ClusterView::held`]).
    #[serde(default)]
    pub held: usize,
    /// The machine's CPU pressure (`some avg10` of `/proc/pressure/cpu`, percent), if the kernel
    /// reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_pressure: Option<f64>,
}

/// Unix seconds as RFC 3339 UTC (`2026-12-01T15:23:40Z`) on the wire.
pub mod rfc3339 {
    use serde::{de, Deserialize, Deserializer, Serializer};

    /// `unix_seconds` as RFC 3339; `None` if it is beyond what a timestamp can hold.
    pub fn format(unix_seconds: u64) -> Option<String> {
        let seconds = i64::try_from(unix_seconds).ok()?;
        jiff::Timestamp::from_second(seconds)
            .ok()
            .map(|t| t.to_string())
    }

    /// An RFC 3339 time as unix seconds; times before 1970 are refused.
    pub fn parse(text: &str) -> Result<u64, String> {
        let stamp: jiff::Timestamp = text
            .parse()
            .map_err(|e| format!("{text:?} is not an RFC 3339 time: {e}"))?;
        u64::try_from(stamp.as_second()).map_err(|_| format!("{text:?} is before 1970"))
    }

    pub fn serialize<S: Serializer>(unix_seconds: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        match format(*unix_seconds) {
            Some(text) => serializer.serialize_str(&text),
            None => Err(serde::ser::Error::custom(format!(
                "{unix_seconds} is out of range for a timestamp"
            ))),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(de::Error::custom)
    }

    /// The same for an optional time (`null` when absent).
    pub mod option {
        use serde::{de, Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(
            unix_seconds: &Option<u64>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match unix_seconds {
                Some(seconds) => super::serialize(seconds, serializer),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<u64>, D::Error> {
            Option::<String>::deserialize(deserializer)?
                .map(|text| super::parse(&text).map_err(de::Error::custom))
                .transpose()
        }
    }
}

/// The phase a cluster is shown in: a requested deletion or stop shows at once, as Kubernetes
/// shows a terminating object before its finalizers ran.
pub(super) fn shown_phase(
    phase: AgentPhase,
    deletion_requested: bool,
    stop_requested: bool,
) -> AgentPhase {
    match phase {
        _ if deletion_requested => AgentPhase::Deleting,
        AgentPhase::Stopped | AgentPhase::Failed => phase,
        _ if stop_requested => AgentPhase::Stopping,
        _ => phase,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_travel_as_rfc3339_and_come_back_the_same() {
        let view = ClusterView {
            name: "a".into(),
            phase: AgentPhase::Active,
            profile: "lean".into(),
            stop_requested: false,
            desired_nodes: 2,
            nodes: Some(2),
            rancher_cluster_id: None,
            rancher_state: None,
            apiserver: None,
            tunnels: tunnels::TunnelsView {
                main: "closed".into(),
                steve: "closed".into(),
            },
            last_error: None,
            last_heal: Some("restarted etcd".into()),
            last_heal_at: Some(1_796_138_680),
            held: None,
            attempts: 0,
            created_at: 1_796_138_620,
            active_at: None,
        };
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["created_at"], "2026-12-01T15:23:40Z");
        assert_eq!(json["last_heal_at"], "2026-12-01T15:24:40Z");
        assert!(json["active_at"].is_null());
        let back: ClusterView = serde_json::from_value(json).unwrap();
        assert_eq!(back, view);
        assert!(rfc3339::parse("1969-12-31T23:59:59Z").is_err());
        assert!(rfc3339::parse("1796138620").is_err());
    }

    #[test]
    fn requested_deletes_and_stops_show_at_once() {
        use AgentPhase::*;
        assert_eq!(shown_phase(Active, true, true), Deleting);
        assert_eq!(shown_phase(Stopped, true, true), Deleting);
        assert_eq!(shown_phase(Active, false, true), Stopping);
        assert_eq!(shown_phase(Stopped, false, true), Stopped);
        assert_eq!(shown_phase(Failed, false, true), Failed);
        assert_eq!(shown_phase(Stopped, false, false), Stopped);
        assert_eq!(shown_phase(Stopping, false, false), Stopping);
        assert_eq!(shown_phase(Connecting, false, false), Connecting);
    }
}

//! The Prometheus families made from the event log and the per-tunnel counters: lifecycle
//! histograms, failures and disconnects by reason, the Rancher load per cluster, and the
//! agent's own `process_*` memory and CPU.

use std::fmt::Write as _;

use super::proc_stat::Usage;
use super::{Folded, Histogram, MEASURED_PHASES};
use crate::agent::tunnels::TunnelLoad;

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value (cluster names are RFC 1123 labels; reasons are fixed words, but the
/// format is kept whatever comes in).
pub(crate) fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A per-tunnel family: name, type, help, and the value of one tunnel.
type PerTunnel = (
    &'static str,
    &'static str,
    &'static str,
    fn(&TunnelLoad) -> i128,
);

/// Appends the families to `out`.
pub fn render(out: &mut String, folded: &Folded, load: &[TunnelLoad], usage: Option<Usage>) {
    family(
        out,
        "sca_cluster_phase_duration_seconds",
        "histogram",
        "Time a cluster spent in a bring-up phase before entering the next one (provisioning: \
         KWOK up and prepared; registering: found or created in Rancher; connecting: tunnels up \
         until Rancher reports it active).",
    );
    let empty = Histogram::seconds();
    for phase in MEASURED_PHASES {
        let h = folded.phase_seconds.get(phase.as_str()).unwrap_or(&empty);
        h.render(
            out,
            "sca_cluster_phase_duration_seconds",
            &format!("phase=\"{phase}\""),
        );
    }
    family(
        out,
        "sca_cluster_create_to_active_seconds",
        "histogram",
        "Time from a cluster's creation to the first time Rancher reported it active.",
    );
    folded
        .create_to_active_seconds
        .render(out, "sca_cluster_create_to_active_seconds", "");
    family(
        out,
        "sca_tunnel_reconnect_duration_seconds",
        "histogram",
        "Time a connected tunnel was down before it connected again, by tunnel.",
    );
    for tunnel in ["main", "steve"] {
        let h = folded.reconnect_seconds.get(tunnel).unwrap_or(&empty);
        h.render(
            out,
            "sca_tunnel_reconnect_duration_seconds",
            &format!("tunnel=\"{tunnel}\""),
        );
    }
    family(
        out,
        "sca_clusters_reached_active_total",
        "counter",
        "Times a cluster became active (first bring-ups, restarts and heals).",
    );
    let _ = writeln!(
        out,
        "sca_clusters_reached_active_total {}",
        folded.reached_active
    );
    family(
        out,
        "sca_cluster_failures_total",
        "counter",
        "Failed steps, by the phase that failed and the kind of failure.",
    );
    for ((phase, reason), count) in &folded.failures {
        let _ = writeln!(
            out,
            "sca_cluster_failures_total{{phase=\"{}\",reason=\"{reason}\"}} {count}",
            label(phase)
        );
    }
    family(
        out,
        "sca_tunnel_disconnects_total",
        "counter",
        "Connected tunnels that dropped, by tunnel and the kind of error.",
    );
    for ((tunnel, reason), count) in &folded.disconnects {
        let _ = writeln!(
            out,
            "sca_tunnel_disconnects_total{{tunnel=\"{}\",reason=\"{reason}\"}} {count}",
            label(tunnel)
        );
    }
    let per_tunnel: [PerTunnel; 5] = [
        (
            "sca_rancher_streams_opened_total",
            "counter",
            "Streams Rancher opened on a cluster's tunnel (each an apiserver connection on main, \
             a Steve request on steve).",
            |l| l.metrics.streams_opened.into(),
        ),
        (
            "sca_rancher_streams_open",
            "gauge",
            "Streams open now on a cluster's tunnel.",
            |l| l.metrics.streams_active.into(),
        ),
        (
            "sca_rancher_streams_long_lived",
            "gauge",
            "Streams open now for 30 s or more on a cluster's tunnel: Rancher's watches.",
            |l| l.metrics.streams_long_lived.into(),
        ),
        (
            "sca_rancher_received_bytes_total",
            "counter",
            "Bytes Rancher sent to a cluster through its tunnel (stream payloads).",
            |l| l.metrics.bytes_received.into(),
        ),
        (
            "sca_rancher_sent_bytes_total",
            "counter",
            "Bytes a cluster sent to Rancher through its tunnel (stream payloads).",
            |l| l.metrics.bytes_sent.into(),
        ),
    ];
    for (name, kind, help, value) in per_tunnel {
        family(out, name, kind, help);
        for l in load {
            let _ = writeln!(
                out,
                "{name}{{cluster=\"{}\",tunnel=\"{}\"}} {}",
                label(&l.cluster),
                l.tunnel,
                value(l)
            );
        }
    }
    if let Some(usage) = usage {
        family(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the agent process.",
        );
        let _ = writeln!(out, "process_resident_memory_bytes {}", usage.rss_bytes);
        family(
            out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time of the agent process.",
        );
        let _ = writeln!(out, "process_cpu_seconds_total {}", usage.cpu_seconds);
    }
}

/// One stage of one scenario run, as the scenario families label it.
#[derive(Debug, Clone, PartialEq)]
pub struct StageRef {
    pub run: String,
    pub index: usize,
    pub kind: &'static str,
}

impl StageRef {
    fn labels(&self) -> String {
        format!(
            "run=\"{}\",index=\"{}\",kind=\"{}\"",
            label(&self.run),
            self.index,
            self.kind
        )
    }
}

/// The reconnects of the latest `tunnelDrop` stage, as the stage recorded them.
#[derive(Debug, Clone, PartialEq)]
pub struct TunnelDropFigures {
    pub stage: StageRef,
    pub dropped: u64,
    pub reconnected: u64,
    /// First to last reconnect.
    pub spread_seconds: f64,
    /// The most reconnects that fell in any one-second window.
    pub max_reconnects_per_second: u64,
}

/// What `/metrics` shows of scenario runs. The scenario runner keeps it in memory and updates it
/// as stages end, so a scrape reads no database; it covers this process's life, as counters do.
#[derive(Debug, Clone, Default)]
pub struct ScenarioFigures {
    /// Finished runs by outcome (`succeeded`, `failed`, `stopped`, `interrupted`).
    pub runs: std::collections::BTreeMap<&'static str, u64>,
    /// Finished stages by (kind, outcome).
    pub stages: std::collections::BTreeMap<(&'static str, &'static str), u64>,
    /// Stage durations by kind.
    pub stage_seconds: std::collections::BTreeMap<&'static str, Histogram>,
    /// The stage in progress, if a run is going.
    pub current: Option<StageRef>,
    /// Time from a fault stage's first fault until every scenario cluster was up again, by kind.
    pub fault_recovery_seconds: std::collections::BTreeMap<&'static str, Histogram>,
    /// The latest fault recovery and its stage.
    pub last_recovery: Option<(StageRef, f64)>,
    pub last_tunnel_drop: Option<TunnelDropFigures>,
}

/// Appends the `sca_scenario_*` families to `out`. Every family is declared even when empty, so
/// dashboards and alerts see the name before the first run.
pub fn render_scenarios(out: &mut String, figures: &ScenarioFigures) {
    family(
        out,
        "sca_scenario_runs_total",
        "counter",
        "Finished scenario runs, by outcome (interrupted: the agent stopped during the run).",
    );
    for (outcome, count) in &figures.runs {
        let _ = writeln!(
            out,
            "sca_scenario_runs_total{{outcome=\"{outcome}\"}} {count}"
        );
    }
    family(
        out,
        "sca_scenario_running",
        "gauge",
        "1 while a scenario run is going.",
    );
    let _ = writeln!(
        out,
        "sca_scenario_running {}",
        u8::from(figures.current.is_some())
    );
    family(
        out,
        "sca_scenario_current_stage",
        "gauge",
        "1 for the stage the running scenario is in (run id, stage index, kind).",
    );
    if let Some(stage) = &figures.current {
        let _ = writeln!(out, "sca_scenario_current_stage{{{}}} 1", stage.labels());
    }
    family(
        out,
        "sca_scenario_stages_total",
        "counter",
        "Finished scenario stages, by kind and outcome.",
    );
    for ((kind, outcome), count) in &figures.stages {
        let _ = writeln!(
            out,
            "sca_scenario_stages_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {count}"
        );
    }
    family(
        out,
        "sca_scenario_stage_duration_seconds",
        "histogram",
        "Time a scenario stage took, by kind.",
    );
    for (kind, h) in &figures.stage_seconds {
        h.render(
            out,
            "sca_scenario_stage_duration_seconds",
            &format!("kind=\"{kind}\""),
        );
    }
    family(
        out,
        "sca_scenario_fault_recovery_seconds",
        "histogram",
        "Time from a fault stage's first fault (tunnelDrop, componentKill) until every scenario \
         cluster was up again as Rancher sees it.",
    );
    for (kind, h) in &figures.fault_recovery_seconds {
        h.render(
            out,
            "sca_scenario_fault_recovery_seconds",
            &format!("kind=\"{kind}\""),
        );
    }
    family(
        out,
        "sca_scenario_last_fault_recovery_seconds",
        "gauge",
        "The latest fault stage's recovery time (see sca_scenario_fault_recovery_seconds).",
    );
    if let Some((stage, seconds)) = &figures.last_recovery {
        let _ = writeln!(
            out,
            "sca_scenario_last_fault_recovery_seconds{{{}}} {seconds}",
            stage.labels()
        );
    }
    let drop = figures.last_tunnel_drop.as_ref();
    let per_drop: [(&str, &str, Option<f64>); 4] = [
        (
            "sca_scenario_tunnel_drop_clusters",
            "Clusters whose tunnels the latest tunnelDrop stage cut.",
            drop.map(|d| d.dropped as f64),
        ),
        (
            "sca_scenario_tunnel_drop_reconnected",
            "Clusters of the latest tunnelDrop stage whose tunnels came back.",
            drop.map(|d| d.reconnected as f64),
        ),
        (
            "sca_scenario_tunnel_drop_reconnect_spread_seconds",
            "First to last reconnect after the latest tunnelDrop stage: how far the clients' \
             jitter spread the reconnects.",
            drop.map(|d| d.spread_seconds),
        ),
        (
            "sca_scenario_tunnel_drop_reconnects_max_per_second",
            "The most reconnects in any one-second window after the latest tunnelDrop stage.",
            drop.map(|d| d.max_reconnects_per_second as f64),
        ),
    ];
    for (name, help, value) in per_drop {
        family(out, name, "gauge", help);
        if let (Some(drop), Some(value)) = (drop, value) {
            let _ = writeln!(out, "{name}{{{}}} {value}", drop.stage.labels());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_families_are_declared_before_any_run_and_labelled_after() {
        let mut out = String::new();
        render_scenarios(&mut out, &ScenarioFigures::default());
        for name in [
            "sca_scenario_runs_total counter",
            "sca_scenario_current_stage gauge",
            "sca_scenario_stage_duration_seconds histogram",
            "sca_scenario_fault_recovery_seconds histogram",
            "sca_scenario_tunnel_drop_reconnects_max_per_second gauge",
        ] {
            assert!(out.contains(&format!("# TYPE {name}\n")), "{out}");
        }
        assert!(out.contains("sca_scenario_running 0\n"), "{out}");

        let stage = StageRef {
            run: "smoke-1".into(),
            index: 3,
            kind: "tunnelDrop",
        };
        let mut figures = ScenarioFigures {
            current: Some(stage.clone()),
            last_recovery: Some((stage.clone(), 1.25)),
            ..Default::default()
        };
        figures.last_tunnel_drop = Some(TunnelDropFigures {
            stage,
            dropped: 3,
            reconnected: 3,
            spread_seconds: 0.5,
            max_reconnects_per_second: 3,
        });
        let mut out = String::new();
        render_scenarios(&mut out, &figures);
        let labels = "run=\"smoke-1\",index=\"3\",kind=\"tunnelDrop\"";
        for line in [
            format!("sca_scenario_current_stage{{{labels}}} 1\n"),
            format!("sca_scenario_last_fault_recovery_seconds{{{labels}}} 1.25\n"),
            format!("sca_scenario_tunnel_drop_reconnect_spread_seconds{{{labels}}} 0.5\n"),
            format!("sca_scenario_tunnel_drop_reconnects_max_per_second{{{labels}}} 3\n"),
            "sca_scenario_running 1\n".to_string(),
        ] {
            assert!(out.contains(&line), "{line} in {out}");
        }
    }
}

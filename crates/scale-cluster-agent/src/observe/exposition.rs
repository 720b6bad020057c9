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

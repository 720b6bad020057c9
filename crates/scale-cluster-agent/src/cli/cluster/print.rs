//! How clusters are printed: kubectl-style tables (`-o wide` adds columns) and `get` details, for
//! the agent's view ([`Cluster`]) and for KWOK-only clusters ([`ClusterInfo`]). Times are RFC 3339
//! with their age, as kubectl shows them.

use crate::api::Cluster;
use crate::cli::output::{
    age_now, or_none, out, outln, print_object, shorten, time_and_age, Output, Table,
};
use crate::kwok::ClusterInfo;

/// Prints a table, or, like kubectl, says on stderr that there is nothing to list.
fn table(table: &Table) -> std::io::Result<()> {
    if table.is_empty() {
        eprintln!("No clusters found.");
        Ok(())
    } else {
        out!("{table}")
    }
}

/// `3`, or `2/3` while the node count asked for is not applied yet.
fn nodes(cluster: &Cluster) -> String {
    match cluster.nodes {
        Some(n) if n == cluster.desired_nodes => n.to_string(),
        Some(n) => format!("{n}/{}", cluster.desired_nodes),
        None => format!("-/{}", cluster.desired_nodes),
    }
}

pub(super) fn agent_clusters(clusters: &[Cluster], output: Output) -> anyhow::Result<()> {
    if print_object(clusters, output)? {
        return Ok(());
    }
    let wide = output == Output::Wide;
    let mut headers = vec![
        "NAME",
        "PHASE",
        "RANCHER ID",
        "RANCHER STATE",
        "TUNNELS (MAIN/STEVE)",
        "AGE",
    ];
    if wide {
        headers.extend(["PROFILE", "APISERVER", "NODES", "ATTEMPTS"]);
    }
    headers.push("LAST ERROR");
    let mut rows = Table::new(headers);
    for c in clusters {
        let mut row = vec![
            c.name.clone(),
            c.phase.to_string(),
            or_none(c.rancher_cluster_id.as_deref()),
            or_none(c.rancher_state.as_deref()),
            format!("{}/{}", c.tunnels.main, c.tunnels.steve),
            age_now(c.created_at),
        ];
        if wide {
            row.extend([
                c.profile.clone(),
                or_none(c.apiserver.as_deref()),
                nodes(c),
                c.attempts.to_string(),
            ]);
        }
        // What is held back now says more than an old error; the whole text in wide output, the
        // default keeps one screen line per cluster.
        row.push(match (c.held.as_ref().or(c.last_error.as_ref()), wide) {
            (Some(err), true) => err.clone(),
            (Some(err), false) => shorten(err, 60),
            (None, _) => String::new(),
        });
        rows.row(row);
    }
    table(&rows)?;
    Ok(())
}

pub(super) fn agent_details(c: &Cluster) -> std::io::Result<()> {
    outln!("name:          {}", c.name)?;
    outln!("phase:         {} (attempts {})", c.phase, c.attempts)?;
    outln!(
        "wanted:        {}",
        if c.stop_requested {
            "stopped"
        } else {
            "running"
        }
    )?;
    outln!("profile:       {}", c.profile)?;
    outln!(
        "nodes:         {} (desired {})",
        c.nodes.map_or_else(|| "-".to_string(), |n| n.to_string()),
        c.desired_nodes
    )?;
    outln!(
        "rancher:       {} (state {})",
        or_none(c.rancher_cluster_id.as_deref()),
        or_none(c.rancher_state.as_deref())
    )?;
    outln!(
        "tunnels:       main {}, steve {}",
        c.tunnels.main,
        c.tunnels.steve
    )?;
    outln!("apiserver:     {}", or_none(c.apiserver.as_deref()))?;
    outln!("created:       {}", time_and_age(c.created_at))?;
    if let Some(at) = c.active_at {
        outln!("active since:  {}", time_and_age(at))?;
    }
    if let Some(heal) = &c.last_heal {
        match c.last_heal_at {
            Some(at) => outln!("last heal:     {} ({heal})", time_and_age(at))?,
            None => outln!("last heal:     {heal}")?,
        }
    }
    if let Some(held) = &c.held {
        outln!("held:          {held}")?;
    }
    if let Some(err) = &c.last_error {
        outln!("last error:    {err}")?;
    }
    Ok(())
}

pub(super) fn kwok_clusters(clusters: &[ClusterInfo], output: Output) -> anyhow::Result<()> {
    if print_object(clusters, output)? {
        return Ok(());
    }
    let wide = output == Output::Wide;
    let mut headers = vec![
        "NAME",
        "HEALTH",
        "PROFILE",
        "APISERVER",
        "NODES",
        "PODS/NODE",
    ];
    if wide {
        headers.extend(["PHASE", "KUBECONFIG", "LAST ERROR"]);
    }
    let mut rows = Table::new(headers);
    for c in clusters {
        let mut row = vec![
            c.name.clone(),
            c.health.to_string(),
            c.profile.clone(),
            c.server.clone(),
            c.nodes.to_string(),
            c.pods_per_node.to_string(),
        ];
        if wide {
            row.extend([
                c.phase.to_string(),
                c.kubeconfig.display().to_string(),
                or_none(c.last_error.as_deref()),
            ]);
        }
        rows.row(row);
    }
    table(&rows)?;
    Ok(())
}

pub(super) fn kwok_details(info: &ClusterInfo) -> std::io::Result<()> {
    outln!("name:       {}", info.name)?;
    outln!("health:     {} (phase {})", info.health, info.phase)?;
    outln!("profile:    {}", info.profile)?;
    outln!(
        "apiserver:  {} (ready: {})",
        info.server,
        info.apiserver_ready
    )?;
    outln!("kubeconfig: {}", info.kubeconfig.display())?;
    outln!(
        "nodes:      {} ({} pods per node)",
        info.nodes,
        info.pods_per_node
    )?;
    let p = &info.ports;
    outln!(
        "ports:      apiserver {} etcd {}/{} controller-manager {} scheduler {} kwok {}",
        p.kube_apiserver,
        p.etcd_client,
        p.etcd_peer,
        p.kube_controller_manager,
        p.kube_scheduler,
        p.kwok_controller
    )?;
    for c in &info.components {
        let pid = c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        outln!(
            "  {:<24} pid {:<8} {}",
            c.name,
            pid,
            if c.alive { "running" } else { "not running" }
        )?;
    }
    if let Some(err) = &info.last_error {
        outln!("last error: {err}")?;
    }
    Ok(())
}

/// How to reach a new KWOK-only cluster.
pub(super) fn reach(info: &ClusterInfo) -> std::io::Result<()> {
    outln!(
        "cluster {name}: {server}\n  kubectl --kubeconfig {kc} get nodes",
        name = info.name,
        server = info.server,
        kc = info.kubeconfig.display()
    )
}

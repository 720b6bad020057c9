//! Waiting for and signalling a cluster's processes and ports, shared by the verbs.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::time::Instant;

use super::ClusterManager;
use crate::kwok::status;
use crate::store::ports::PortBlock;

/// Grace period between SIGTERM and SIGKILL when stopping a cluster that keeps its data. kube-apiserver
/// drains watches for well over 10 s on SIGTERM; etcd, the one whose data matters, recovers from its
/// WAL after SIGKILL anyway (kwokctl itself only ever SIGKILLs), so the grace is kept short.
pub(super) const TERM_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for SIGKILLed processes to disappear.
pub(super) const KILL_WAIT: Duration = Duration::from_secs(10);
pub(super) const POLL: Duration = Duration::from_millis(100);

impl ClusterManager {
    pub(super) async fn kill_remaining(&self, dir: &Path) {
        for pid in status::processes_in_async(dir).await {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        wait_gone(dir, KILL_WAIT).await;
    }
}

/// Polls until no process of the cluster in `dir` is left, or `timeout` passes.
pub(super) async fn wait_gone(dir: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && !status::processes_in_async(dir).await.is_empty() {
        tokio::time::sleep(POLL).await;
    }
}

/// SIGKILLs one component if `pid` is still that component of the cluster in `dir` (not a recycled
/// pid), and waits (bounded) until it is gone.
pub(super) async fn kill_component(dir: &Path, component: &str, pid: u32) {
    let (dir, component) = (dir.to_path_buf(), component.to_string());
    let is_it = move || status::is_cluster_process(pid, &component, &dir);
    let check = is_it.clone();
    if tokio::task::spawn_blocking(check).await.unwrap_or(false) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let deadline = Instant::now() + KILL_WAIT;
    while Instant::now() < deadline
        && tokio::task::spawn_blocking(is_it.clone())
            .await
            .unwrap_or(false)
    {
        tokio::time::sleep(POLL).await;
    }
}

/// Waits (bounded) until `port` can be bound; false if it stays taken.
pub(super) async fn wait_port_free(port: u16) -> bool {
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        if port_is_free(port) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A multi-threaded process shows as a zombie before its last thread has closed its sockets: wait
/// (bounded) until the block's ports can really be bound again.
pub(super) async fn wait_ports_free(ports: &PortBlock) {
    let deadline = Instant::now() + KILL_WAIT;
    while Instant::now() < deadline && !ports.all().into_iter().all(port_is_free) {
        tokio::time::sleep(POLL).await;
    }
}

/// A port is free if nothing listens on it on loopback or on the wildcard address.
pub fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}

/// The error for a cluster's port that another process took, naming that process.
pub(super) async fn port_taken(name: &str, port: u16) -> super::KwokError {
    let holder = tokio::task::spawn_blocking(move || port_holder(port))
        .await
        .ok()
        .flatten()
        .map_or_else(
            || "not shown in /proc/net/tcp".to_string(),
            |h| h.description,
        );
    super::KwokError::PortTaken {
        name: name.to_string(),
        port,
        holder,
    }
}

/// What holds a local TCP port, as `/proc/net/tcp{,6}` and `/proc/*/fd` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortHolder {
    /// A listener stays until its process ends; a connection's local end (an outgoing
    /// connection may take any port of `net.ipv4.ip_local_port_range` not reserved) goes when
    /// the connection closes.
    pub listening: bool,
    /// E.g. `a listening socket of pid 42 (etcd)`.
    pub description: String,
}

/// Who holds `port`, for an error that names the culprit; `None` when no socket table shows it.
/// Blocking: reads `/proc`.
pub fn port_holder(port: u16) -> Option<PortHolder> {
    let mut found = None;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for socket in text.lines().skip(1).filter_map(parse_socket_row) {
            if socket.local_port != port {
                continue;
            }
            // A listener outranks a connection: it is the one that will not go away.
            let listening = socket.state == "0A";
            if found.as_ref().is_none_or(|(l, _)| listening && !l) {
                found = Some((listening, socket));
            }
        }
    }
    let (listening, socket) = found?;
    let what = if listening {
        "a listening socket".to_string()
    } else {
        format!(
            "the local end of a connection to {} (TCP state {})",
            socket.remote,
            tcp_state_name(&socket.state)
        )
    };
    let owner = socket_owner(socket.inode)
        .map(|(pid, comm)| format!(" of pid {pid} ({comm})"))
        .unwrap_or_default();
    Some(PortHolder {
        listening,
        description: format!("{what}{owner}"),
    })
}

struct SocketRow {
    local_port: u16,
    remote: String,
    state: String,
    inode: u64,
}

/// Rows are `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...`;
/// addresses are hex `ADDR:PORT`, the address in the kernel's byte order.
fn parse_socket_row(line: &str) -> Option<SocketRow> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let port_of = |address: &str| u16::from_str_radix(address.rsplit(':').next()?, 16).ok();
    let remote = fields.get(2)?;
    Some(SocketRow {
        local_port: port_of(fields.get(1)?)?,
        remote: format!(
            "{}:{}",
            hex_address(remote.split(':').next()?),
            port_of(remote)?
        ),
        state: fields.get(3)?.to_string(),
        inode: fields.get(9)?.parse().ok()?,
    })
}

/// `0100007F` → `127.0.0.1`; IPv6 (four 32-bit words, each in the kernel's byte order) → `[::1]`.
fn hex_address(hex: &str) -> String {
    let words: Vec<[u8; 4]> = (0..hex.len() / 8)
        .filter_map(|i| u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok())
        .map(|w| w.to_le_bytes())
        .collect();
    match words.as_slice() {
        [v4] => std::net::Ipv4Addr::from(*v4).to_string(),
        [a, b, c, d] => {
            let mut octets = [0u8; 16];
            for (i, word) in [a, b, c, d].into_iter().enumerate() {
                octets[i * 4..i * 4 + 4].copy_from_slice(word);
            }
            format!("[{}]", std::net::Ipv6Addr::from(octets))
        }
        _ => hex.to_string(),
    }
}

fn tcp_state_name(hex: &str) -> &'static str {
    match hex {
        "01" => "ESTABLISHED",
        "02" => "SYN_SENT",
        "06" => "TIME_WAIT",
        "08" => "CLOSE_WAIT",
        "0A" => "LISTEN",
        _ => "closing",
    }
}

/// The process with a descriptor on socket `inode` (visible when it is ours or we are root).
fn socket_owner(inode: u64) -> Option<(u32, String)> {
    if inode == 0 {
        return None;
    }
    let link = format!("socket:[{inode}]");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let fds = std::fs::read_dir(entry.path().join("fd")).ok()?;
            fds.flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == link.as_str())
                })
                .then(|| {
                    let comm =
                        std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                    (pid, comm.trim().to_string())
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_named_with_its_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let holder = port_holder(port).expect("the listener in /proc/net/tcp");
        assert!(holder.listening);
        let me = std::process::id();
        assert!(
            holder.description.starts_with("a listening socket of pid ")
                && holder.description.contains(&format!("pid {me} (")),
            "{holder:?}"
        );
    }

    #[test]
    fn a_connections_local_end_is_named_with_its_peer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(server).unwrap();
        let local = client.local_addr().unwrap().port();
        let holder = port_holder(local).expect("the connection in /proc/net/tcp");
        assert!(!holder.listening);
        assert!(
            holder.description.starts_with(&format!(
                "the local end of a connection to 127.0.0.1:{} (TCP state ESTABLISHED) of pid",
                server.port()
            )),
            "{holder:?}"
        );
    }

    #[test]
    fn ipv6_addresses_read_in_kernel_word_order() {
        assert_eq!(hex_address("0100007F"), "127.0.0.1");
        assert_eq!(hex_address("00000000000000000000000001000000"), "[::1]");
    }
}

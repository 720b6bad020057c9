//! TCP sockets as the kernel lists them in `/proc/net/tcp{,6}`: which ports are listened on
//! (preflight), and what holds a port a component needs (its error names the culprit).

use std::collections::BTreeSet;

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

impl PortHolder {
    /// The description of what [`port_holder`] found, for an error message.
    pub fn describe(holder: Option<PortHolder>) -> String {
        holder.map_or_else(
            || "not shown in /proc/net/tcp".to_string(),
            |h| h.description,
        )
    }
}

/// Local ports of listening TCP sockets; `None` when neither table can be read.
pub fn listening_ports() -> Option<BTreeSet<u16>> {
    let sockets = tcp_sockets()?;
    Some(
        sockets
            .iter()
            .filter(|s| s.is_listening())
            .map(|s| s.local_port)
            .collect(),
    )
}

/// Who holds `port`, for an error that names the culprit; `None` when no socket table shows it.
/// Blocking: reads `/proc`.
pub fn port_holder(port: u16) -> Option<PortHolder> {
    // A listener outranks a connection: it is the one that will not go away.
    let socket = tcp_sockets()?
        .into_iter()
        .filter(|s| s.local_port == port)
        .max_by_key(TcpSocket::is_listening)?;
    let listening = socket.is_listening();
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

struct TcpSocket {
    local_port: u16,
    remote: String,
    state: String,
    inode: u64,
}

impl TcpSocket {
    fn is_listening(&self) -> bool {
        self.state == "0A"
    }
}

/// Every TCP socket of `/proc/net/tcp` and `/proc/net/tcp6`; `None` when neither can be read.
fn tcp_sockets() -> Option<Vec<TcpSocket>> {
    let tables: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .into_iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .collect();
    (!tables.is_empty()).then(|| {
        tables
            .iter()
            .flat_map(|text| text.lines().skip(1).filter_map(parse_socket_row))
            .collect()
    })
}

/// Rows are `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...`;
/// addresses are hex `ADDR:PORT`, the address in the kernel's byte order.
fn parse_socket_row(line: &str) -> Option<TcpSocket> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let port_of = |address: &str| u16::from_str_radix(address.rsplit(':').next()?, 16).ok();
    let remote = fields.get(2)?;
    Some(TcpSocket {
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
    fn parses_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1085 1\n\
   1: 0100007F:1F46 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 55521 2\n\
   2: 0100007F:A2B4 0100007F:1F46 01 00000000:00000000 00:00000000 00000000     0        0 55522 2\n";
        let sockets: Vec<TcpSocket> = text.lines().skip(1).filter_map(parse_socket_row).collect();
        let listening: Vec<u16> = sockets
            .iter()
            .filter(|s| s.is_listening())
            .map(|s| s.local_port)
            .collect();
        assert_eq!(listening, vec![2024, 8006]);
        assert_eq!(
            (
                sockets[2].local_port,
                sockets[2].remote.as_str(),
                sockets[2].inode
            ),
            (41652, "127.0.0.1:8006", 55522)
        );
    }

    #[test]
    fn ipv6_addresses_read_in_kernel_word_order() {
        assert_eq!(hex_address("0100007F"), "127.0.0.1");
        assert_eq!(hex_address("00000000000000000000000001000000"), "[::1]");
    }
}

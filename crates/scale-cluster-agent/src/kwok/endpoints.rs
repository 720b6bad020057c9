//! The `kubernetes` Service's endpoints for apiservers run without their endpoint reconciler
//! (`lean`): the address they advertise, and the Endpoints and EndpointSlice written once at
//! bring-up.
//!
//! kube-apiserver's default reconciler (`--endpoint-reconciler-type=lease`) renews a lease and
//! reads both objects every 10 s, to publish where the apiservers of a cluster listen. A simulated
//! cluster has one apiserver on a fixed port, so the answer never changes, yet the reconciler cost
//! ~5% of an idle apiserver's CPU plus etcd writes (docs/benchmarks.md). Where the host has a
//! default route, `lean` runs `--endpoint-reconciler-type=none` with `--advertise-address` set to
//! [`host_address`], and the agent writes what the reconciler would have: Cluster Explorer still
//! lists the Service's endpoint, as on a real cluster.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset, Endpoints};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::{Api, Client};

use crate::kwok::population::FIELD_MANAGER;

/// The Service, and so both objects, in `default`.
const NAME: &str = "kubernetes";
const NAMESPACE: &str = "default";
/// The port name the apiserver's reconciler publishes.
const PORT_NAME: &str = "https";
/// Where a UDP socket is "connected" when the default route has no gateway: any off-link
/// address (TEST-NET-2) makes the kernel pick the default route's source address.
const OFF_LINK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// The address kube-apiserver would advertise when bound to loopback: its `ChooseHostInterface`
/// takes the default route's interface (`/proc/net/route`) and that interface's address, the
/// source address the kernel picks for that route. `None` without a default route: the
/// apiserver then picks among the interfaces itself, and Endpoints may not name a loopback
/// address, so such a host keeps the apiserver's own reconciler.
pub async fn host_address() -> Option<IpAddr> {
    let routes = tokio::fs::read_to_string("/proc/net/route").await.ok()?;
    let gateway = default_gateway(&routes)?;
    let target = if gateway.is_unspecified() {
        OFF_LINK
    } else {
        gateway
    };
    // `connect` on UDP sends nothing: it only asks the kernel for the route and source address.
    let socket = tokio::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
        .await
        .ok()?;
    socket.connect(SocketAddr::from((target, 9))).await.ok()?;
    let address = socket.local_addr().ok()?.ip();
    (!address.is_unspecified() && !address.is_loopback()).then_some(address)
}

/// The gateway of the IPv4 default route with the lowest metric (0.0.0.0 for a route with no
/// gateway). `/proc/net/route` writes addresses as the hex of their in-memory (network order)
/// bytes read as a little-endian word.
fn default_gateway(routes: &str) -> Option<Ipv4Addr> {
    routes
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (destination, gateway, flags, metric, mask) = (
                fields.get(1)?,
                fields.get(2)?,
                fields.get(3)?,
                fields.get(6)?,
                fields.get(7)?,
            );
            const RTF_UP: u32 = 0x1;
            let up = u32::from_str_radix(flags, 16).ok()? & RTF_UP != 0;
            (up && *destination == "00000000" && *mask == "00000000").then_some(())?;
            let gateway = u32::from_str_radix(gateway, 16).ok()?;
            Some((
                metric.parse::<u32>().ok()?,
                Ipv4Addr::from(gateway.to_le_bytes()),
            ))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, gateway)| gateway)
}

/// Writes `default/kubernetes` Endpoints and EndpointSlice naming `address:port`, as the
/// apiserver's reconciler writes them (the Endpoints marked not to be mirrored, the slice
/// labelled with its Service). Server-side apply: writing them again changes nothing.
pub async fn apply(client: &Client, address: IpAddr, port: u16) -> Result<(), kube::Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let meta = |labels: [(&str, &str); 1]| ObjectMeta {
        name: Some(NAME.into()),
        namespace: Some(NAMESPACE.into()),
        labels: Some(
            labels
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    };
    let port = i32::from(port);
    let endpoints = Endpoints {
        metadata: meta([("endpointslice.kubernetes.io/skip-mirror", "true")]),
        subsets: Some(vec![EndpointSubset {
            addresses: Some(vec![EndpointAddress {
                ip: address.to_string(),
                ..Default::default()
            }]),
            ports: Some(vec![EndpointPort {
                name: Some(PORT_NAME.into()),
                port,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }]),
    };
    Api::<Endpoints>::namespaced(client.clone(), NAMESPACE)
        .patch(NAME, &params, &Patch::Apply(&endpoints))
        .await?;
    let slice = EndpointSlice {
        metadata: meta([("kubernetes.io/service-name", NAME)]),
        address_type: if address.is_ipv4() { "IPv4" } else { "IPv6" }.into(),
        endpoints: Some(vec![Endpoint {
            addresses: vec![address.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ports: Some(vec![SlicePort {
            name: Some(PORT_NAME.into()),
            port: Some(port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    };
    Api::<EndpointSlice>::namespaced(client.clone(), NAMESPACE)
        .patch(NAME, &params, &Patch::Apply(&slice))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT";

    #[test]
    fn the_default_route_with_the_lowest_metric_gives_the_gateway() {
        let routes = format!(
            "{HEADER}\n\
             eth1\t00000000\t0101A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
             eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
             eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        );
        assert_eq!(default_gateway(&routes), Some(Ipv4Addr::new(192, 0, 2, 1)));
    }

    #[test]
    fn no_default_route_or_a_down_one_gives_none() {
        let only_link =
            format!("{HEADER}\neth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n");
        assert_eq!(default_gateway(&only_link), None);
        let down =
            format!("{HEADER}\neth0\t00000000\t010200C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n");
        assert_eq!(default_gateway(&down), None);
        assert_eq!(default_gateway(""), None);
    }
}

//! Where a client finds the replicas of a pgop process: a comma-separated list of addresses
//! (`http://10.0.0.1:50051,http://10.0.0.2:50051`), each name among them resolved to every
//! address it has. In a cluster, a headless Service (`clusterIP: None`) resolves to the pod
//! of every ready replica, so `http://pgop-scheduler:50051` reaches them all and the client
//! tries each until the leader answers (a standby refuses with UNAVAILABLE). A ClusterIP
//! Service would pick one replica per connection, standby or not.
use std::net::IpAddr;

/// One address split into its parts (`http://host:port`, `host:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Address<'a> {
    scheme: &'a str,
    host: &'a str,
    port: u16,
}

fn split(address: &str) -> Option<Address<'_>> {
    let (scheme, rest) = address.split_once("://").unwrap_or(("http", address));
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some(Address {
        scheme,
        host,
        port: port.parse().ok()?,
    })
}

fn join(scheme: &str, ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(ip) => format!("{scheme}://{ip}:{port}"),
        IpAddr::V6(ip) => format!("{scheme}://[{ip}]:{port}"),
    }
}

/// The addresses of `list` (comma-separated), names resolved to each of their addresses,
/// in a stable order; an address that does not parse or resolve is kept as written (the
/// connection to it fails and says why).
pub async fn resolve(list: &str) -> Vec<String> {
    let mut all = Vec::new();
    for address in list.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let Some(parts) = split(address) else {
            all.push(address.to_string());
            continue;
        };
        if let Ok(ip) = parts.host.parse::<IpAddr>() {
            all.push(join(parts.scheme, ip, parts.port));
            continue;
        }
        match tokio::net::lookup_host((parts.host, parts.port)).await {
            Ok(found) => {
                let mut ips: Vec<IpAddr> = found.map(|a| a.ip()).collect();
                ips.sort();
                ips.dedup();
                if ips.is_empty() {
                    all.push(address.to_string());
                }
                all.extend(ips.into_iter().map(|ip| join(parts.scheme, ip, parts.port)));
            }
            Err(_) => all.push(address.to_string()),
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_become_every_address_they_have_and_addresses_stay() {
        assert_eq!(
            resolve("http://127.0.0.2:50051, 127.0.0.1:50050,https://[::1]:8443/").await,
            vec![
                "http://127.0.0.2:50051",
                "http://127.0.0.1:50050",
                "https://[::1]:8443",
            ]
        );
        // `localhost` resolves to the loopback addresses the machine has.
        let local = resolve("http://localhost:50051").await;
        assert!(
            local.iter().any(|a| a == "http://127.0.0.1:50051"),
            "{local:?}"
        );
        assert!(local.iter().all(|a| !a.contains("localhost")), "{local:?}");
        // What does not resolve is kept, to fail with its own error.
        assert_eq!(
            resolve("http://no-such-host.invalid:1,nonsense").await,
            vec!["http://no-such-host.invalid:1", "nonsense"]
        );
        assert!(resolve(" , ").await.is_empty());
    }
}

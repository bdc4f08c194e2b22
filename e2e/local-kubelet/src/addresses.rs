//! Loopback addresses for pods: each pod gets its own 127.a.b.c so PostgreSQL and Patroni can
//! bind their usual ports without clashing.
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AddressError {
    #[error("no free pod address left in {0}")]
    Exhausted(PodNetwork),
    #[error(
        "invalid pod network {0:?}: expected A.B.C.D/LEN inside 127.0.0.0/8 with LEN from 8 to 30"
    )]
    Invalid(String),
}

/// A range of loopback addresses, e.g. `127.1.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodNetwork {
    base: u32,
    prefix: u8,
}

impl std::str::FromStr for PodNetwork {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || AddressError::Invalid(s.to_string());
        let (addr, prefix) = s.split_once('/').unwrap_or((s, "16"));
        let addr: Ipv4Addr = addr.parse().map_err(|_| invalid())?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        if !(8..=30).contains(&prefix) || addr.octets()[0] != 127 {
            return Err(invalid());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Self {
            base: u32::from(addr) & mask,
            prefix,
        })
    }
}

impl std::fmt::Display for PodNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

impl PodNetwork {
    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }
}

/// Hands out addresses of one network round-robin, so a released address is reused as late
/// as possible (sockets of a deleted pod may linger in TIME_WAIT).
#[derive(Debug)]
pub struct AddressPool {
    network: PodNetwork,
    inner: Mutex<PoolState>,
}

#[derive(Debug)]
struct PoolState {
    next: u32,
    in_use: HashSet<u32>,
}

impl AddressPool {
    pub fn new(network: PodNetwork) -> Self {
        Self {
            network,
            inner: Mutex::new(PoolState {
                next: 1,
                in_use: HashSet::new(),
            }),
        }
    }

    fn host_part(&self, addr: Ipv4Addr) -> Option<u32> {
        let offset = u32::from(addr).wrapping_sub(self.network.base);
        (offset < self.network.size()).then_some(offset)
    }

    fn addr(&self, host: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.network.base + host)
    }

    /// Takes `preferred` when it lies in the pool and is free (a pod keeps its address across
    /// kubelet restarts), otherwise the next free address.
    pub fn allocate(&self, preferred: Option<Ipv4Addr>) -> Result<Ipv4Addr, AddressError> {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(host) = preferred.and_then(|a| self.host_part(a)) {
            if self.usable(host) && state.in_use.insert(host) {
                return Ok(self.addr(host));
            }
        }
        for _ in 0..self.network.size() {
            let host = state.next;
            state.next = (state.next + 1) % self.network.size();
            if self.usable(host) && state.in_use.insert(host) {
                return Ok(self.addr(host));
            }
        }
        Err(AddressError::Exhausted(self.network))
    }

    /// The cluster DNS server's address: the network's last usable one, never given to a pod.
    pub fn dns_address(&self) -> Ipv4Addr {
        self.addr(self.dns_host())
    }

    fn dns_host(&self) -> u32 {
        (1..self.network.size() - 1)
            .rev()
            .find(|&h| usable(self.addr(h)))
            .unwrap_or(1)
    }

    pub fn release(&self, addr: Ipv4Addr) {
        if let Some(host) = self.host_part(addr) {
            self.inner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .in_use
                .remove(&host);
        }
    }

    fn usable(&self, host: u32) -> bool {
        host != 0
            && host != self.network.size() - 1
            && host != self.dns_host()
            && usable(self.addr(host))
    }
}

/// Skips .0 and .255 in the last octet: some tools treat them as network/broadcast addresses.
fn usable(addr: Ipv4Addr) -> bool {
    let last = addr.octets()[3];
    last != 0 && last != 255
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_unique_and_skip_network_and_broadcast() {
        let pool = AddressPool::new("127.3.0.0/16".parse().unwrap());
        let mut seen = HashSet::new();
        for _ in 0..600 {
            let a = pool.allocate(None).unwrap();
            assert_eq!(a.octets()[..2], [127, 3]);
            assert!(a.octets()[3] != 0 && a.octets()[3] != 255, "{a}");
            assert!(seen.insert(a), "{a} handed out twice");
        }
    }

    #[test]
    fn preferred_address_is_kept_when_free_and_ignored_when_taken_or_foreign() {
        let pool = AddressPool::new("127.3.0.0/16".parse().unwrap());
        let wanted = Ipv4Addr::new(127, 3, 7, 9);
        assert_eq!(pool.allocate(Some(wanted)).unwrap(), wanted);
        assert_ne!(pool.allocate(Some(wanted)).unwrap(), wanted);
        let foreign = Ipv4Addr::new(127, 4, 0, 1);
        assert_ne!(pool.allocate(Some(foreign)).unwrap(), foreign);
    }

    #[test]
    fn networks_parse_and_halves_do_not_overlap() {
        let low = AddressPool::new("127.5.0.0/17".parse().unwrap());
        let high = AddressPool::new("127.5.128.0/17".parse().unwrap());
        let a = low.allocate(None).unwrap();
        let b = high.allocate(None).unwrap();
        assert_eq!(
            (a, b),
            (Ipv4Addr::new(127, 5, 0, 1), Ipv4Addr::new(127, 5, 128, 1))
        );
        assert_ne!(
            high.allocate(Some(a)).unwrap(),
            a,
            "an address outside the network is not taken"
        );
        assert_eq!(
            "127.9.3.4".parse::<PodNetwork>().unwrap().to_string(),
            "127.9.0.0/16"
        );
        for bad in ["10.0.0.0/16", "127.0.0.0/31", "127.0.0.0/x", "nonsense"] {
            assert!(bad.parse::<PodNetwork>().is_err(), "{bad}");
        }
    }

    #[test]
    fn small_network_is_exhausted_cleanly() {
        let pool = AddressPool::new("127.6.0.0/30".parse().unwrap());
        assert_eq!(pool.allocate(None).unwrap(), Ipv4Addr::new(127, 6, 0, 1));
        assert!(matches!(
            pool.allocate(None),
            Err(AddressError::Exhausted(_))
        ));
    }

    #[test]
    fn the_dns_address_is_the_last_usable_and_never_a_pods() {
        let cases = [
            ("127.1.0.0/16", Ipv4Addr::new(127, 1, 255, 254)),
            ("127.20.0.0/17", Ipv4Addr::new(127, 20, 127, 254)),
            ("127.6.0.0/30", Ipv4Addr::new(127, 6, 0, 2)),
        ];
        for (network, dns) in cases {
            let pool = AddressPool::new(network.parse().unwrap());
            assert_eq!(pool.dns_address(), dns, "{network}");
            assert_ne!(pool.allocate(Some(dns)).unwrap(), dns, "{network}");
        }
    }

    #[test]
    fn released_address_is_not_reused_immediately() {
        let pool = AddressPool::new("127.3.0.0/16".parse().unwrap());
        let first = pool.allocate(None).unwrap();
        pool.release(first);
        assert_ne!(pool.allocate(None).unwrap(), first);
    }
}

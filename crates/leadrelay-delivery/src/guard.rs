//! The SSRF guard: which addresses an outbound call (destination, enhancement, test) may
//! reach. Names are resolved here, every address is classified, and the HTTP client connects
//! only to the addresses that passed, so a name cannot resolve one way for the check and
//! another for the connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// What kind of address an IP is, for the guard's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    Public,
    Loopback,
    Private,
    LinkLocal,
    CarrierGradeNat,
    Multicast,
    /// Cloud instance metadata and credential services (`169.254.169.254`, `fd00:ec2::254`,
    /// `100.100.100.200`, the container credential endpoints, Azure's WireServer).
    Metadata,
    /// Unspecified, broadcast, documentation, benchmarking and reserved ranges: never a
    /// legitimate destination.
    Reserved,
}

impl AddressClass {
    pub fn describe(self) -> &'static str {
        match self {
            AddressClass::Public => "public",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::LinkLocal => "link-local",
            AddressClass::CarrierGradeNat => "carrier-grade NAT",
            AddressClass::Multicast => "multicast",
            AddressClass::Metadata => "cloud metadata",
            AddressClass::Reserved => "reserved",
        }
    }

    /// What lets a self-hoster reach an address of this class.
    fn remedy(self) -> &'static str {
        match self {
            AddressClass::Loopback
            | AddressClass::Private
            | AddressClass::LinkLocal
            | AddressClass::CarrierGradeNat => "--allow-private-destinations or --allow-network CIDR allows it",
            AddressClass::Public | AddressClass::Multicast | AddressClass::Metadata | AddressClass::Reserved => {
                "only an --allow-network CIDR that contains it allows it"
            }
        }
    }
}

/// Addresses that hand out instance or workload credentials: the instance metadata service
/// of AWS, GCP, Azure and others (`169.254.169.254`), Alibaba's (`100.100.100.200`), the ECS
/// task and EKS Pod Identity credential endpoints (`169.254.170.2`, `169.254.170.23`), and
/// Azure's WireServer (`168.63.129.16`, a public address that every Azure VM reaches).
const METADATA_V4: [Ipv4Addr; 5] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(169, 254, 170, 23),
    Ipv4Addr::new(168, 63, 129, 16),
];
/// The IPv6 forms of AWS's instance metadata service and EKS Pod Identity endpoint.
const METADATA_V6: [Ipv6Addr; 2] =
    [Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254), Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0023)];

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, _] = ip.octets();
    if METADATA_V4.contains(&ip) {
        AddressClass::Metadata
    } else if a == 127 {
        AddressClass::Loopback
    } else if a == 10 || (a == 172 && (16..32).contains(&b)) || (a == 192 && b == 168) {
        AddressClass::Private
    } else if a == 169 && b == 254 {
        AddressClass::LinkLocal
    } else if a == 100 && (64..128).contains(&b) {
        AddressClass::CarrierGradeNat
    } else if (224..240).contains(&a) {
        AddressClass::Multicast
    } else if a == 0
        || a >= 240
        || (a == 192 && b == 0 && (c == 0 || c == 2))
        || (a == 198 && (b == 18 || b == 19))
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || (a == 192 && b == 88 && c == 99)
    {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

/// The IPv4 address an IPv6 address carries, for the forms that reach IPv4 hosts: mapped
/// (`::ffff:a.b.c.d`), compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let segments = ip.segments();
    let octets = ip.octets();
    let tail = Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]);
    if let Some(mapped) = ip.to_ipv4_mapped() {
        return Some(mapped);
    }
    if segments[..6] == [0, 0, 0, 0, 0, 0] && !(segments[6] == 0 && segments[7] <= 1) {
        return Some(tail);
    }
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail);
    }
    if segments[0] == 0x2002 {
        return Some(Ipv4Addr::new(octets[2], octets[3], octets[4], octets[5]));
    }
    None
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    if METADATA_V6.contains(&ip) {
        return AddressClass::Metadata;
    }
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let first = ip.segments()[0];
    if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_unspecified() || first == 0x2001 && ip.segments()[1] == 0x0db8 || first & 0xffc0 == 0xfec0 {
        AddressClass::Reserved
    } else if first & 0xfe00 == 0xfc00 {
        AddressClass::Private
    } else if first & 0xffc0 == 0xfe80 {
        AddressClass::LinkLocal
    } else if first & 0xff00 == 0xff00 {
        AddressClass::Multicast
    } else if first & 0xe000 == 0x2000 {
        AddressClass::Public
    } else {
        // Outside the global unicast block nothing is routable on the internet.
        AddressClass::Reserved
    }
}

/// Classifies an address; IPv6 forms that carry an IPv4 address are classified by it.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// Why the guard refused a call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{address} is a {} address; outbound calls to it are not allowed ({})", class.describe(), class.remedy())]
    Address { address: IpAddr, class: AddressClass },
    #[error("{host} resolves only to addresses that are not allowed ({addresses})")]
    Name { host: String, addresses: String },
    #[error("{host} does not resolve: {reason}")]
    Unresolved { host: String, reason: String },
    #[error("URL {0:?} is not an http or https URL with a host")]
    Url(String),
}

/// What outbound calls may reach. Public addresses always; private classes only when the
/// operator allows them, and any network on the allow-list.
#[derive(Clone, Debug, Default)]
pub struct EgressPolicy {
    /// Loopback, private, link-local, carrier-grade NAT and unique-local addresses.
    pub allow_private: bool,
    /// Networks allowed whatever their class (a self-hoster's CRM at `10.1.2.0/24`, say).
    pub allow_list: Vec<IpNet>,
}

impl EgressPolicy {
    /// The policy for tests and demos: everything but metadata and reserved addresses.
    pub fn allow_private() -> Self {
        Self { allow_private: true, allow_list: Vec::new() }
    }

    /// Whether a connection to `ip` is allowed, and if not, why.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.allow_list.iter().any(|network| network.contains(&ip)) {
            return Ok(());
        }
        let class = classify(ip);
        let allowed = match class {
            AddressClass::Public => true,
            AddressClass::Loopback
            | AddressClass::Private
            | AddressClass::LinkLocal
            | AddressClass::CarrierGradeNat => self.allow_private,
            // Metadata services hand out credentials: only an explicit allow-list entry
            // reaches them.
            AddressClass::Metadata | AddressClass::Multicast | AddressClass::Reserved => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(Refusal::Address { address: ip, class })
        }
    }

    /// Keeps the allowed addresses of a resolution; refuses when none is left.
    pub fn filter(&self, host: &str, addresses: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refusal> {
        let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
            addresses.into_iter().partition(|address| self.check(address.ip()).is_ok());
        if allowed.is_empty() {
            let addresses = refused
                .iter()
                .map(|address| format!("{} is {}", address.ip(), classify(address.ip()).describe()))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Refusal::Name { host: host.to_owned(), addresses });
        }
        Ok(allowed)
    }
}

/// The host of a URL as the guard sees it: an address literal is checked directly (the HTTP
/// client does not resolve those); a name goes through [`GuardedResolver`].
pub fn check_url(policy: &EgressPolicy, url: &url::Url) -> Result<(), Refusal> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refusal::Url(url.to_string()));
    }
    match url.host() {
        Some(url::Host::Ipv4(ip)) => policy.check(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => policy.check(IpAddr::V6(ip)),
        Some(url::Host::Domain(_)) => Ok(()),
        None => Err(Refusal::Url(url.to_string())),
    }
}

/// How names are turned into addresses; the system resolver in production, a table in tests
/// (so that a name resolving to loopback can be checked without touching DNS).
#[async_trait::async_trait]
pub trait Lookup: std::fmt::Debug + Send + Sync + 'static {
    async fn lookup(&self, host: &str) -> std::io::Result<Vec<IpAddr>>;
}

/// The system resolver (`getaddrinfo` through tokio).
#[derive(Debug)]
pub struct SystemLookup;

#[async_trait::async_trait]
impl Lookup for SystemLookup {
    async fn lookup(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
        let addresses = tokio::net::lookup_host((host, 0)).await?;
        Ok(addresses.map(|address| address.ip()).collect())
    }
}

/// Resolves names for the HTTP client and hands it only addresses the policy allows.
#[derive(Debug)]
pub struct GuardedResolver {
    policy: Arc<EgressPolicy>,
    lookup: Arc<dyn Lookup>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<EgressPolicy>, lookup: Arc<dyn Lookup>) -> Self {
        Self { policy, lookup }
    }

    /// The allowed addresses of `host`, or why there are none.
    pub async fn resolve_checked(&self, host: &str) -> Result<Vec<SocketAddr>, Refusal> {
        // `[::1]` arrives with its brackets.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            self.policy.check(ip)?;
            return Ok(vec![SocketAddr::new(ip, 0)]);
        }
        let addresses = self
            .lookup
            .lookup(bare)
            .await
            .map_err(|error| Refusal::Unresolved { host: host.to_owned(), reason: error.to_string() })?;
        if addresses.is_empty() {
            return Err(Refusal::Unresolved { host: host.to_owned(), reason: "no addresses".to_owned() });
        }
        self.policy.filter(host, addresses.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect())
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let lookup = self.lookup.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolver = GuardedResolver { policy, lookup };
            let addresses = resolver.resolve_checked(&host).await.map_err(Box::new)?;
            let iter: reqwest::dns::Addrs = Box::new(addresses.into_iter());
            Ok(iter)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(address: &str, expected: AddressClass) {
        let ip: IpAddr = address.parse().unwrap();
        assert_eq!(classify(ip), expected, "{address}");
    }

    #[test]
    fn every_address_class_is_recognised() {
        check("8.8.8.8", AddressClass::Public);
        check("2606:4700::1111", AddressClass::Public);
        check("127.0.0.1", AddressClass::Loopback);
        check("127.255.0.9", AddressClass::Loopback);
        check("::1", AddressClass::Loopback);
        check("10.0.0.1", AddressClass::Private);
        check("172.16.0.1", AddressClass::Private);
        check("172.31.255.255", AddressClass::Private);
        check("172.32.0.1", AddressClass::Public);
        check("192.168.1.1", AddressClass::Private);
        check("fd12:3456::1", AddressClass::Private);
        check("169.254.1.1", AddressClass::LinkLocal);
        check("fe80::1", AddressClass::LinkLocal);
        check("100.64.0.1", AddressClass::CarrierGradeNat);
        check("100.127.255.254", AddressClass::CarrierGradeNat);
        check("100.128.0.1", AddressClass::Public);
        check("224.0.0.1", AddressClass::Multicast);
        check("ff02::1", AddressClass::Multicast);
        check("169.254.169.254", AddressClass::Metadata);
        check("fd00:ec2::254", AddressClass::Metadata);
        check("100.100.100.200", AddressClass::Metadata);
        check("169.254.170.2", AddressClass::Metadata);
        check("169.254.170.23", AddressClass::Metadata);
        check("fd00:ec2::23", AddressClass::Metadata);
        check("168.63.129.16", AddressClass::Metadata);
        check("168.63.129.17", AddressClass::Public);
        check("0.0.0.0", AddressClass::Reserved);
        check("255.255.255.255", AddressClass::Reserved);
        check("::", AddressClass::Reserved);
        check("192.0.2.1", AddressClass::Reserved);
        check("198.18.0.1", AddressClass::Reserved);
    }

    #[test]
    fn ipv6_forms_of_ipv4_addresses_are_classified_by_the_ipv4_address() {
        check("::ffff:127.0.0.1", AddressClass::Loopback);
        check("::ffff:10.0.0.1", AddressClass::Private);
        check("::ffff:169.254.169.254", AddressClass::Metadata);
        check("::127.0.0.1", AddressClass::Loopback);
        check("64:ff9b::10.0.0.1", AddressClass::Private);
        check("64:ff9b::8.8.8.8", AddressClass::Public);
        check("2002:7f00:1::", AddressClass::Loopback);
        check("2002:a9fe:a9fe::", AddressClass::Metadata);
    }

    #[test]
    fn the_default_policy_refuses_every_non_public_class() {
        let policy = EgressPolicy::default();
        assert!(policy.check("93.184.216.34".parse().unwrap()).is_ok());
        for address in ["127.0.0.1", "10.1.1.1", "169.254.0.5", "100.64.1.1", "224.1.1.1", "169.254.169.254", "::1"] {
            let refusal = policy.check(address.parse().unwrap()).unwrap_err();
            assert!(refusal.to_string().contains("not allowed"), "{refusal}");
        }
    }

    #[test]
    fn allowing_private_addresses_still_refuses_metadata_unless_listed() {
        let mut policy = EgressPolicy::allow_private();
        assert!(policy.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(policy.check("192.168.0.10".parse().unwrap()).is_ok());
        let metadata = policy.check("169.254.169.254".parse().unwrap()).unwrap_err().to_string();
        assert!(metadata.contains("only an --allow-network CIDR"), "the refusal names what allows it: {metadata}");
        let private = EgressPolicy::default().check("10.0.0.1".parse().unwrap()).unwrap_err().to_string();
        assert!(private.contains("--allow-private-destinations"), "{private}");
        assert!(policy.check("0.0.0.0".parse().unwrap()).is_err());
        // The credential endpoints of containers and Azure's WireServer too.
        for address in ["169.254.170.2", "169.254.170.23", "fd00:ec2::23", "168.63.129.16", "::ffff:168.63.129.16"] {
            assert!(policy.check(address.parse().unwrap()).is_err(), "{address} is reachable");
        }
        policy.allow_list.push("169.254.169.254/32".parse().unwrap());
        assert!(policy.check("169.254.169.254".parse().unwrap()).is_ok());
    }

    #[test]
    fn the_allow_list_opens_only_its_networks() {
        let policy = EgressPolicy { allow_private: false, allow_list: vec!["10.1.2.0/24".parse().unwrap()] };
        assert!(policy.check("10.1.2.77".parse().unwrap()).is_ok());
        assert!(policy.check("10.1.3.1".parse().unwrap()).is_err());
    }

    #[derive(Debug)]
    struct Table(Vec<IpAddr>);

    #[async_trait::async_trait]
    impl Lookup for Table {
        async fn lookup(&self, _host: &str) -> std::io::Result<Vec<IpAddr>> {
            Ok(self.0.clone())
        }
    }

    #[tokio::test]
    async fn a_name_is_refused_when_it_resolves_only_to_refused_addresses() {
        let policy = Arc::new(EgressPolicy::default());
        let resolver = GuardedResolver::new(policy, Arc::new(Table(vec!["127.0.0.1".parse().unwrap()])));
        let refusal = resolver.resolve_checked("crm.example").await.unwrap_err();
        assert!(matches!(refusal, Refusal::Name { .. }), "{refusal}");
        assert!(refusal.to_string().contains("127.0.0.1 is loopback"), "{refusal}");
    }

    #[tokio::test]
    async fn a_name_keeps_only_its_allowed_addresses() {
        let policy = Arc::new(EgressPolicy::default());
        let table = Table(vec!["10.0.0.1".parse().unwrap(), "93.184.216.34".parse().unwrap()]);
        let resolver = GuardedResolver::new(policy, Arc::new(table));
        let addresses = resolver.resolve_checked("crm.example").await.unwrap();
        assert_eq!(addresses, vec!["93.184.216.34:0".parse().unwrap()]);
    }
}

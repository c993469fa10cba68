//! The SSRF guard: which addresses a webhook may reach.
//!
//! Endpoint URLs come from customers, so without a guard a URL such as
//! `http://169.254.169.254/` or a hostname that resolves to `10.0.0.5` would
//! make the dispatcher probe its own network. This module owns:
//!
//! - [`classify`]: whether one IP address is a public unicast address, or why
//!   it is refused (loopback, private, metadata service, ...), including IPv6
//!   forms that carry an IPv4 address inside them;
//! - [`AddressPolicy`]: that classification plus the deployment's allowlist
//!   of networks (`http.allowed_networks`), which can open non-public
//!   ranges but never link-local or metadata addresses;
//! - [`GuardedResolver`]: the DNS resolver that the HTTP connector uses. It
//!   checks every address a name resolves to and refuses the name if any is
//!   refused, and it hands the connector exactly the addresses it checked, so
//!   there is no window between checking and connecting (no DNS rebinding).
//!
//! hyper-util's `HttpConnector` does not call the resolver for IP-literal
//! hosts; [`literal_host`] lets the transport check those itself.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;

use hyper_util::client::legacy::connect::dns::Name;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Why an address may not be the target of a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `0.0.0.0`, `::`: connecting to it reaches the local host.
    Unspecified,
    /// `0.0.0.0/8` other than `0.0.0.0`.
    ThisNetwork,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918: `10/8`, `172.16/12`, `192.168/16`.
    Private,
    /// RFC 6598 carrier-grade NAT space `100.64/10`.
    SharedAddressSpace,
    /// `169.254/16`, `fe80::/10`.
    LinkLocal,
    /// Instance metadata services (`169.254.169.254`, `168.63.129.16`, ...).
    CloudMetadata,
    /// `fc00::/7`.
    UniqueLocal,
    /// `fec0::/10`, deprecated but still routed inside some networks.
    SiteLocal,
    /// `255.255.255.255`.
    Broadcast,
    /// `224/4`, `ff00::/8`.
    Multicast,
    /// `192.0.2/24`, `198.51.100/24`, `203.0.113/24`, `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// `198.18/15`, `2001:2::/48`.
    Benchmarking,
    /// Reserved or special-purpose ranges that are not public unicast:
    /// `240/4`, `192.0.0/24`, `192.88.99/24`, IPv6 outside `2000::/3`, ...
    Reserved,
    /// `2001::/32`: the IPv4 endpoints inside are obfuscated and may be
    /// anything, so the whole prefix is refused.
    Teredo,
    /// An IPv6 form that carries a refused IPv4 address.
    Embedded {
        form: Ipv6Embedding,
        inner: Ipv4Addr,
    },
}

/// The IPv6 forms that carry an IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ipv6Embedding {
    /// `::ffff:a.b.c.d`.
    Mapped,
    /// `::a.b.c.d` (deprecated).
    Compatible,
    /// `::ffff:0:a.b.c.d` (SIIT, RFC 2765).
    Translated,
    /// `64:ff9b::a.b.c.d` (RFC 6052).
    Nat64,
    /// `2002:aabb:ccdd::/48` (RFC 3056).
    SixToFour,
}

impl Refusal {
    /// True when the refusal is about a cloud metadata service, directly or
    /// inside an IPv6 form.
    pub fn is_cloud_metadata(&self) -> bool {
        match self {
            Refusal::CloudMetadata => true,
            Refusal::Embedded { inner, .. } => {
                classify(IpAddr::V4(*inner)) == Err(Refusal::CloudMetadata)
            }
            _ => false,
        }
    }

    /// True for what no allowlist can open: metadata services and the whole
    /// link-local ranges, directly or inside an IPv6 form. Clouds keep adding
    /// credential services on link-local addresses (EKS Pod Identity on
    /// 169.254.170.23, Tencent's on 169.254.0.23) and a webhook has no
    /// business there, so the range is closed rather than a list chased.
    pub fn is_always_refused(&self) -> bool {
        match self {
            Refusal::CloudMetadata | Refusal::LinkLocal => true,
            Refusal::Embedded { inner, .. } => matches!(
                classify(IpAddr::V4(*inner)),
                Err(Refusal::CloudMetadata | Refusal::LinkLocal)
            ),
            _ => false,
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Refusal::Unspecified => "the unspecified address",
            Refusal::ThisNetwork => "a \"this network\" address (0.0.0.0/8)",
            Refusal::Loopback => "a loopback address",
            Refusal::Private => "a private network address",
            Refusal::SharedAddressSpace => "a carrier-grade NAT address (100.64.0.0/10)",
            Refusal::LinkLocal => "a link-local address",
            Refusal::CloudMetadata => "a cloud metadata service address",
            Refusal::UniqueLocal => "a unique-local address (fc00::/7)",
            Refusal::SiteLocal => "a site-local address (fec0::/10)",
            Refusal::Broadcast => "the broadcast address",
            Refusal::Multicast => "a multicast address",
            Refusal::Documentation => "a documentation address",
            Refusal::Benchmarking => "a benchmarking address",
            Refusal::Reserved => "a reserved address",
            Refusal::Teredo => "a Teredo address (2001::/32)",
            Refusal::Embedded { .. } => "an IPv6 address embedding a refused IPv4 address",
        }
    }
}

impl fmt::Display for Ipv6Embedding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ipv6Embedding::Mapped => "an IPv4-mapped",
            Ipv6Embedding::Compatible => "an IPv4-compatible",
            Ipv6Embedding::Translated => "an IPv4-translated",
            Ipv6Embedding::Nat64 => "a NAT64",
            Ipv6Embedding::SixToFour => "a 6to4",
        })
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Embedded { form, inner } => {
                write!(f, "{form} IPv6 address embedding {inner}")?;
                if let Err(why) = classify(IpAddr::V4(*inner)) {
                    write!(f, ", {}", why.describe())?;
                }
                Ok(())
            }
            other => f.write_str(other.describe()),
        }
    }
}

/// Whether `ip` is a public unicast address a webhook may be sent to.
pub fn classify(ip: IpAddr) -> Result<(), Refusal> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// True when the first `len` bits of `addr` equal those of `net`.
const fn in_v4(addr: u32, net: [u8; 4], len: u32) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    addr & mask == u32::from_be_bytes(net) & mask
}

const fn in_v6(addr: u128, net: u128, len: u32) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    addr & mask == net & mask
}

/// Metadata endpoints first: they lie inside wider ranges (link-local,
/// CGNAT, IETF assignments) or in public space, and deserve the clearer reason.
const METADATA_V4: [[u8; 4]; 7] = [
    [169, 254, 169, 254], // AWS, GCP, Azure, OpenStack, DigitalOcean, ...
    [169, 254, 170, 2],   // AWS ECS task metadata
    [169, 254, 170, 23],  // AWS EKS Pod Identity agent
    [169, 254, 0, 23],    // Tencent Cloud
    [168, 63, 129, 16],   // Azure WireServer (a public address)
    [100, 100, 100, 200], // Alibaba Cloud
    [192, 0, 0, 192],     // Oracle Cloud (OCI)
];

/// IPv4 ranges that are not public unicast, from the IANA special-purpose
/// registry. Order matters only where ranges nest (broadcast inside 240/4).
const RANGES_V4: &[([u8; 4], u32, Refusal)] = &[
    ([255, 255, 255, 255], 32, Refusal::Broadcast),
    ([0, 0, 0, 0], 8, Refusal::ThisNetwork),
    ([10, 0, 0, 0], 8, Refusal::Private),
    ([100, 64, 0, 0], 10, Refusal::SharedAddressSpace),
    ([127, 0, 0, 0], 8, Refusal::Loopback),
    ([169, 254, 0, 0], 16, Refusal::LinkLocal),
    ([172, 16, 0, 0], 12, Refusal::Private),
    ([192, 0, 0, 0], 24, Refusal::Reserved), // IETF protocol assignments (incl. 192.0.0.192 OCI metadata)
    ([192, 0, 2, 0], 24, Refusal::Documentation),
    ([192, 88, 99, 0], 24, Refusal::Reserved), // deprecated 6to4 relay anycast
    ([192, 168, 0, 0], 16, Refusal::Private),
    ([198, 18, 0, 0], 15, Refusal::Benchmarking),
    ([198, 51, 100, 0], 24, Refusal::Documentation),
    ([203, 0, 113, 0], 24, Refusal::Documentation),
    ([224, 0, 0, 0], 4, Refusal::Multicast),
    ([240, 0, 0, 0], 4, Refusal::Reserved),
];

fn classify_v4(ip: Ipv4Addr) -> Result<(), Refusal> {
    if ip.is_unspecified() {
        return Err(Refusal::Unspecified);
    }
    if METADATA_V4.contains(&ip.octets()) {
        return Err(Refusal::CloudMetadata);
    }
    let bits = u32::from(ip);
    match RANGES_V4
        .iter()
        .find(|(net, len, _)| in_v4(bits, *net, *len))
    {
        Some((_, _, why)) => Err(*why),
        None => Ok(()),
    }
}

const METADATA_V6: [u128; 3] = [
    0xfd00_0ec2_0000_0000_0000_0000_0000_0254, // AWS IMDS over IPv6
    0xfd00_0ec2_0000_0000_0000_0000_0000_0023, // AWS EKS Pod Identity over IPv6
    0xfd20_00ce_0000_0000_0000_0000_0000_0254, // GCP metadata over IPv6
];

/// IPv6 ranges refused outright (the IPv4-carrying forms are handled first).
const RANGES_V6: &[(u128, u32, Refusal)] = &[
    (
        0x0064_ff9b_0001_0000_0000_0000_0000_0000,
        48,
        Refusal::Private,
    ), // local-use NAT64 (RFC 8215)
    (
        0x0100_0000_0000_0000_0000_0000_0000_0000,
        64,
        Refusal::Reserved,
    ), // discard-only
    (
        0x2001_0000_0000_0000_0000_0000_0000_0000,
        32,
        Refusal::Teredo,
    ),
    (
        0x2001_0002_0000_0000_0000_0000_0000_0000,
        48,
        Refusal::Benchmarking,
    ),
    (
        0x2001_0010_0000_0000_0000_0000_0000_0000,
        28,
        Refusal::Reserved,
    ), // ORCHID (deprecated)
    (
        0x2001_0db8_0000_0000_0000_0000_0000_0000,
        32,
        Refusal::Documentation,
    ),
    (
        0x3fff_0000_0000_0000_0000_0000_0000_0000,
        20,
        Refusal::Documentation,
    ),
    (
        0x5f00_0000_0000_0000_0000_0000_0000_0000,
        16,
        Refusal::Reserved,
    ), // SRv6 SIDs
    (
        0xfc00_0000_0000_0000_0000_0000_0000_0000,
        7,
        Refusal::UniqueLocal,
    ),
    (
        0xfe80_0000_0000_0000_0000_0000_0000_0000,
        10,
        Refusal::LinkLocal,
    ),
    (
        0xfec0_0000_0000_0000_0000_0000_0000_0000,
        10,
        Refusal::SiteLocal,
    ),
    (
        0xff00_0000_0000_0000_0000_0000_0000_0000,
        8,
        Refusal::Multicast,
    ),
];

fn classify_v6(ip: Ipv6Addr) -> Result<(), Refusal> {
    if ip.is_unspecified() {
        return Err(Refusal::Unspecified);
    }
    if ip.is_loopback() {
        return Err(Refusal::Loopback);
    }
    let bits = u128::from(ip);
    if METADATA_V6.contains(&bits) {
        return Err(Refusal::CloudMetadata);
    }
    if let Some((form, inner)) = embedded_v4(bits) {
        // The form itself is fine; what it reaches is what matters.
        return classify_v4(inner).map_err(|_| Refusal::Embedded { form, inner });
    }
    if let Some((_, _, why)) = RANGES_V6
        .iter()
        .find(|(net, len, _)| in_v6(bits, *net, *len))
    {
        return Err(*why);
    }
    // IANA allocates global unicast only from 2000::/3; the rest is reserved.
    if !in_v6(bits, 0x2000 << 112, 3) {
        return Err(Refusal::Reserved);
    }
    Ok(())
}

/// The IPv4 address inside the IPv6 forms that carry one.
fn embedded_v4(bits: u128) -> Option<(Ipv6Embedding, Ipv4Addr)> {
    let low32 = Ipv4Addr::from(bits as u32);
    if in_v6(bits, 0x0000_0000_0000_0000_0000_ffff_0000_0000, 96) {
        Some((Ipv6Embedding::Mapped, low32))
    } else if in_v6(bits, 0, 96) {
        // `::` and `::1` were handled before.
        Some((Ipv6Embedding::Compatible, low32))
    } else if in_v6(bits, 0x0000_0000_0000_0000_ffff_0000_0000_0000, 96) {
        Some((Ipv6Embedding::Translated, low32))
    } else if in_v6(bits, 0x0064_ff9b_0000_0000_0000_0000_0000_0000, 96) {
        Some((Ipv6Embedding::Nat64, low32))
    } else if in_v6(bits, 0x2002 << 112, 16) {
        Some((
            Ipv6Embedding::SixToFour,
            Ipv4Addr::from((bits >> 80) as u32),
        ))
    } else {
        None
    }
}

/// The deployment's address policy: [`classify`], widened by an allowlist
/// of networks (for in-cluster receivers and tests). Metadata and
/// link-local addresses stay refused whatever the allowlist says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AddressPolicy {
    allowed: Arc<[IpNet]>,
}

impl AddressPolicy {
    /// Only public unicast addresses.
    pub fn public_only() -> AddressPolicy {
        AddressPolicy::default()
    }

    /// Public addresses and those inside `networks`.
    pub fn allowing(networks: impl IntoIterator<Item = IpNet>) -> AddressPolicy {
        AddressPolicy {
            allowed: networks.into_iter().collect(),
        }
    }

    /// Every address that is not always refused: what the deprecated
    /// `http.allow_private_networks: true` means.
    pub fn allowing_all() -> AddressPolicy {
        AddressPolicy::allowing([
            IpNet::V4(Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("valid prefix")),
            IpNet::V6(Ipv6Net::new(Ipv6Addr::UNSPECIFIED, 0).expect("valid prefix")),
        ])
    }

    /// The networks this policy opens beyond public addresses.
    pub fn allowed_networks(&self) -> &[IpNet] {
        &self.allowed
    }

    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        let why = match classify(ip) {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        if why.is_always_refused() {
            return Err(why);
        }
        // An IPv6 form carrying an IPv4 address reaches that address, so it
        // is what the allowlist must contain.
        let target = match why {
            Refusal::Embedded { inner, .. } => IpAddr::V4(inner),
            _ => ip,
        };
        if self.allowed.iter().any(|net| net.contains(&target)) {
            Ok(())
        } else {
            Err(why)
        }
    }
}

/// A host name (or literal) resolved to an address the policy refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{host} resolves to {addr}, {reason}")]
pub struct RefusedAddress {
    pub host: String,
    pub addr: IpAddr,
    pub reason: Refusal,
}

/// The IP address of a URI host when it is a literal (`1.2.3.4`, `[::1]`),
/// parsed the way hyper-util's connector does, which then skips DNS.
pub fn literal_host(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().ok()
}

/// Check a URI host that is an IP literal; hostnames pass (the resolver
/// checks them when they are resolved).
pub fn check_literal_host(host: &str, policy: &AddressPolicy) -> Result<(), RefusedAddress> {
    match literal_host(host) {
        Some(addr) => policy.check(addr).map_err(|reason| RefusedAddress {
            host: host.to_owned(),
            addr,
            reason,
        }),
        None => Ok(()),
    }
}

/// Why resolving a name failed.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The lookup itself failed (the `source` says why; it is not repeated
    /// here so that printing the error chain reads once).
    #[error("resolving {host} failed")]
    Lookup {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error(transparent)]
    Refused(#[from] RefusedAddress),
}

/// A DNS resolver for hyper-util's `HttpConnector` that refuses names with
/// any refused address.
///
/// It resolves with the system resolver on tokio's blocking pool (as
/// hyper-util's `GaiResolver` does). Refusing the whole name rather than
/// filtering its addresses means a name that mixes public and private
/// addresses fails loudly instead of working by chance.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: AddressPolicy,
}

impl GuardedResolver {
    pub fn new(policy: AddressPolicy) -> GuardedResolver {
        GuardedResolver { policy }
    }

    /// Resolve `host` and check every address.
    pub async fn resolve(&self, host: &str) -> Result<Vec<SocketAddr>, ResolveError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|source| ResolveError::Lookup {
                host: host.to_owned(),
                source,
            })?
            .collect();
        if addrs.is_empty() {
            return Err(ResolveError::NoAddress {
                host: host.to_owned(),
            });
        }
        for addr in &addrs {
            self.policy
                .check(addr.ip())
                .map_err(|reason| RefusedAddress {
                    host: host.to_owned(),
                    addr: addr.ip(),
                    reason,
                })?;
        }
        Ok(addrs)
    }
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = ResolveError;
    type Future =
        Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, ResolveError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ResolveError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolver = self.clone();
        Box::pin(async move { resolver.resolve(name.as_str()).await.map(Vec::into_iter) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().unwrap())
    }

    fn check(s: &str) -> Result<(), Refusal> {
        classify(s.parse().unwrap())
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.0.3.0",
            "192.88.98.255",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "198.51.99.255",
            "203.0.112.255",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001:82b::200e",
            "2001:4860:4860::8888",
            "2001:db9::1",
            "3ffe::1",
            "2003::1",
            "::ffff:1.1.1.1",
            "::8.8.8.8",
            "::ffff:0:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:0808:0808::1",
        ] {
            assert_eq!(check(ip), Ok(()), "{ip}");
        }
    }

    #[test]
    fn special_ipv4_ranges_are_refused() {
        use Refusal::*;
        let cases = [
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", ThisNetwork),
            ("0.255.255.255", ThisNetwork),
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("10.0.0.0", Private),
            ("10.255.255.255", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.0.1", Private),
            ("192.168.255.255", Private),
            ("100.64.0.0", SharedAddressSpace),
            ("100.127.255.255", SharedAddressSpace),
            ("169.254.0.1", LinkLocal),
            ("169.254.255.255", LinkLocal),
            ("169.254.169.254", CloudMetadata),
            ("169.254.170.2", CloudMetadata),
            ("168.63.129.16", CloudMetadata),
            ("100.100.100.200", CloudMetadata),
            ("192.0.0.192", CloudMetadata),
            ("169.254.170.23", CloudMetadata),
            ("169.254.0.23", CloudMetadata),
            ("192.0.0.8", Reserved),
            ("192.88.99.1", Reserved),
            ("192.0.2.1", Documentation),
            ("198.51.100.7", Documentation),
            ("203.0.113.255", Documentation),
            ("198.18.0.1", Benchmarking),
            ("198.19.255.255", Benchmarking),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("240.0.0.1", Reserved),
            ("255.255.255.254", Reserved),
            ("255.255.255.255", Broadcast),
        ];
        for (ip, why) in cases {
            assert_eq!(check(ip), Err(why), "{ip}");
        }
    }

    #[test]
    fn special_ipv6_ranges_are_refused() {
        use Refusal::*;
        let cases = [
            ("::", Unspecified),
            ("::1", Loopback),
            ("fe80::1", LinkLocal),
            ("febf:ffff::1", LinkLocal),
            ("fec0::1", SiteLocal),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("fd00:ec2::254", CloudMetadata),
            ("ff02::1", Multicast),
            ("ff05::1:3", Multicast),
            ("2001:db8::1", Documentation),
            ("3fff:fff::1", Documentation),
            ("2001:2::1", Benchmarking),
            ("2001::1", Teredo),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Teredo),
            ("2001:10::1", Reserved),
            ("100::1", Reserved),
            ("5f00::1", Reserved),
            ("64:ff9b:1::1", Private),
            ("4000::1", Reserved),
            ("8000::1", Reserved),
            ("1::1", Reserved),
            ("::1:0:0:1", Reserved),
        ];
        for (ip, why) in cases {
            assert_eq!(check(ip), Err(why), "{ip}");
        }
    }

    #[test]
    fn ipv6_forms_embedding_a_refused_ipv4_are_refused() {
        use Ipv6Embedding::*;
        let cases = [
            ("::ffff:127.0.0.1", Mapped, "127.0.0.1"),
            ("::ffff:10.1.2.3", Mapped, "10.1.2.3"),
            ("::ffff:169.254.169.254", Mapped, "169.254.169.254"),
            ("::ffff:0.0.0.0", Mapped, "0.0.0.0"),
            ("::127.0.0.1", Compatible, "127.0.0.1"),
            ("::192.168.1.1", Compatible, "192.168.1.1"),
            ("::ffff:0:172.16.0.1", Translated, "172.16.0.1"),
            ("64:ff9b::127.0.0.1", Nat64, "127.0.0.1"),
            ("64:ff9b::a9fe:a9fe", Nat64, "169.254.169.254"),
            ("2002:7f00:0001::1", SixToFour, "127.0.0.1"),
            ("2002:c0a8:0101::", SixToFour, "192.168.1.1"),
            ("2002:a9fe:a9fe:1::1", SixToFour, "169.254.169.254"),
        ];
        for (ip, form, inner) in cases {
            let inner: Ipv4Addr = inner.parse().unwrap();
            assert_eq!(check(ip), Err(Refusal::Embedded { form, inner }), "{ip}");
        }
    }

    #[test]
    fn reasons_read_well() {
        assert_eq!(
            check("10.0.0.1").unwrap_err().to_string(),
            "a private network address"
        );
        assert_eq!(
            check("::ffff:127.0.0.1").unwrap_err().to_string(),
            "an IPv4-mapped IPv6 address embedding 127.0.0.1, a loopback address"
        );
        let err = RefusedAddress {
            host: "hooks.example".into(),
            addr: v4("169.254.169.254"),
            reason: Refusal::CloudMetadata,
        };
        assert_eq!(
            err.to_string(),
            "hooks.example resolves to 169.254.169.254, a cloud metadata service address"
        );
    }

    #[test]
    fn allowing_private_networks_still_refuses_metadata() {
        let open = AddressPolicy::allowing_all();
        let closed = AddressPolicy::public_only();
        for ip in ["127.0.0.1", "10.0.0.1", "::1", "fd00::1", "100.64.0.1"] {
            assert_eq!(open.check(ip.parse().unwrap()), Ok(()), "{ip}");
            assert!(closed.check(ip.parse().unwrap()).is_err(), "{ip}");
        }
        assert_eq!(closed.check(v4("1.1.1.1")), Ok(()));
    }

    /// Finding 5 of the security review: with private networks allowed,
    /// these metadata and credential services were reachable. Every one, and
    /// the IPv6 forms that carry the IPv4 ones, stays refused under the
    /// widest policy there is.
    #[test]
    fn every_metadata_and_link_local_address_is_refused_whatever_is_allowed() {
        let everything = AddressPolicy::allowing_all();
        let listed = AddressPolicy::allowing(
            [
                "169.254.0.0/16",
                "192.0.0.0/24",
                "fd00::/8",
                "fd20::/16",
                "fe80::/10",
                "168.63.0.0/16",
                "100.64.0.0/10",
            ]
            .map(|n| n.parse::<IpNet>().unwrap()),
        );
        let addresses = [
            "169.254.169.254", // AWS, GCP, Azure, OpenStack
            "169.254.170.2",   // ECS task metadata
            "169.254.170.23",  // EKS Pod Identity
            "169.254.0.23",    // Tencent Cloud
            "168.63.129.16",   // Azure WireServer
            "100.100.100.200", // Alibaba Cloud
            "192.0.0.192",     // Oracle Cloud
            "fd00:ec2::254",   // AWS IMDS over IPv6
            "fd00:ec2::23",    // EKS Pod Identity over IPv6
            "fd20:ce::254",    // GCP over IPv6
            "169.254.1.1",     // any link-local
            "fe80::1",
            "::ffff:169.254.169.254",
            "::ffff:169.254.170.23",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:aa17::1",
            "::ffff:192.0.0.192",
        ];
        for ip in addresses {
            let addr: IpAddr = ip.parse().unwrap();
            for policy in [&everything, &listed] {
                let why = policy.check(addr).expect_err(ip);
                assert!(why.is_always_refused(), "{ip}: {why}");
            }
        }
    }

    #[test]
    fn an_allowlist_opens_exactly_its_networks() {
        let policy = AddressPolicy::allowing(
            ["10.20.0.0/16", "fd12::/16"].map(|n| n.parse::<IpNet>().unwrap()),
        );
        assert_eq!(policy.check(v4("10.20.3.4")), Ok(()));
        assert_eq!(policy.check("::ffff:10.20.3.4".parse().unwrap()), Ok(()));
        assert_eq!(policy.check("fd12::5".parse().unwrap()), Ok(()));
        assert_eq!(policy.check(v4("10.21.0.1")), Err(Refusal::Private));
        assert_eq!(policy.check(v4("127.0.0.1")), Err(Refusal::Loopback));
        assert_eq!(policy.check(v4("8.8.8.8")), Ok(()));
    }

    #[test]
    fn literal_hosts_are_recognised_like_the_connector_does() {
        assert_eq!(literal_host("127.0.0.1"), Some(v4("127.0.0.1")));
        assert_eq!(literal_host("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(literal_host("example.com"), None);
        // Not literals to Rust's parser: these go through DNS, where the
        // resolver checks whatever getaddrinfo makes of them.
        assert_eq!(literal_host("127.1"), None);
        assert_eq!(literal_host("2130706433"), None);

        let closed = AddressPolicy::public_only();
        let err = check_literal_host("[::1]", &closed).unwrap_err();
        assert_eq!(err.reason, Refusal::Loopback);
        assert!(check_literal_host("example.com", &closed).is_ok());
        assert!(check_literal_host("8.8.8.8", &closed).is_ok());
    }

    #[tokio::test]
    async fn resolver_refuses_names_with_refused_addresses() {
        let closed = GuardedResolver::new(AddressPolicy::public_only());
        let err = closed.resolve("localhost").await.unwrap_err();
        assert!(
            matches!(&err, ResolveError::Refused(r) if r.reason == Refusal::Loopback),
            "{err}"
        );
        // getaddrinfo accepts the legacy numeric forms; the check still applies.
        let err = closed.resolve("2130706433").await.unwrap_err();
        assert!(matches!(err, ResolveError::Refused(_)), "{err}");
        // Literals resolve without the network.
        let ok = closed.resolve("8.8.8.8").await.unwrap();
        assert_eq!(ok, vec![SocketAddr::new(v4("8.8.8.8"), 0)]);

        let open = GuardedResolver::new(AddressPolicy::allowing_all());
        assert!(!open.resolve("localhost").await.unwrap().is_empty());
        assert!(open.resolve("169.254.169.254").await.is_err());
    }

    #[tokio::test]
    async fn resolver_is_a_tower_service() {
        use tower_service::Service;
        let mut resolver = GuardedResolver::new(AddressPolicy::public_only());
        let name: Name = "127.0.0.1".parse().unwrap();
        assert!(resolver.call(name).await.is_err());
        let name: Name = "1.1.1.1".parse().unwrap();
        assert_eq!(resolver.call(name).await.unwrap().count(), 1);
    }
}

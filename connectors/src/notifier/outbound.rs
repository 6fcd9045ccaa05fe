//! Outbound HTTP of the notifier (webhooks, the email and SMS APIs), made
//! safe to point at URLs users choose:
//!
//! - destinations on loopback, private (RFC 1918, unique-local), link-local
//!   (which holds the cloud metadata address 169.254.169.254), CGNAT,
//!   unspecified, multicast and documentation ranges are refused unless
//!   `notifications.allow_private_destinations = true`;
//! - a host name is resolved once, by [`GuardedResolver`], and the
//!   connection goes to the address that was checked (no second lookup a
//!   DNS rebinding could answer differently); literal addresses are checked
//!   before the request;
//! - redirects are never followed (a 3xx is the answer);
//! - no proxy is taken from the environment (`HTTP_PROXY` and the like):
//!   a proxy would resolve and reach the destination itself, past the check;
//! - connecting and the whole request time out (`notifications.retry.timeout_ms`);
//! - https is verified with rustls against the system roots plus
//!   `notifications.tls.ca_file`.
//!
//! A refused destination is a permanent failure (retrying cannot help) and
//! counts in `inkstream_notification_destinations_refused_total{channel}`.

use super::error::DeliveryError;
use crate::tls::{TlsError, TlsFiles};
use prometheus::IntCounterVec;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use schemas::{Classify, Fault};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The setting that lets the notifier reach private addresses.
pub const ALLOW_SETTING: &str = "notifications.allow_private_destinations";

/// Why an address may not be the destination of a delivery, or `None`.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_link_local() {
        // 169.254.169.254 is the metadata service of AWS, GCP, Azure, …
        Some("a link-local (cloud metadata) address")
    } else if ip.is_private() {
        Some("a private address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a carrier-grade NAT address")
    } else if ip.is_unspecified() || a == 0 {
        Some("an unspecified address")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("a multicast, broadcast or reserved address")
    } else if (a, b, c) == (192, 0, 0)
        || (a, b, c) == (192, 0, 2)
        || (a, b, c) == (198, 51, 100)
        || (a, b, c) == (203, 0, 113)
        || (a == 198 && (b == 18 || b == 19))
    {
        Some("a special-purpose or documentation address")
    } else {
        None
    }
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_unspecified() {
        Some("an unspecified address")
    } else if first & 0xffc0 == 0xfe80 {
        Some("a link-local address")
    } else if first & 0xfe00 == 0xfc00 {
        Some("a private (unique local) address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if first == 0x2001 && ip.segments()[1] == 0x0db8 {
        Some("a documentation address")
    } else if first == 0x0064 && ip.segments()[1] == 0xff9b {
        // NAT64 can reach any IPv4 address, private ones included.
        Some("a NAT64 address")
    } else if first == 0x2002 || (first == 0x2001 && ip.segments()[1] == 0) {
        // 6to4 and Teredo carry an IPv4 address inside: through a relay
        // or tunnel of the host's they can reach a private one.
        Some("a 6to4 or Teredo address")
    } else if ip.segments()[..6] == [0; 6] {
        // `::a.b.c.d` (IPv4-compatible, deprecated): the kernel may send it
        // to the IPv4 address inside.
        Some("an IPv4-compatible address")
    } else if first & 0xffc0 == 0xfec0 {
        Some("a site-local address")
    } else if ip.segments()[..4] == [0x0100, 0, 0, 0] {
        Some("a discard-only address")
    } else {
        None
    }
}

/// A destination the notifier refused to contact.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "destination refused: {host} is {reason} ({addr}); set {ALLOW_SETTING} = true to allow \
     private destinations"
)]
pub struct RefusedDestination {
    pub host: String,
    pub addr: IpAddr,
    pub reason: &'static str,
}

impl Classify for RefusedDestination {
    /// Whoever set the URL (a user's `webhook_url`, or the operator).
    fn fault(&self) -> Fault {
        Fault::Config
    }
}

/// Resolves once and hands reqwest only addresses that passed the check.
#[derive(Debug)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match forbidden_reason(a.ip()) {
                    None => true,
                    Some(reason) => {
                        refused.get_or_insert(RefusedDestination {
                            host: host.clone(),
                            addr: a.ip(),
                            reason,
                        });
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(r)) => Err(Box::new(r) as Box<dyn std::error::Error + Send + Sync>),
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

/// The notifier's HTTP client and its destination policy.
#[derive(Clone)]
pub struct Outbound {
    http: reqwest::Client,
    allow_private: bool,
    refused: IntCounterVec,
}

/// Why the HTTP client cannot be built: a setting is wrong.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("notifications.tls: {0}")]
    Client(reqwest::Error),
}

impl Classify for OutboundError {
    fn fault(&self) -> Fault {
        Fault::Config
    }
}

impl Outbound {
    /// The client: no redirects, `timeout` to connect and for each request,
    /// `tls` trusted besides the system roots, private destinations (and
    /// proxies from the environment) refused unless `allow_private`. Refusals count in `refused{channel}`.
    pub fn new(
        timeout: Duration,
        tls: &TlsFiles,
        allow_private: bool,
        refused: IntCounterVec,
    ) -> Result<Outbound, OutboundError> {
        crate::tls::install_provider();
        let loaded = tls.load("notifications.tls")?;
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .timeout(timeout);
        if !allow_private {
            // No proxy from the environment (`HTTP_PROXY`, `HTTPS_PROXY`,
            // `ALL_PROXY`): through one, the resolver would check the
            // proxy's address only and the proxy would resolve and reach
            // the user's host, private or not.
            b = b.dns_resolver(Arc::new(GuardedResolver)).no_proxy();
        }
        b = loaded.apply(b).map_err(OutboundError::Client)?;
        Ok(Outbound {
            http: b.build().map_err(OutboundError::Client)?,
            allow_private,
            refused,
        })
    }

    /// Checks `url` (http(s), and a literal address against the policy)
    /// and starts a POST to it.
    pub fn post(&self, channel: &str, url: &str) -> Result<reqwest::RequestBuilder, DeliveryError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| DeliveryError::permanent(format!("bad url: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(DeliveryError::permanent(format!(
                "bad url: scheme `{}` (expected http or https)",
                parsed.scheme()
            )));
        }
        if !self.allow_private {
            // IPv6 literals come bracketed; reqwest connects to a literal
            // without asking the resolver, so it is checked here.
            let literal = parsed
                .host_str()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
                .and_then(|h| h.parse::<IpAddr>().ok());
            if let Some(addr) = literal
                && let Some(reason) = forbidden_reason(addr)
            {
                return Err(self.refuse(
                    channel,
                    &RefusedDestination {
                        host: addr.to_string(),
                        addr,
                        reason,
                    },
                ));
            }
        }
        Ok(self.http.post(parsed))
    }

    /// POSTs `body` to a Brevo-style provider API: header `api-key`, the
    /// delivery id as `Idempotency-Key`.
    pub async fn post_api(
        &self,
        channel: &str,
        url: &str,
        api_key: &str,
        delivery_id: &str,
        body: &serde_json::Value,
    ) -> Result<(), DeliveryError> {
        let req = self
            .post(channel, url)?
            .header("api-key", api_key)
            .header("Idempotency-Key", delivery_id)
            .json(body);
        self.send(channel, req).await
    }

    /// Sends `req` and classifies the answer; a destination the resolver
    /// refused is a permanent failure, counted.
    pub async fn send(
        &self,
        channel: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<(), DeliveryError> {
        let result = req.send().await;
        if let Err(e) = &result
            && let Some(r) = refused_in(e)
        {
            return Err(self.refuse(channel, &r));
        }
        DeliveryError::from_http(result)
    }

    fn refuse(&self, channel: &str, r: &RefusedDestination) -> DeliveryError {
        self.refused.with_label_values(&[channel]).inc();
        // The host is the operator's or the user's webhook host, not contact data.
        tracing::warn!(
            channel,
            reason = r.reason,
            "notification destination refused"
        );
        DeliveryError::permanent(r.to_string())
    }
}

/// The resolver's refusal inside a reqwest error, if that is what it is.
fn refused_in(e: &reqwest::Error) -> Option<RefusedDestination> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<RefusedDestination>() {
            return Some(r.clone());
        }
        source = s.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usual_suspects_are_refused_and_public_addresses_pass() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "64:ff9b:1::a00:1",
            // 6to4 of 127.0.0.1 and of 10.0.0.1, Teredo, IPv4-compatible.
            "2002:7f00:1::1",
            "2002:a00:1::",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "::127.0.0.1",
            "::169.254.169.254",
            "fec0::1",
            "100::1",
        ] {
            let ip: IpAddr = bad.parse().unwrap();
            assert!(forbidden_reason(ip).is_some(), "{bad} should be refused");
        }
        for good in ["1.1.1.1", "93.184.215.14", "2606:4700:4700::1111"] {
            let ip: IpAddr = good.parse().unwrap();
            assert_eq!(forbidden_reason(ip), None, "{good} should pass");
        }
    }
}

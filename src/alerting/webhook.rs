//! Delivering an alert's notification: a JSON body POSTed to the rule's webhook, signed with
//! its secret (`X-Floe-Signature: sha256=<hex HMAC-SHA256 of the body>`), retried with
//! exponential backoff on failures a retry can get past (no answer, 408, 429, 5xx), given up
//! at once on any other refusal. Unless `alerting.allow_private_webhooks` is on, a webhook whose
//! host is (or resolves to) a loopback, private, link-local or unspecified address is refused.

use std::net::IpAddr;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The signature header's value for `body`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// How a webhook is reached.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub client: reqwest::Client,
    pub attempts: u32,
    pub backoff: Duration,
    pub timeout: Duration,
    pub allow_private: bool,
}

/// Whether `ip` is an address of the platform's own networks rather than the internet's.
fn private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                // Carrier-grade NAT, 100.64.0.0/10.
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => private(IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                v6.is_loopback()
                    || v6.is_unspecified()
                    // Unique local fc00::/7 and link-local fe80::/10.
                    || (first & 0xfe00) == 0xfc00
                    || (first & 0xffc0) == 0xfe80
            }
        },
    }
}

impl Delivery {
    /// Refuses a webhook that reaches a private address (see the module's comment).
    async fn check_address(&self, url: &reqwest::Url) -> Result<(), String> {
        if self.allow_private {
            return Ok(());
        }
        let host = url.host_str().ok_or("the webhook has no host")?;
        let port = url.port_or_known_default().unwrap_or(443);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| format!("resolving {host}: {e}"))?
                .map(|a| a.ip())
                .collect(),
        };
        match addrs.into_iter().find(|ip| private(*ip)) {
            Some(ip) => Err(format!(
                "{host} is a private address ({ip}); webhooks may reach only public ones \
                 unless alerting.allow_private_webhooks is on"
            )),
            None => Ok(()),
        }
    }

    /// POSTs `body` to `url`, signed with `secret`; `id` names the notification (the
    /// `X-Floe-Delivery` header, the same on every attempt, for a receiver to drop repeats).
    /// `Err`: why it was given up.
    pub async fn send(
        &self,
        url: &str,
        secret: &str,
        id: &str,
        body: Vec<u8>,
    ) -> Result<(), String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("bad webhook URL: {e}"))?;
        self.check_address(&parsed).await?;
        let signed = signature(secret, &body);
        let mut wait = self.backoff;
        let mut last = String::new();
        for attempt in 1..=self.attempts.max(1) {
            let sent = self
                .client
                .post(parsed.clone())
                .timeout(self.timeout)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("X-Floe-Signature", &signed)
                .header("X-Floe-Delivery", id)
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r)
                    if r.status().is_client_error()
                        && !matches!(r.status().as_u16(), 408 | 429) =>
                {
                    return Err(format!("the webhook refused it: {}", r.status()));
                }
                Ok(r) => last = format!("the webhook answered {}", r.status()),
                Err(e) if e.is_timeout() => {
                    last = format!("no answer within {} ms", self.timeout.as_millis())
                }
                Err(e) => last = format!("could not reach the webhook: {e}"),
            }
            if attempt < self.attempts {
                tracing::debug!(attempt, url, error = %last, "alert notification failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_BACKOFF);
            }
        }
        Err(format!("{last} (after {} attempts)", self.attempts.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn private_addresses_are_told_from_public_ones() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888"] {
            assert!(!private(ip.parse().unwrap()), "{ip}");
        }
    }
}

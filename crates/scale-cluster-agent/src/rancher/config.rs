//! How to reach Rancher: its URL, the API token (masked everywhere it could be printed), how to
//! trust its certificate (for the API and, mapped by [`super::RancherClient::tunnel_tls`], for the
//! tunnels), and the retry and timeout policy.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::error::RancherError;
pub use remotedialer::Backoff;

/// A Rancher API token, `token-xxxxx:secret`. Neither `Debug` nor any error ever shows any of it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    /// Accepts the `token-xxxxx:secret` form Rancher issues (access key, colon, secret key).
    pub fn new(value: impl Into<String>) -> Result<Self, RancherError> {
        let value = value.into();
        let value = value.trim();
        match value.split_once(':') {
            Some((name, secret)) if !name.is_empty() && !secret.is_empty() => {
                Ok(Self(value.to_owned()))
            }
            _ => Err(RancherError::InvalidToken),
        }
    }

    /// The token itself, for the `Authorization` header only.
    pub(super) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl FromStr for ApiToken {
    type Err = RancherError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// How the client trusts Rancher's certificate. Every mode but [`TlsMode::Insecure`] verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// The built-in (webpki) roots: Rancher has a publicly trusted certificate.
    PublicRoots,
    /// Only the CA certificate(s) in this PEM file.
    CaFile(PathBuf),
    /// `CATTLE_CA_CHECKSUM`: fetch `/v3/settings/cacerts` (unverified, unauthenticated), require
    /// its checksum (see [`super::ca_checksum`]) to equal this hex value, then trust only that CA.
    CaChecksum(String),
    /// No certificate verification at all. Explicit opt-in for throwaway test setups.
    Insecure,
}

/// Retries of timeouts, connection errors and 5xx answers, with exponential backoff and full
/// jitter (the policy the tunnels reconnect with), so many workers that hit the same Rancher
/// outage do not retry in lockstep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts per request, at least 1.
    pub max_attempts: u32,
    /// Delay before the second attempt up to `backoff.base`, doubling per attempt up to
    /// `backoff.cap`.
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            backoff: Backoff {
                base: Duration::from_millis(250),
                cap: Duration::from_secs(5),
            },
        }
    }
}

impl RetryPolicy {
    /// Delay after failed attempt number `attempt` (1-based).
    pub(super) fn delay(&self, attempt: u32) -> Duration {
        self.backoff.delay(attempt.saturating_sub(1))
    }
}

/// Everything [`super::RancherClient::new`] needs.
#[derive(Debug, Clone)]
pub struct RancherConfig {
    /// Base URL, e.g. `https://rancher.example.com` (https only).
    pub url: String,
    pub token: ApiToken,
    pub tls: TlsMode,
    pub retry: RetryPolicy,
    /// Timeout of one HTTP request (connect included).
    pub request_timeout: Duration,
    /// How long [`super::RancherClient::registration`] waits for the registration token, which
    /// Rancher creates asynchronously after the cluster.
    pub registration_timeout: Duration,
}

impl RancherConfig {
    /// A configuration with verified TLS per `tls` and default timeouts and retries.
    pub fn new(url: impl Into<String>, token: ApiToken, tls: TlsMode) -> Self {
        Self {
            url: url.into(),
            token,
            tls,
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(30),
            registration_timeout: Duration::from_secs(120),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_debug_and_errors_never_show_it() {
        let token = ApiToken::new("token-abcde:verysecretvalue").expect("valid token");
        let shown = format!("{token:?}");
        assert!(!shown.contains("token-abcde") && !shown.contains("verysecret"));
        let config = RancherConfig::new("https://x", token, TlsMode::Insecure);
        assert!(!format!("{config:?}").contains("verysecret"));
        let error = ApiToken::new("no-colon-secret").expect_err("rejected");
        assert!(!error.to_string().contains("no-colon-secret"));
    }

    #[test]
    fn token_needs_both_parts() {
        for bad in ["", ":", "token-abc:", ":secret", "justone"] {
            assert!(ApiToken::new(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            ApiToken::new(" token-a:b\n").expect("trimmed").expose(),
            "token-a:b"
        );
    }

    #[test]
    fn retry_delays_double_up_to_the_cap_with_jitter() {
        let policy = RetryPolicy {
            max_attempts: 10,
            backoff: Backoff {
                base: Duration::from_millis(100),
                cap: Duration::from_millis(350),
            },
        };
        for (attempt, ceiling) in [(1, 100), (2, 200), (3, 350), (4, 350)] {
            let delays: Vec<_> = (0..200).map(|_| policy.delay(attempt)).collect();
            assert!(delays.iter().all(|d| *d <= Duration::from_millis(ceiling)));
            // Jittered: the draws spread over the range instead of all being the ceiling.
            let distinct: std::collections::HashSet<_> = delays.iter().collect();
            assert!(distinct.len() > 20, "attempt {attempt}: {distinct:?}");
        }
    }
}

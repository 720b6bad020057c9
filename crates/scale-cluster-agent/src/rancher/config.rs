//! How to reach Rancher: its URL, the API token (masked everywhere it could be printed), how to
//! trust its certificate, and the retry and timeout policy.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::error::RancherError;

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

/// Retries of timeouts, connection errors and 5xx answers, with exponential backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts per request, at least 1.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubled each time.
    pub base_delay: Duration,
    /// Upper bound of one delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// Delay after failed attempt number `attempt` (1-based).
    pub(super) fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.base_delay.saturating_mul(factor).min(self.max_delay)
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
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
        };
        let delays: Vec<_> = (1..=4).map(|a| policy.delay(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
    }
}

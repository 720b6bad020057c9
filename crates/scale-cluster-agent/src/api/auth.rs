//! Who may talk to the agent's HTTP API: the DNS-rebinding defence (a `Host` allow-list) and the
//! optional bearer token.
//!
//! A web page the user visits can make the browser send requests to `127.0.0.1` under a DNS name
//! the attacker controls (DNS rebinding); the only trace of that is the `Host` header, which then
//! carries the attacker's name. So every request must name the agent by `localhost`, a loopback
//! IP, or the address it listens on (any IP literal when it listens on all interfaces: a rebinding
//! attack always uses a DNS name).
//!
//! A non-loopback listen address is reachable from other machines, so it requires an
//! [`ApiToken`]: every endpoint except `GET /health` then needs `Authorization: Bearer <token>`.
//! The token never comes from a flag (it would show in `ps`), is never printed (`Debug` redacts
//! it), and is compared in constant time.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Shortest accepted API token: a guessable token would make the check pointless.
pub const MIN_TOKEN_LEN: usize = 16;

/// The API bearer token. `Debug` never shows it; [`ApiToken::matches`] compares in constant time.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ApiToken(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidApiToken {
    #[error("the API token is shorter than {MIN_TOKEN_LEN} characters")]
    TooShort,
    #[error("the API token may only hold visible ASCII characters (no spaces)")]
    BadCharacter,
}

impl ApiToken {
    /// Checks that `value` (already trimmed) can be sent in a header and is not trivially short.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidApiToken> {
        let value = value.into();
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidApiToken::BadCharacter);
        }
        if value.len() < MIN_TOKEN_LEN {
            return Err(InvalidApiToken::TooShort);
        }
        Ok(Self(value))
    }

    /// The secret itself, for the `Authorization` header and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is this token. Both sides are hashed first, so the comparison time
    /// depends on neither the token's length nor on how many leading bytes a guess got right.
    pub fn matches(&self, candidate: &str) -> bool {
        let want = Sha256::digest(self.0.as_bytes());
        let got = Sha256::digest(candidate.as_bytes());
        want.iter()
            .zip(got.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl TryFrom<String> for ApiToken {
    type Error = InvalidApiToken;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<ApiToken> for String {
    fn from(token: ApiToken) -> String {
        token.0
    }
}

/// The access rules of one API listener.
#[derive(Debug, Clone)]
pub struct Access {
    /// The address the API listens on.
    pub listen: SocketAddr,
    /// Required on every request but `GET /health` when set.
    pub token: Option<ApiToken>,
}

impl Access {
    /// Whether a request naming `host` (a `Host` header or a URI authority: `name[:port]`,
    /// `[v6][:port]`) may be served. Ports are not compared: the defence is against foreign
    /// names, and a port forwarder may legitimately change the port.
    pub fn host_allowed(&self, host: &str) -> bool {
        let Some(name) = host_name(host) else {
            return false;
        };
        if name.eq_ignore_ascii_case("localhost") {
            return true;
        }
        let Ok(ip) = name.parse::<IpAddr>() else {
            // Any other DNS name is exactly what a rebinding attack sends.
            return false;
        };
        ip.is_loopback() || ip == self.listen.ip() || self.listen.ip().is_unspecified()
    }

    /// Whether the `Authorization` header value `header` carries the token (always true without
    /// a token configured).
    pub fn authorized(&self, header: Option<&str>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        header
            .and_then(|value| {
                let (scheme, rest) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .is_some_and(|candidate| token.matches(candidate))
    }
}

/// The host part of `name[:port]` or `[v6][:port]`; `None` when malformed.
fn host_name(host: &str) -> Option<&str> {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        return (after.is_empty() || valid_port(after.strip_prefix(':')?)).then_some(inner);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => valid_port(port).then_some(name),
        // An unbracketed IPv6 address is not a valid Host; refuse rather than guess.
        Some(_) => None,
        None => (!host.is_empty()).then_some(host),
    }
}

fn valid_port(port: &str) -> bool {
    !port.is_empty() && port.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(listen: &str, token: Option<&str>) -> Access {
        Access {
            listen: listen.parse().unwrap(),
            token: token.map(|t| ApiToken::new(t).unwrap()),
        }
    }

    #[test]
    fn only_local_names_and_the_listen_address_are_allowed_hosts() {
        let local = access("127.0.0.1:8089", None);
        for ok in [
            "localhost",
            "LOCALHOST:8089",
            "127.0.0.1",
            "127.0.0.1:8089",
            "[::1]",
            "[::1]:1",
        ] {
            assert!(local.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8089",
            "localhost.evil.example",
            "10.0.0.5:8089",
            "",
            "::1",
            "127.0.0.1:notaport",
            "[::1]x",
        ] {
            assert!(!local.host_allowed(bad), "{bad}");
        }
        let lan = access("10.0.0.5:8089", Some("0123456789abcdef"));
        assert!(lan.host_allowed("10.0.0.5:8089"));
        assert!(lan.host_allowed("localhost:8089"));
        assert!(!lan.host_allowed("10.0.0.6:8089"));
        assert!(!lan.host_allowed("agent.example:8089"));
        let all = access("0.0.0.0:8089", Some("0123456789abcdef"));
        assert!(all.host_allowed("192.168.1.7:8089"));
        assert!(!all.host_allowed("agent.example:8089"));
    }

    #[test]
    fn the_bearer_token_must_match_exactly() {
        let open = access("127.0.0.1:1", None);
        assert!(open.authorized(None));
        let guarded = access("127.0.0.1:1", Some("0123456789abcdef"));
        assert!(guarded.authorized(Some("Bearer 0123456789abcdef")));
        assert!(guarded.authorized(Some("bearer 0123456789abcdef")));
        assert!(!guarded.authorized(None));
        assert!(!guarded.authorized(Some("Bearer 0123456789abcdeF")));
        assert!(!guarded.authorized(Some("Bearer 0123456789abcde")));
        assert!(!guarded.authorized(Some("Basic 0123456789abcdef")));
        assert!(!guarded.authorized(Some("0123456789abcdef")));
    }

    #[test]
    fn tokens_are_validated_and_never_shown() {
        assert_eq!(ApiToken::new("short"), Err(InvalidApiToken::TooShort));
        assert_eq!(
            ApiToken::new("has a space in it!"),
            Err(InvalidApiToken::BadCharacter)
        );
        let token = ApiToken::new("0123456789abcdef").unwrap();
        assert!(!format!("{token:?}").contains("0123"));
        let json = serde_json::to_string(&token).unwrap();
        assert_eq!(json, "\"0123456789abcdef\"");
        assert!(serde_json::from_str::<ApiToken>("\"short\"").is_err());
    }
}

//! Trust in Rancher's certificate: Rancher's CA checksum rule and the checksum-pinned fetch of
//! `/v3/settings/cacerts` (the only place that fetch happens, for the API client and for the
//! tunnels alike), pinned-CA and public-root HTTP clients, the mapping of [`TlsMode`] to what the
//! tunnel library takes, and recognising certificate failures so they are reported (not retried).

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::config::{RetryPolicy, TlsMode};
use super::error::RancherError;
use super::model::Registration;
use super::Transport;

/// `CATTLE_CA_CHECKSUM` of a `cacerts` value, computed as Rancher does
/// (`pkg/systemtemplate/import.go CAChecksum`): lowercase hex SHA-256 of the PEM with a trailing
/// newline appended when missing.
pub fn ca_checksum(pem: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(pem.as_bytes());
    if !pem.ends_with('\n') {
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

/// The checksum as compared: Rancher prints lowercase hex, users may paste it otherwise.
pub(super) fn normalize_checksum(checksum: &str) -> String {
    checksum.trim().to_ascii_lowercase()
}

/// Fetches `<base>/v3/settings/cacerts` without verifying the server and without credentials
/// (the checksum is what makes the answer trustworthy), and returns the PEM if its checksum is
/// `expected` (normalized) and it holds at least one certificate.
pub(super) async fn fetch_pinned_ca(
    base: &str,
    expected: &str,
    timeout: Duration,
    retry: RetryPolicy,
) -> Result<String, RancherError> {
    let bootstrap = Transport {
        base: base.to_owned(),
        http: unverified_client(timeout)?,
        retry,
    };
    let pem = bootstrap.ca_certs().await?;
    let actual = ca_checksum(&pem);
    if actual != expected {
        return Err(RancherError::CaChecksumMismatch {
            expected: expected.to_owned(),
            actual,
        });
    }
    parse_ca(&pem, "/v3/settings/cacerts")?;
    Ok(pem)
}

/// What the tunnels to `registration.server_url` trust, from the client's [`TlsMode`] and the
/// import manifest, as the real agent decides it: a CA file or insecure mode as configured; the
/// configured checksum pin (strict); otherwise the manifest's `CATTLE_CA_CHECKSUM` pin (strict
/// per `STRICT_VERIFY`), or the public roots when Rancher's certificate is publicly trusted.
/// `pinned_ca` yields the PEM for a normalized checksum and the server to fetch it from.
pub(super) async fn tunnel_tls<F, Fut>(
    mode: &TlsMode,
    registration: &Registration,
    pinned_ca: F,
) -> Result<remotedialer::TlsMode, RancherError>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<String, RancherError>>,
{
    let (checksum, strict) = match mode {
        TlsMode::CaFile(path) => return Ok(remotedialer::TlsMode::CaBundleFile(path.clone())),
        TlsMode::Insecure => return Ok(remotedialer::TlsMode::InsecureSkipVerify),
        TlsMode::CaChecksum(checksum) => (checksum, true),
        TlsMode::PublicRoots => match &registration.ca_checksum {
            Some(checksum) => (checksum, registration.strict_verify),
            None => return Ok(remotedialer::TlsMode::WebpkiRoots),
        },
    };
    let pem = pinned_ca(normalize_checksum(checksum)).await?;
    Ok(remotedialer::TlsMode::CaBundle {
        pem,
        also_webpki_roots: !strict,
    })
}

/// Parses a PEM bundle into certificates, requiring at least one.
pub(super) fn parse_ca(pem: &str, origin: &str) -> Result<Vec<reqwest::Certificate>, RancherError> {
    let invalid = |reason: String| RancherError::InvalidCaCert {
        origin: origin.to_owned(),
        reason,
    };
    let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
        .map_err(|e| invalid(e.without_url().to_string()))?;
    if certs.is_empty() {
        return Err(invalid("no PEM CERTIFICATE block".to_owned()));
    }
    Ok(certs)
}

fn builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .https_only(true)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
}

fn build(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, RancherError> {
    builder
        .build()
        .map_err(|e| RancherError::TlsSetup(e.without_url().to_string()))
}

/// A client that trusts only `certs`.
pub(super) fn pinned_client(
    certs: Vec<reqwest::Certificate>,
    timeout: Duration,
) -> Result<reqwest::Client, RancherError> {
    let builder = certs.into_iter().fold(
        builder(timeout).tls_built_in_root_certs(false),
        reqwest::ClientBuilder::add_root_certificate,
    );
    build(builder)
}

/// A client that trusts the built-in public roots.
pub(super) fn public_client(timeout: Duration) -> Result<reqwest::Client, RancherError> {
    build(builder(timeout))
}

/// A client that verifies nothing: for explicit insecure mode, and for fetching `cacerts` before
/// its checksum is checked (that request carries no credentials).
pub(super) fn unverified_client(timeout: Duration) -> Result<reqwest::Client, RancherError> {
    build(builder(timeout).danger_accept_invalid_certs(true))
}

/// The certificate-verification failure inside a request error, if that is what it was. rustls
/// reports it inside nested `io::Error`s, whose `source()` skips the wrapped error itself.
pub(super) fn certificate_error(error: &reqwest::Error) -> Option<String> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = next {
        if let Some(rustls::Error::InvalidCertificate(reason)) =
            current.downcast_ref::<rustls::Error>()
        {
            return Some(format!("{reason:?}"));
        }
        // io::Errors nest (hyper's connect error wraps the handshake's); step into the wrapped
        // error itself rather than past it.
        next = match current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner),
            None => current.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_compare_case_and_whitespace_insensitively() {
        assert_eq!(normalize_checksum(" ABcd\n"), "abcd");
    }

    #[test]
    fn checksum_appends_a_missing_newline_only() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
        let with_newline = format!("{pem}\n");
        assert_eq!(ca_checksum(pem), ca_checksum(&with_newline));
        let expected = hex::encode(Sha256::digest(with_newline.as_bytes()));
        assert_eq!(ca_checksum(pem), expected);
        // Only one newline is implied: a value that already has one is hashed as it is.
        assert_ne!(
            ca_checksum(&with_newline),
            ca_checksum(&format!("{pem}\n\n"))
        );
    }

    #[test]
    fn parse_ca_rejects_non_pem() {
        assert!(matches!(
            parse_ca("not a certificate", "test"),
            Err(RancherError::InvalidCaCert { .. })
        ));
    }
}

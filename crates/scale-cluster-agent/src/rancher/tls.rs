//! Trust in Rancher's certificate: Rancher's CA checksum rule, pinned-CA and public-root HTTP
//! clients, and recognising certificate failures so they are reported (not retried).

use std::time::Duration;

use super::error::RancherError;

/// `CATTLE_CA_CHECKSUM` of a `cacerts` value, computed as Rancher does
/// (`pkg/systemtemplate/import.go CAChecksum`): one implementation, shared with the tunnels.
pub use remotedialer::ca_checksum;

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
    use sha2::{Digest, Sha256};

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

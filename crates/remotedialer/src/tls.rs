//! TLS for `wss://` tunnels: which roots to trust, including Rancher-style CA pinning by the
//! SHA-256 checksum of the CA PEM served at `/v3/settings/cacerts`.
//!
//! Building a rustls config (and its root store) is comparatively expensive, so callers with
//! many clients should build one with [`client_tls_config`] and share it via
//! [`TlsMode::Custom`]; the webpki-roots config is shared process-wide automatically.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use tokio_tungstenite::tungstenite::http;

/// How to verify the server of a `wss://` tunnel.
#[derive(Clone, Debug, Default)]
pub enum TlsMode {
    /// Trust the webpki (Mozilla) root set.
    #[default]
    WebpkiRoots,
    /// Trust only the certificates in this PEM bundle file.
    CaBundleFile(PathBuf),
    /// Fetch `/v3/settings/cacerts` from the tunnel's server, require that the SHA-256 of
    /// the PEM (computed as Rancher does) equals `checksum`, then trust that CA: alone when
    /// `strict`, otherwise in addition to the webpki roots.
    CaChecksum { checksum: String, strict: bool },
    /// Accept any certificate. Only for explicit opt-in (tests, `--insecure` style flags).
    InsecureSkipVerify,
    /// A ready config, e.g. one built once and shared by thousands of clients.
    Custom(Arc<ClientConfig>),
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading CA bundle {path}: {reason}")]
    CaBundle { path: PathBuf, reason: String },
    #[error("no certificates found in {0}")]
    EmptyBundle(String),
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("answer from {url} is larger than {limit} bytes; a cacerts setting is a few KiB")]
    TooLarge { url: String, limit: usize },
    #[error("CA checksum mismatch: expected {expected}, server's cacerts hash to {actual}")]
    ChecksumMismatch { expected: String, actual: String },
    #[error("invalid tunnel url for CA lookup: {0}")]
    Url(String),
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn config_with_roots(roots: RootCertStore) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn webpki_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

fn shared_webpki_config() -> Result<Arc<ClientConfig>, TlsError> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(config.clone());
    }
    let config = config_with_roots(webpki_roots())?;
    Ok(CONFIG.get_or_init(|| config).clone())
}

/// Parses every certificate in a PEM text.
pub fn certificates_from_pem(
    pem: &[u8],
    origin: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::CaBundle {
            path: origin.into(),
            reason: error.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::EmptyBundle(origin.into()));
    }
    Ok(certificates)
}

fn add_all(
    roots: &mut RootCertStore,
    certificates: Vec<CertificateDer<'static>>,
) -> Result<(), TlsError> {
    for certificate in certificates {
        roots.add(certificate)?;
    }
    Ok(())
}

/// The checksum Rancher puts in `CATTLE_CA_CHECKSUM`: lowercase hex SHA-256 of the PEM with a
/// trailing newline appended when missing.
pub fn ca_checksum(pem: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(pem.as_bytes());
    if !pem.ends_with('\n') {
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

/// `https://host:port` (or `http://`) of the server behind a `wss://`/`ws://` tunnel url.
pub fn server_base_url(tunnel_url: &str) -> Result<String, TlsError> {
    let uri: http::Uri = tunnel_url
        .parse()
        .map_err(|error: http::uri::InvalidUri| TlsError::Url(error.to_string()))?;
    let scheme = match uri.scheme_str() {
        Some("wss") | Some("https") => "https",
        Some("ws") | Some("http") => "http",
        other => return Err(TlsError::Url(format!("unsupported scheme {other:?}"))),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| TlsError::Url("no host".into()))?;
    Ok(format!("{scheme}://{authority}"))
}

/// Most of a `cacerts` answer read: a CA bundle is a few KiB, and the answer comes from a server
/// not yet trusted, which must not be able to make us buffer an endless body.
pub const CACERTS_BODY_LIMIT: usize = 1 << 20;

/// Fetches the `cacerts` setting without verifying the server (the checksum is what makes the
/// answer trustworthy), checks it against `checksum`, and returns the PEM.
pub async fn fetch_pinned_ca(server_base: &str, checksum: &str) -> Result<String, TlsError> {
    let url = format!("{}/v3/settings/cacerts", server_base.trim_end_matches('/'));
    let fetch_error = |reason: String| TlsError::Fetch {
        url: url.clone(),
        reason,
    };
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|error| fetch_error(error.to_string()))?;
    let mut response = client
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|error| fetch_error(error.to_string()))?;
    let too_large = || TlsError::TooLarge {
        url: url.clone(),
        limit: CACERTS_BODY_LIMIT,
    };
    if response
        .content_length()
        .is_some_and(|length| length > CACERTS_BODY_LIMIT as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| fetch_error(error.to_string()))?
    {
        if body.len() + chunk.len() > CACERTS_BODY_LIMIT {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    let setting: serde_json::Value =
        serde_json::from_slice(&body).map_err(|error| fetch_error(error.to_string()))?;
    let pem = setting
        .get("value")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| fetch_error("no string field \"value\"".into()))?
        .to_owned();
    let actual = ca_checksum(&pem);
    if !actual.eq_ignore_ascii_case(checksum.trim()) {
        return Err(TlsError::ChecksumMismatch {
            expected: checksum.trim().to_owned(),
            actual,
        });
    }
    certificates_from_pem(pem.as_bytes(), &url)?;
    Ok(pem)
}

/// Builds the rustls config for `mode`. `tunnel_url` is only used to locate `cacerts`.
pub async fn client_tls_config(
    mode: &TlsMode,
    tunnel_url: &str,
) -> Result<Arc<ClientConfig>, TlsError> {
    match mode {
        TlsMode::WebpkiRoots => shared_webpki_config(),
        TlsMode::Custom(config) => Ok(config.clone()),
        TlsMode::InsecureSkipVerify => {
            let config = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
                .with_no_client_auth();
            Ok(Arc::new(config))
        }
        TlsMode::CaBundleFile(path) => {
            let pem = tokio::fs::read(path)
                .await
                .map_err(|error| TlsError::CaBundle {
                    path: path.clone(),
                    reason: error.to_string(),
                })?;
            let mut roots = RootCertStore::empty();
            add_all(
                &mut roots,
                certificates_from_pem(&pem, &path.display().to_string())?,
            )?;
            config_with_roots(roots)
        }
        TlsMode::CaChecksum { checksum, strict } => {
            let pem = fetch_pinned_ca(&server_base_url(tunnel_url)?, checksum).await?;
            let mut roots = if *strict {
                RootCertStore::empty()
            } else {
                webpki_roots()
            };
            add_all(
                &mut roots,
                certificates_from_pem(pem.as_bytes(), "cacerts")?,
            )?;
            config_with_roots(roots)
        }
    }
}

/// Verifier for [`TlsMode::InsecureSkipVerify`]: any certificate, but handshake signatures
/// are still checked so the session keys are at least bound to the presented key.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_appends_missing_newline_like_rancher() {
        let with_newline = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
        let without = with_newline.trim_end();
        assert_eq!(ca_checksum(with_newline), ca_checksum(without));
        assert_eq!(
            ca_checksum("x"),
            hex::encode(Sha256::digest(b"x\n")),
            "hash covers the appended newline"
        );
    }

    #[test]
    fn base_url_follows_tunnel_scheme() {
        assert_eq!(
            server_base_url("wss://rancher.example:8443/v3/connect").expect("valid"),
            "https://rancher.example:8443"
        );
        assert_eq!(
            server_base_url("ws://127.0.0.1:1/connect").expect("valid"),
            "http://127.0.0.1:1"
        );
        assert!(server_base_url("ftp://x/").is_err());
    }
}

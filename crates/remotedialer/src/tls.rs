//! TLS for `wss://` tunnels: which roots to trust (the webpki roots, a CA bundle given as a file
//! or as PEM text, alone or on top of the webpki roots) or, on explicit request, none. Where a CA
//! comes from (a file, a server setting pinned by checksum) is the caller's business.
//!
//! Building a rustls config (and its root store) is comparatively expensive, so callers with
//! many clients should build one with [`client_tls_config`] and share it via
//! [`TlsMode::Custom`]; the webpki-roots config is shared process-wide automatically.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// How to verify the server of a `wss://` tunnel.
#[derive(Clone, Debug, Default)]
pub enum TlsMode {
    /// Trust the webpki (Mozilla) root set.
    #[default]
    WebpkiRoots,
    /// Trust only the certificates in this PEM bundle file.
    CaBundleFile(PathBuf),
    /// Trust the certificates in this PEM text: alone, or in addition to the webpki roots when
    /// `also_webpki_roots`.
    CaBundle {
        pem: String,
        also_webpki_roots: bool,
    },
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

/// Builds the rustls config for `mode` (reading the bundle file of [`TlsMode::CaBundleFile`]).
pub async fn client_tls_config(mode: &TlsMode) -> Result<Arc<ClientConfig>, TlsError> {
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
        TlsMode::CaBundle {
            pem,
            also_webpki_roots,
        } => {
            let mut roots = if *also_webpki_roots {
                webpki_roots()
            } else {
                RootCertStore::empty()
            };
            add_all(
                &mut roots,
                certificates_from_pem(pem.as_bytes(), "the CA bundle")?,
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

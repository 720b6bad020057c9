//! Errors of the Rancher client: one variant per thing a caller reacts to differently. Messages
//! carry the request path and Rancher's own error text, never a token (paths that would contain a
//! registration token are redacted before they get here).

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RancherError {
    #[error("invalid Rancher URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error("the Rancher API token must look like token-xxxxx:secret")]
    InvalidToken,

    #[error("cannot read the Rancher CA file {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },

    #[error("invalid CA certificate from {origin}: {reason}")]
    InvalidCaCert { origin: String, reason: String },

    #[error(
        "Rancher CA checksum mismatch: /v3/settings/cacerts hashes to {actual}, expected {expected} \
         (is this the right Rancher, or is something intercepting TLS?)"
    )]
    CaChecksumMismatch { expected: String, actual: String },

    #[error("TLS setup failed: {0}")]
    TlsSetup(String),

    #[error(
        "TLS certificate of {url} not trusted: {reason} (pass the Rancher CA file or its CA checksum)"
    )]
    UntrustedCertificate { url: String, reason: String },

    #[error(
        "Rancher rejected the API token for {path} (401 {message}); check that the token is \
         correct, enabled, not expired, and was issued by this Rancher"
    )]
    Unauthorized { path: String, message: String },

    #[error("Rancher denied {path} (403 {message}); the API token's user lacks permission")]
    Forbidden { path: String, message: String },

    #[error("not found in Rancher: {what}")]
    NotFound { what: String },

    #[error("Rancher refused {path}: conflict ({code}: {message})")]
    Conflict {
        path: String,
        code: String,
        message: String,
    },

    #[error("Rancher refused {path} as invalid ({status} {code}: {message})")]
    Invalid {
        path: String,
        status: u16,
        code: String,
        message: String,
    },

    #[error("Rancher answered {path} with {status} after {attempts} attempt(s): {message}")]
    Server {
        path: String,
        status: u16,
        attempts: u32,
        message: String,
    },

    #[error("Rancher at {url} unreachable after {attempts} attempt(s): {source}")]
    Unreachable {
        url: String,
        attempts: u32,
        source: reqwest::Error,
    },

    #[error(
        "Rancher's answer to {path} is larger than {limit} bytes; refusing to read it (is this \
         URL really Rancher?)"
    )]
    BodyTooLarge { path: String, limit: usize },

    #[error("unexpected answer from Rancher for {path}: {reason}")]
    Decode { path: String, reason: String },

    #[error("import manifest of cluster {cluster_id}: {reason}")]
    Manifest { cluster_id: String, reason: String },

    #[error("{what} not ready after {after:?}")]
    Timeout { what: String, after: Duration },

    /// The cluster exists in Rancher but this agent did not create it: it is never adopted,
    /// reconnected to, or deleted.
    #[error(
        "Rancher cluster {name:?} ({id}) is not this agent's (instance {instance}): {}; \
         choose another name or remove that cluster yourself",
        match owner {
            Some(owner) => format!("it belongs to scale-cluster-agent instance {owner}"),
            None => "it was not created by scale-cluster-agent".to_string(),
        }
    )]
    NotOwned {
        name: String,
        id: String,
        instance: String,
        owner: Option<String>,
    },
}

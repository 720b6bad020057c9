//! Rancher management-API client: everything the agent asks Rancher before it opens tunnels.
//!
//! It finds or creates the imported cluster by name through the v3 API (idempotent across retries,
//! restarts and concurrent callers), waits for the cluster registration token (Rancher creates it
//! asynchronously; 2.8–2.12 expose `status.token`, 2.13+ fill it in from a Secret), reads the
//! agent's inputs from the import manifest, reports cluster state and conditions, and deletes.
//!
//! TLS is verified by default: public roots, a CA file, or the `CATTLE_CA_CHECKSUM` pin checked
//! against `/v3/settings/cacerts` the way Rancher computes it; [`TlsMode::Insecure`] only on
//! request. Timeouts, connection errors and 5xx answers are retried with backoff; 401, 403, 404
//! and 409/422 become their own [`RancherError`] variants. Tokens are never logged or printed.
//!
//! Ownership: every cluster this client creates carries the [`INSTANCE_LABEL`] of the agent
//! instance that asked for it, and the `*_owned` calls refuse ([`RancherError::NotOwned`]) to hand
//! out or delete a cluster without that agent's label, so a real cluster with a clashing name, or a
//! second agent's cluster, is never taken over.
//!
//! - [`config`] holds the URL, [`ApiToken`], [`TlsMode`], retries and timeouts.
//! - [`error`] holds [`RancherError`].
//! - [`model`] holds the typed results and the v3 JSON they come from.
//! - `manifest` reads the import manifest; `tls` holds trust, the checksum rule and the pinned
//!   `cacerts` fetch, and maps [`TlsMode`] to the tunnels' trust ([`RancherClient::tunnel_tls`]).

pub mod config;
pub mod error;
mod manifest;
pub mod model;
mod tls;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

pub use config::{ApiToken, Backoff, RancherConfig, RetryPolicy, TlsMode};
pub use error::RancherError;
pub use model::{Condition, RancherCluster, Registration, RegistrationToken};
pub use tls::ca_checksum;

use manifest::ImportManifest;
use model::{ClusterResource, Collection, ErrorBody, Setting, TokenResource};

/// The CRT Rancher creates for every cluster; preferred when several exist.
const DEFAULT_TOKEN_NAME: &str = "default-token";

/// The label on a Rancher cluster naming the scale-cluster-agent instance that created it.
pub const INSTANCE_LABEL: &str = "scale-cluster-agent.io/instance";

/// The HTTP methods the client counts requests by, in the order of [`RequestCounts`].
pub const COUNTED_METHODS: [&str; 4] = ["GET", "POST", "DELETE", "other"];

/// Requests sent to Rancher by method (retries included): the load this agent puts on Rancher.
#[derive(Debug, Default)]
pub struct RequestCounts([AtomicU64; 4]);

impl RequestCounts {
    fn count(&self, method: &Method) {
        let index = COUNTED_METHODS
            .iter()
            .position(|m| *m == method.as_str())
            .unwrap_or(COUNTED_METHODS.len() - 1);
        self.0[index].fetch_add(1, Ordering::Relaxed);
    }

    /// `(method, requests)` for every counted method.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        COUNTED_METHODS
            .iter()
            .zip(&self.0)
            .map(|(m, n)| (*m, n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// A client for one Rancher server. Cheap to clone; clones share connections and name locks.
#[derive(Clone)]
pub struct RancherClient {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Transport,
    /// How this client trusts Rancher; also decides what the tunnels trust.
    tls: TlsMode,
    request_timeout: Duration,
    /// `cacerts` PEMs whose checksum was verified, by normalized checksum. A PEM is identified by
    /// its checksum, so one fetch serves every server that pins it (the API URL and
    /// `CATTLE_SERVER`); the async lock makes concurrent first users wait for that one fetch.
    pinned_cas: tokio::sync::Mutex<HashMap<String, String>>,
    token: ApiToken,
    registration_timeout: Duration,
    requests: RequestCounts,
    /// One lock per cluster name being ensured, so concurrent callers in this process never race
    /// each other into Rancher (whose own uniqueness check is not atomic).
    creating: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for RancherClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RancherClient")
            .field("url", &self.inner.transport.base)
            .finish_non_exhaustive()
    }
}

impl RancherClient {
    /// Builds the HTTP client for `config.tls`. With [`TlsMode::CaChecksum`] this already talks to
    /// Rancher: it fetches `cacerts` and fails with [`RancherError::CaChecksumMismatch`] unless the
    /// checksum matches.
    pub async fn new(config: RancherConfig) -> Result<Self, RancherError> {
        let base = parse_base_url(&config.url)?;
        let timeout = config.request_timeout;
        let mut pinned_cas = HashMap::new();
        let http = match &config.tls {
            TlsMode::PublicRoots => tls::public_client(timeout)?,
            TlsMode::CaFile(path) => {
                let pem = tokio::fs::read_to_string(path).await.map_err(|source| {
                    RancherError::CaFile {
                        path: path.display().to_string(),
                        source,
                    }
                })?;
                tls::pinned_client(tls::parse_ca(&pem, &path.display().to_string())?, timeout)?
            }
            TlsMode::CaChecksum(expected) => {
                let expected = tls::normalize_checksum(expected);
                let pem =
                    tls::fetch_pinned_ca(&base, &expected, timeout, config.retry.clone()).await?;
                let client =
                    tls::pinned_client(tls::parse_ca(&pem, "/v3/settings/cacerts")?, timeout)?;
                pinned_cas.insert(expected, pem);
                client
            }
            TlsMode::Insecure => {
                tracing::warn!(url = %base, "Rancher TLS certificate verification is disabled");
                tls::unverified_client(timeout)?
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                transport: Transport {
                    base,
                    http,
                    retry: config.retry,
                },
                tls: config.tls,
                request_timeout: timeout,
                pinned_cas: tokio::sync::Mutex::new(pinned_cas),
                token: config.token,
                registration_timeout: config.registration_timeout,
                requests: RequestCounts::default(),
                creating: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The Rancher base URL this client talks to.
    pub fn url(&self) -> &str {
        &self.inner.transport.base
    }

    /// What the tunnels of `registration` must trust (see `tls::tunnel_tls` for the rule). A
    /// checksum pin yields the verified `cacerts` PEM: the one already fetched for that checksum,
    /// or fetched from `CATTLE_SERVER` (unverified, no credentials) and checked now.
    pub async fn tunnel_tls(
        &self,
        registration: &Registration,
    ) -> Result<remotedialer::TlsMode, RancherError> {
        tls::tunnel_tls(&self.inner.tls, registration, |checksum| async move {
            let mut pinned = self.inner.pinned_cas.lock().await;
            if let Some(pem) = pinned.get(&checksum) {
                return Ok(pem.clone());
            }
            let base = server_origin(&registration.server_url)?;
            let pem = tls::fetch_pinned_ca(
                &base,
                &checksum,
                self.inner.request_timeout,
                self.inner.transport.retry.clone(),
            )
            .await?;
            pinned.insert(checksum, pem.clone());
            Ok(pem)
        })
        .await
    }

    /// Fails unless the token may list clusters: `serve` calls it before creating anything.
    pub async fn check_access(&self) -> Result<(), RancherError> {
        self.clusters_named("scale-cluster-agent-access-check")
            .await
            .map(drop)
    }

    /// Requests sent to Rancher so far, by method.
    pub fn request_counts(&self) -> Vec<(&'static str, u64)> {
        self.inner.requests.snapshot()
    }

    /// Returns this agent's imported cluster named `name`, creating it (`POST /v3/clusters` with
    /// `importedConfig` and the [`INSTANCE_LABEL`] of `instance`) only when no live cluster has
    /// that name. A live cluster of that name without this instance's label is
    /// [`RancherError::NotOwned`], never adopted. Safe to call again after any failure or restart:
    /// a create that Rancher refuses because the name now exists is answered by looking the
    /// cluster up again, so a crash between the create and storing its id finds the same cluster.
    pub async fn ensure_imported_cluster(
        &self,
        name: &str,
        instance: &str,
    ) -> Result<RancherCluster, RancherError> {
        if name.trim().is_empty() {
            return Err(RancherError::Invalid {
                path: "/v3/clusters".into(),
                status: 422,
                code: "MissingRequired".into(),
                message: "cluster name is empty".into(),
            });
        }
        let lock = self.name_lock(name);
        let result = {
            let _guard = lock.lock().await;
            self.find_or_create(name, instance).await
        };
        self.release_name_lock(name, lock);
        result
    }

    async fn find_or_create(
        &self,
        name: &str,
        instance: &str,
    ) -> Result<RancherCluster, RancherError> {
        if let Some(cluster) = self.find_owned(name, instance).await? {
            return Ok(cluster);
        }
        let body = serde_json::json!({
            "type": "cluster",
            "name": name,
            "importedConfig": {},
            "labels": {INSTANCE_LABEL: instance},
        });
        match self
            .request_json::<ClusterResource>(
                Method::POST,
                "/v3/clusters",
                "/v3/clusters",
                &[],
                Some(&body),
            )
            .await
        {
            Ok(created) => {
                tracing::info!(cluster = %created.id, name, "created imported cluster in Rancher");
                Ok(created.into())
            }
            Err(conflict @ RancherError::Conflict { .. }) => {
                // Someone else (or an earlier attempt of this request) created it first.
                match self.find_owned(name, instance).await? {
                    Some(cluster) => Ok(cluster),
                    None => Err(conflict),
                }
            }
            Err(other) => Err(other),
        }
    }

    /// This instance's live cluster named `name`; a live cluster of that name that is not ours is
    /// [`RancherError::NotOwned`].
    pub async fn find_owned(
        &self,
        name: &str,
        instance: &str,
    ) -> Result<Option<RancherCluster>, RancherError> {
        let matching = self.clusters_named(name).await?;
        if let Some(ours) = matching.iter().find(|c| c.owner() == Some(instance)) {
            return Ok(Some(ours.clone()));
        }
        match matching.into_iter().next() {
            Some(foreign) => Err(not_owned(foreign, instance)),
            None => Ok(None),
        }
    }

    fn name_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .inner
            .creating
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        locks.entry(name.to_owned()).or_default().clone()
    }

    fn release_name_lock(&self, name: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut locks = self
            .inner
            .creating
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The map and `lock` are the only holders: nobody else waits on this name.
        if Arc::strong_count(&lock) == 2 {
            locks.remove(name);
        }
    }

    /// The live (not being removed) clusters with this name, oldest first. Rancher compares names
    /// case-insensitively, and its uniqueness check can race, so there may be several.
    async fn clusters_named(&self, name: &str) -> Result<Vec<RancherCluster>, RancherError> {
        let clusters: Collection<ClusterResource> = self
            .request_json(
                Method::GET,
                "/v3/clusters",
                "/v3/clusters",
                &[("name", name)],
                None,
            )
            .await?;
        let mut matching: Vec<ClusterResource> = clusters
            .data
            .into_iter()
            .filter(|c| c.name.eq_ignore_ascii_case(name) && !c.is_removing())
            .collect();
        if matching.len() > 1 {
            tracing::warn!(
                name,
                count = matching.len(),
                "Rancher has several clusters with this name"
            );
        }
        matching.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
        Ok(matching.into_iter().map(Into::into).collect())
    }

    /// Every cluster the token can see, following `pagination.next` links: one request per page
    /// however many clusters the agent watches.
    pub async fn list_clusters(&self) -> Result<Vec<RancherCluster>, RancherError> {
        let mut clusters = Vec::new();
        let mut page: Collection<ClusterResource> = self
            .request_json(Method::GET, "/v3/clusters", "/v3/clusters", &[], None)
            .await?;
        loop {
            clusters.extend(page.data.into_iter().map(RancherCluster::from));
            let Some(next) = page.pagination.and_then(|p| p.next) else {
                return Ok(clusters);
            };
            let (path, query) = self.same_origin_path(&next)?;
            let query: Vec<(&str, &str)> = query
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            page = self
                .request_json(Method::GET, &path, "/v3/clusters", &query, None)
                .await?;
        }
    }

    /// The path and query of a link Rancher returned, refusing links to another server (the API
    /// token is only ever sent to the configured Rancher).
    fn same_origin_path(
        &self,
        link: &str,
    ) -> Result<(String, Vec<(String, String)>), RancherError> {
        let base = reqwest::Url::parse(&self.inner.transport.base);
        let url = reqwest::Url::parse(link);
        match (base, url) {
            (Ok(base), Ok(url)) if base.origin() == url.origin() => Ok((
                url.path().to_string(),
                url.query_pairs()
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect(),
            )),
            _ => Err(RancherError::Decode {
                path: "/v3/clusters".into(),
                reason: format!("pagination link {link:?} does not point at this Rancher"),
            }),
        }
    }

    /// The cluster with this id, `None` if Rancher answers 404. One 404 does not prove the
    /// cluster is gone (a proxy or a token with fewer rights answers the same): callers confirm.
    pub async fn cluster(&self, id: &str) -> Result<Option<RancherCluster>, RancherError> {
        let path = cluster_path(id)?;
        match self
            .request_json::<ClusterResource>(Method::GET, &path, &path, &[], None)
            .await
        {
            Ok(cluster) => Ok(Some(cluster.into())),
            Err(RancherError::NotFound { .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// Like [`RancherClient::cluster`], but a cluster without this instance's label is
    /// [`RancherError::NotOwned`].
    pub async fn owned_cluster(
        &self,
        id: &str,
        instance: &str,
    ) -> Result<Option<RancherCluster>, RancherError> {
        match self.cluster(id).await? {
            Some(cluster) if cluster.owner() != Some(instance) => Err(not_owned(cluster, instance)),
            other => Ok(other),
        }
    }

    /// Deletes the cluster if it is this instance's; already gone counts as done, and a cluster
    /// that is not ours is [`RancherError::NotOwned`] and left alone.
    pub async fn delete_owned_cluster(&self, id: &str, instance: &str) -> Result<(), RancherError> {
        if self.owned_cluster(id, instance).await?.is_none() {
            return Ok(());
        }
        let path = cluster_path(id)?;
        match self
            .request(Method::DELETE, &path, &path, &[], None, true)
            .await
        {
            Ok(_) | Err(RancherError::NotFound { .. }) => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// Waits for the cluster's registration token, then reads the agent's inputs from the import
    /// manifest. 404 if the cluster does not exist; [`RancherError::Timeout`] if no token appears
    /// within the configured registration timeout.
    pub async fn registration(&self, cluster_id: &str) -> Result<Registration, RancherError> {
        if self.cluster(cluster_id).await?.is_none() {
            return Err(RancherError::NotFound {
                what: format!("cluster {cluster_id}"),
            });
        }
        let token = self.wait_for_token(cluster_id).await?;
        let transport = &self.inner.transport;
        let path = format!("/v3/import/{token}_{cluster_id}.yaml");
        let label = format!("/v3/import/<token>_{cluster_id}.yaml");
        let yaml = self
            .request(Method::GET, &path, &label, &[], None, false)
            .await?;
        let yaml = String::from_utf8(yaml).map_err(|_| RancherError::Manifest {
            cluster_id: cluster_id.to_owned(),
            reason: "not UTF-8".into(),
        })?;
        let manifest = ImportManifest::parse(&yaml).map_err(|reason| RancherError::Manifest {
            cluster_id: cluster_id.to_owned(),
            reason,
        })?;
        if manifest
            .credentials_token
            .as_deref()
            .is_some_and(|t| t != token)
        {
            return Err(RancherError::Manifest {
                cluster_id: cluster_id.to_owned(),
                reason: "the cattle-credentials token differs from the registration token".into(),
            });
        }
        Ok(Registration {
            cluster_id: cluster_id.to_owned(),
            import_url: format!("{}{path}", transport.base),
            token: RegistrationToken::new(token),
            server_url: manifest.server_url,
            ca_checksum: manifest.ca_checksum,
            strict_verify: manifest.strict_verify,
        })
    }

    async fn wait_for_token(&self, cluster_id: &str) -> Result<String, RancherError> {
        let timeout = self.inner.registration_timeout;
        let deadline = Instant::now() + timeout;
        // Rancher creates the token within a second or two; poll soon, then less often.
        let poll = Backoff {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(2),
        };
        let mut attempt: u32 = 0;
        loop {
            let tokens: Collection<TokenResource> = self
                .request_json(
                    Method::GET,
                    "/v3/clusterregistrationtokens",
                    "/v3/clusterregistrationtokens",
                    &[("clusterId", cluster_id)],
                    None,
                )
                .await?;
            let usable = tokens
                .data
                .iter()
                .filter(|t| t.value().is_some())
                .min_by_key(|t| t.name != DEFAULT_TOKEN_NAME);
            if let Some(value) = usable.and_then(TokenResource::value) {
                return Ok(value.to_owned());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RancherError::Timeout {
                    what: format!("registration token of cluster {cluster_id}"),
                    after: timeout,
                });
            }
            tokio::time::sleep(poll.delay(attempt).min(deadline - now)).await;
            attempt = attempt.saturating_add(1);
        }
    }

    /// The `cacerts` setting (the PEM Rancher's agents pin), over this client's verified TLS.
    pub async fn ca_certs(&self) -> Result<String, RancherError> {
        self.inner.transport.ca_certs().await
    }

    async fn request_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        label: &str,
        query: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> Result<T, RancherError> {
        let bytes = self.request(method, path, label, query, body, true).await?;
        decode(&bytes, label)
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        label: &str,
        query: &[(&str, &str)],
        body: Option<&serde_json::Value>,
        authenticated: bool,
    ) -> Result<Vec<u8>, RancherError> {
        let token = authenticated.then_some(&self.inner.token);
        self.inner.requests.count(&method);
        self.inner
            .transport
            .send(method, path, label, query, body, token)
            .await
    }
}

/// The HTTP side: one base URL, one reqwest client, retries.
struct Transport {
    base: String,
    http: reqwest::Client,
    retry: RetryPolicy,
}

impl Transport {
    async fn ca_certs(&self) -> Result<String, RancherError> {
        let path = "/v3/settings/cacerts";
        let bytes = self.send(Method::GET, path, path, &[], None, None).await?;
        let setting: Setting = decode(&bytes, path)?;
        if setting.value.trim().is_empty() {
            return Err(RancherError::InvalidCaCert {
                origin: path.into(),
                reason:
                    "the cacerts setting is empty (Rancher uses a publicly trusted certificate)"
                        .into(),
            });
        }
        Ok(setting.value)
    }

    /// Sends one request, retrying timeouts, connection errors and 5xx with backoff, and maps
    /// the final answer's status to a result. `label` is the path as it may appear in errors and
    /// logs (with any token removed).
    async fn send(
        &self,
        method: Method,
        path: &str,
        label: &str,
        query: &[(&str, &str)],
        body: Option<&serde_json::Value>,
        token: Option<&ApiToken>,
    ) -> Result<Vec<u8>, RancherError> {
        let url = format!("{}{path}", self.base);
        let attempts = self.retry.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self.http.request(method.clone(), &url).query(query);
            if let Some(token) = token {
                request = request.bearer_auth(token.expose());
            }
            if let Some(body) = body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.to_string());
            }
            tracing::debug!(%method, path = label, attempt, "Rancher request");
            let limit = body_limit(path);
            let outcome = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    match read_body(response, limit).await {
                        Ok(Some(body)) => Ok((status, body)),
                        Ok(None) => {
                            return Err(RancherError::BodyTooLarge {
                                path: label.to_owned(),
                                limit,
                            })
                        }
                        Err(error) => Err(error),
                    }
                }
                Err(error) => Err(error),
            };
            match outcome {
                Ok((status, _)) if status.is_server_error() && attempt < attempts => {
                    tracing::debug!(path = label, %status, attempt, "Rancher server error, retrying");
                }
                Ok((status, body)) => return check(status, body, label, attempt),
                Err(error) => {
                    if let Some(reason) = tls::certificate_error(&error) {
                        return Err(RancherError::UntrustedCertificate {
                            url: self.base.clone(),
                            reason,
                        });
                    }
                    if error.is_builder() || attempt >= attempts {
                        return Err(RancherError::Unreachable {
                            url: self.base.clone(),
                            attempts: attempt,
                            source: error.without_url(),
                        });
                    }
                    tracing::debug!(path = label, attempt, error = %error.without_url(), "Rancher request failed, retrying");
                }
            }
            tokio::time::sleep(self.retry.delay(attempt)).await;
        }
    }
}

/// Most of one JSON (or manifest) answer read. v3 collections come in pages of 1,000 by
/// default (up to 10,000 with `limit`); a v3 cluster object with its links, actions and ~20
/// conditions is roughly 5–12 KiB, so even 5,000 clusters in one answer fit, while a broken or
/// hostile server cannot make one request hold more than this.
const BODY_LIMIT: usize = 64 << 20;
/// Most of a `cacerts` answer read: a CA bundle is a few KiB, and during checksum pinning the
/// answer comes from a server not yet trusted.
const CACERTS_BODY_LIMIT: usize = 1 << 20;

fn body_limit(path: &str) -> usize {
    if path == "/v3/settings/cacerts" {
        CACERTS_BODY_LIMIT
    } else {
        BODY_LIMIT
    }
}

/// Reads the whole body unless it is longer than `limit` (then `None`, as soon as that is
/// known from `Content-Length` or from the bytes read so far).
async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// Maps a final HTTP answer to the body or a specific error.
fn check(
    status: StatusCode,
    body: Vec<u8>,
    label: &str,
    attempts: u32,
) -> Result<Vec<u8>, RancherError> {
    if status.is_success() {
        return Ok(body);
    }
    let parsed: ErrorBody = serde_json::from_slice(&body).unwrap_or_default();
    let message = if parsed.code.is_empty() && parsed.message.is_empty() {
        String::from_utf8_lossy(&body[..body.len().min(300)])
            .trim()
            .to_owned()
    } else {
        [parsed.message.as_str(), parsed.field_name.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let path = label.to_owned();
    Err(match status {
        StatusCode::UNAUTHORIZED => RancherError::Unauthorized { path, message },
        StatusCode::FORBIDDEN => RancherError::Forbidden { path, message },
        StatusCode::NOT_FOUND => RancherError::NotFound {
            what: if message.is_empty() { path } else { message },
        },
        StatusCode::CONFLICT => RancherError::Conflict {
            path,
            code: parsed.code,
            message,
        },
        StatusCode::UNPROCESSABLE_ENTITY
            if matches!(
                parsed.code.as_str(),
                "NotUnique" | "Conflict" | "AlreadyExists"
            ) =>
        {
            RancherError::Conflict {
                path,
                code: parsed.code,
                message,
            }
        }
        s if s.is_server_error() => RancherError::Server {
            path,
            status: s.as_u16(),
            attempts,
            message,
        },
        s => RancherError::Invalid {
            path,
            status: s.as_u16(),
            code: parsed.code,
            message,
        },
    })
}

fn decode<T: DeserializeOwned>(body: &[u8], label: &str) -> Result<T, RancherError> {
    serde_json::from_slice(body).map_err(|e| RancherError::Decode {
        path: label.to_owned(),
        reason: e.to_string(),
    })
}

fn parse_base_url(url: &str) -> Result<String, RancherError> {
    let invalid = |reason: &str| RancherError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| invalid(&e.to_string()))?;
    if parsed.scheme() != "https" {
        return Err(invalid("Rancher is only reachable over https"));
    }
    if parsed.host_str().is_none() {
        return Err(invalid("no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid("must not have a query or fragment"));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

/// `https://host[:port]` of `CATTLE_SERVER`: where the tunnels connect, and so where the real
/// agent reads the `cacerts` it pins.
fn server_origin(server_url: &str) -> Result<String, RancherError> {
    let invalid = |reason: &str| RancherError::InvalidUrl {
        url: server_url.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = reqwest::Url::parse(server_url.trim()).map_err(|e| invalid(&e.to_string()))?;
    if parsed.scheme() != "https" || parsed.host_str().is_none() {
        return Err(invalid(
            "the tunnels need an https://host[:port] server URL",
        ));
    }
    Ok(parsed.origin().ascii_serialization())
}

fn not_owned(cluster: RancherCluster, instance: &str) -> RancherError {
    RancherError::NotOwned {
        owner: cluster.owner().map(str::to_owned),
        name: cluster.name,
        id: cluster.id,
        instance: instance.to_owned(),
    }
}

/// `/v3/clusters/<id>`, refusing ids that would leave that path.
fn cluster_path(id: &str) -> Result<String, RancherError> {
    let valid = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !valid {
        return Err(RancherError::NotFound {
            what: format!("cluster {id:?} (not a valid cluster id)"),
        });
    }
    Ok(format!("/v3/clusters/{id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_must_be_https_and_loses_trailing_slash() {
        assert_eq!(
            parse_base_url("https://rancher.example.com/").expect("valid"),
            "https://rancher.example.com"
        );
        assert!(matches!(
            parse_base_url("http://rancher"),
            Err(RancherError::InvalidUrl { .. })
        ));
        assert!(parse_base_url("rancher.example.com").is_err());
    }

    #[test]
    fn status_mapping() {
        let body = |s: &str| s.as_bytes().to_vec();
        let unauthorized = check(
            StatusCode::UNAUTHORIZED,
            body(r#"{"type":"error","status":"401","message":"must authenticate"}"#),
            "/v3/clusters",
            1,
        );
        assert!(
            matches!(unauthorized, Err(RancherError::Unauthorized { ref message, .. }) if message == "must authenticate")
        );
        let not_unique = check(
            StatusCode::UNPROCESSABLE_ENTITY,
            body(r#"{"type":"error","status":422,"code":"NotUnique","fieldName":"Cluster name"}"#),
            "/v3/clusters",
            1,
        );
        assert!(
            matches!(not_unique, Err(RancherError::Conflict { ref code, .. }) if code == "NotUnique")
        );
        let missing = check(
            StatusCode::UNPROCESSABLE_ENTITY,
            body(r#"{"code":"MissingRequired","fieldName":"name"}"#),
            "/v3/clusters",
            1,
        );
        assert!(matches!(
            missing,
            Err(RancherError::Invalid { status: 422, .. })
        ));
        assert!(matches!(
            check(StatusCode::FORBIDDEN, body("{}"), "/x", 1),
            Err(RancherError::Forbidden { .. })
        ));
        assert!(matches!(
            check(StatusCode::NOT_FOUND, body("{}"), "/x", 1),
            Err(RancherError::NotFound { .. })
        ));
        assert!(matches!(
            check(StatusCode::BAD_GATEWAY, body("upstream down"), "/x", 3),
            Err(RancherError::Server { status: 502, attempts: 3, ref message, .. }) if message == "upstream down"
        ));
    }

    #[test]
    fn cacerts_are_read_from_the_origin_of_cattle_server() {
        assert_eq!(
            server_origin("https://rancher.example:8443/some/path").expect("valid"),
            "https://rancher.example:8443"
        );
        assert!(server_origin("http://rancher.example").is_err());
    }

    #[test]
    fn cluster_ids_cannot_escape_the_path() {
        assert_eq!(
            cluster_path("c-abcde").expect("valid"),
            "/v3/clusters/c-abcde"
        );
        for bad in ["", "../settings", "c-a/b", "c?x"] {
            assert!(cluster_path(bad).is_err(), "{bad:?}");
        }
    }
}

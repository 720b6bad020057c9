//! The Rancher management-API client against the real rancher-sim test peer
//! (tests/rancher-sim): find-or-create, registration tokens in both Rancher styles, the import
//! manifest, TLS trust modes, error variants, retries and deletion. A local HTTPS server with an
//! endless body checks that answers are read only up to a size cap.

mod support;

use std::time::{Duration, Instant};

use scale_cluster_agent::rancher::{
    ca_checksum, ApiToken, Backoff, RancherClient, RancherConfig, RancherError, Registration,
    RetryPolicy, TlsMode, INSTANCE_LABEL,
};
use support::eventually;
use support::rancher_sim::{self, RancherSim, SimOptions};

/// The agent instance the clusters of these tests belong to.
const INSTANCE: &str = "test-instance";

fn sim() -> RancherSim {
    rancher_sim::start(SimOptions::default())
}

/// How many clusters the sim holds with this name (raw API, not the client under test).
async fn clusters_named(sim: &RancherSim, name: &str) -> Vec<String> {
    let all = sim.get_v3("clusters").await;
    all["data"]
        .as_array()
        .expect("data array")
        .iter()
        .filter(|c| c["name"] == name)
        .map(|c| c["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn find_or_create_is_idempotent_sequentially_and_concurrently() {
    let sim = sim();
    let client = sim.client().await;

    let first = client
        .ensure_imported_cluster("sim-00001", INSTANCE)
        .await
        .expect("create");
    assert!(first.id.starts_with("c-"), "{first:?}");
    assert_eq!(first.name, "sim-00001");
    assert_eq!(first.state, "pending");
    let again = client
        .ensure_imported_cluster("sim-00001", INSTANCE)
        .await
        .expect("find");
    assert_eq!(again.id, first.id);

    // Ten concurrent callers: five share one client (its per-name lock), five use their own
    // clients, so Rancher's NotUnique answer and the look-up-again path are exercised too.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let client = if i % 2 == 0 {
            client.clone()
        } else {
            sim.client().await
        };
        tasks.push(tokio::spawn(async move {
            client.ensure_imported_cluster("sim-00002", INSTANCE).await
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.expect("task").expect("ensure").id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1, "all callers got the same cluster: {ids:?}");
    assert_eq!(clusters_named(&sim, "sim-00002").await, ids);
    assert_eq!(clusters_named(&sim, "sim-00001").await, vec![first.id]);
}

#[tokio::test]
async fn registration_reads_token_and_manifest_fields() {
    let sim = sim();
    let client = sim.client().await;
    let cluster = client
        .ensure_imported_cluster("reg-1", INSTANCE)
        .await
        .expect("create");

    let registration = client
        .registration(&cluster.id)
        .await
        .expect("registration");
    let token = registration.token.expose().to_owned();
    assert_eq!(token.len(), 54, "Rancher-style 54-character token");
    assert_eq!(registration.cluster_id, cluster.id);
    assert_eq!(
        registration.import_url,
        format!("{}/v3/import/{token}_{}.yaml", sim.url, cluster.id)
    );
    assert_eq!(registration.server_url, sim.url);
    assert_eq!(
        registration.ca_checksum.as_deref(),
        Some(sim.ca_checksum.as_str())
    );
    assert!(registration.strict_verify);

    // The token is the one the API lists for the cluster's default-token.
    let tokens = sim
        .get_v3(&format!(
            "clusterregistrationtokens?clusterId={}",
            cluster.id
        ))
        .await;
    let default = tokens["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|t| t["name"] == "default-token")
        .expect("default-token");
    assert_eq!(default["token"], token.as_str());
    assert!(!format!("{registration:?}").contains(&token));
}

/// 2.8–2.12 expose status.token directly; 2.13+ first show tokenSecretName with a "{token}"
/// placeholder and only later the value. With a long token delay the client must wait in both.
#[tokio::test]
async fn registration_token_in_both_rancher_styles() {
    for (version, tls_mode, strict, in_secret) in [
        ("v2.8.9", "system-store", false, false),
        ("v2.12.3", "strict", true, false),
        ("v2.13.1", "strict", true, true),
    ] {
        let sim = rancher_sim::start(SimOptions {
            rancher_version: version.into(),
            token_delay: Duration::from_millis(1500),
            agent_tls_mode: tls_mode.into(),
            ..SimOptions::default()
        });
        let client = sim.client().await;
        let cluster = client
            .ensure_imported_cluster("styles", INSTANCE)
            .await
            .expect("create");
        let started = Instant::now();
        let registration = client.registration(&cluster.id).await.expect(version);
        assert!(
            started.elapsed() >= Duration::from_millis(1000),
            "{version}: the token cannot be ready before the delay"
        );
        let token = registration.token.expose();
        assert!(!token.contains('{') && token.len() == 54, "{version}");
        assert_eq!(registration.strict_verify, strict, "{version}");
        assert_eq!(
            registration.ca_checksum.as_deref(),
            Some(sim.ca_checksum.as_str())
        );

        let listed = sim
            .get_v3(&format!(
                "clusterregistrationtokens?clusterId={}",
                cluster.id
            ))
            .await;
        let has_secret_name = listed["data"][0].get("tokenSecretName").is_some();
        assert_eq!(has_secret_name, in_secret, "{version}: token style");
    }
}

#[tokio::test]
async fn ca_checksum_pin_accepts_the_right_ca_and_rejects_a_mismatch() {
    let sim = sim();
    assert_eq!(ca_checksum(sim.ca_pem.trim_end()), sim.ca_checksum);

    let mut config = sim.config();
    config.tls = TlsMode::CaChecksum(sim.ca_checksum.to_uppercase());
    let pinned = RancherClient::new(config).await.expect("matching checksum");
    let cluster = pinned
        .ensure_imported_cluster("pinned", INSTANCE)
        .await
        .expect("works");
    assert_eq!(
        pinned.ca_certs().await.expect("cacerts"),
        sim.ca_pem.trim_end()
    );
    assert!(pinned.cluster(&cluster.id).await.expect("read").is_some());

    let mut config = sim.config();
    let wrong = "0".repeat(64);
    config.tls = TlsMode::CaChecksum(wrong.clone());
    match RancherClient::new(config).await {
        Err(RancherError::CaChecksumMismatch { expected, actual }) => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, sim.ca_checksum);
        }
        other => panic!("expected CaChecksumMismatch, got {other:?}"),
    }
}

/// A registration of a fresh cluster in `sim` (its manifest carries the sim's CA checksum).
async fn a_registration(sim: &RancherSim, name: &str) -> Registration {
    let client = sim.client().await;
    let cluster = client
        .ensure_imported_cluster(name, INSTANCE)
        .await
        .expect("create");
    client
        .registration(&cluster.id)
        .await
        .expect("registration")
}

#[tokio::test]
async fn tunnels_trust_what_the_client_trusts_or_the_manifest_pins() {
    let sim = sim();
    let registration = a_registration(&sim, "tunnel-trust").await;
    let ca_pem = sim.ca_pem.trim_end();
    let client = |tls: TlsMode| {
        let mut config = sim.config();
        config.tls = tls;
        RancherClient::new(config)
    };

    // The configured pin: the CA verified at start, strictly (only that CA).
    let pinned = client(TlsMode::CaChecksum(sim.ca_checksum.clone()))
        .await
        .expect("pinned client");
    match pinned.tunnel_tls(&registration).await.expect("tunnel tls") {
        remotedialer::TlsMode::CaBundle {
            pem,
            also_webpki_roots: false,
        } => assert_eq!(pem, ca_pem),
        other => panic!("expected the pinned CA alone, got {other:?}"),
    }

    // Publicly trusted API, but the manifest pins a CA: fetched from CATTLE_SERVER and checked,
    // strict as STRICT_VERIFY says.
    let public = client(TlsMode::PublicRoots).await.expect("public client");
    for strict in [true, false] {
        let registration = Registration {
            strict_verify: strict,
            ..registration.clone()
        };
        match public.tunnel_tls(&registration).await.expect("tunnel tls") {
            remotedialer::TlsMode::CaBundle {
                pem,
                also_webpki_roots,
            } => {
                assert_eq!(pem, ca_pem);
                assert_eq!(also_webpki_roots, !strict);
            }
            other => panic!("expected the manifest's CA, got {other:?}"),
        }
    }
    let wrong = Registration {
        ca_checksum: Some("ab".repeat(32)),
        ..registration.clone()
    };
    match public.tunnel_tls(&wrong).await {
        Err(RancherError::CaChecksumMismatch { expected, actual }) => {
            assert_eq!(expected, "ab".repeat(32));
            assert_eq!(actual, sim.ca_checksum);
        }
        other => panic!("expected CaChecksumMismatch, got {other:?}"),
    }
    let unpinned = Registration {
        ca_checksum: None,
        ..registration.clone()
    };
    assert!(matches!(
        public.tunnel_tls(&unpinned).await,
        Ok(remotedialer::TlsMode::WebpkiRoots)
    ));

    // A CA file and insecure mode apply to the tunnels as they are.
    let ca_file = sim.config().tls;
    let TlsMode::CaFile(path) = &ca_file else {
        panic!("the sim's default trust is its CA file, not {ca_file:?}");
    };
    let with_file = client(ca_file.clone()).await.expect("CA file client");
    assert!(matches!(
        with_file.tunnel_tls(&registration).await,
        Ok(remotedialer::TlsMode::CaBundleFile(ref p)) if p == path
    ));
    let insecure = client(TlsMode::Insecure).await.expect("insecure client");
    assert!(matches!(
        insecure.tunnel_tls(&registration).await,
        Ok(remotedialer::TlsMode::InsecureSkipVerify)
    ));

    // The manifest's CATTLE_SERVER is not trusted yet: an endless `cacerts` answer is cut off at
    // the cap.
    let (port, sent) = spawn_endless_https();
    let endless = Registration {
        server_url: format!("https://127.0.0.1:{port}"),
        ca_checksum: Some("cd".repeat(32)),
        ..registration
    };
    match public.tunnel_tls(&endless).await {
        Err(
            error @ RancherError::BodyTooLarge {
                limit: 1_048_576, ..
            },
        ) => {
            assert!(
                error.to_string().contains("/v3/settings/cacerts"),
                "{error}"
            );
        }
        other => panic!("expected BodyTooLarge for cacerts, got {other:?}"),
    }
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent < 16 << 20, "the server sent {sent} bytes");
}

#[tokio::test]
async fn tls_is_verified_unless_insecure_is_chosen() {
    let sim = sim();
    let mut config = sim.config();
    config.tls = TlsMode::PublicRoots;
    let public = RancherClient::new(config).await.expect("client");
    match public.check_access().await {
        Err(RancherError::UntrustedCertificate { url, reason }) => {
            assert_eq!(url, sim.url);
            assert!(reason.contains("UnknownIssuer"), "{reason}");
        }
        other => panic!("expected UntrustedCertificate, got {other:?}"),
    }

    let mut config = sim.config();
    config.tls = TlsMode::Insecure;
    let insecure = RancherClient::new(config).await.expect("client");
    assert!(insecure
        .find_owned("x", INSTANCE)
        .await
        .expect("unverified works")
        .is_none());
}

#[tokio::test]
async fn wrong_token_is_unauthorized_and_never_printed() {
    let sim = sim();
    let secret = "wrongsecretvalue0123456789";
    let mut config = sim.config();
    config.token = ApiToken::new(format!("token-simtst:{secret}")).expect("token form");
    let client = RancherClient::new(config).await.expect("client");
    let error = client
        .ensure_imported_cluster("nope", INSTANCE)
        .await
        .expect_err("401");
    assert!(
        matches!(&error, RancherError::Unauthorized { message, .. } if message == "must authenticate"),
        "{error:?}"
    );
    let shown = format!("{error} {error:?} {client:?}");
    assert!(shown.contains("check that the token"), "{shown}");
    assert!(
        !shown.contains(secret) && !shown.contains("token-simtst"),
        "{shown}"
    );
    assert!(clusters_named(&sim, "nope").await.is_empty());
}

#[tokio::test]
async fn unreachable_rancher_fails_clearly_after_bounded_retries() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut config = RancherConfig::new(
        format!("https://127.0.0.1:{port}"),
        ApiToken::new(rancher_sim::API_TOKEN).expect("token"),
        TlsMode::Insecure,
    );
    config.retry = RetryPolicy {
        max_attempts: 3,
        backoff: Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(100),
        },
    };
    let client = RancherClient::new(config).await.expect("client");
    let started = Instant::now();
    match client.ensure_imported_cluster("x", INSTANCE).await {
        Err(error @ RancherError::Unreachable { attempts: 3, .. }) => {
            assert!(
                error.to_string().contains(&format!("127.0.0.1:{port}")),
                "{error}"
            );
        }
        other => panic!("expected Unreachable after 3 attempts, got {other:?}"),
    }
    // The delays are fully jittered (no lower bound to check here; the policy's own tests check
    // its range); the cap bounds the whole.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn delete_removes_the_cluster_and_frees_its_name() {
    let sim = sim();
    let client = sim.client().await;
    let cluster = client
        .ensure_imported_cluster("doomed", INSTANCE)
        .await
        .expect("create");
    client
        .delete_owned_cluster(&cluster.id, INSTANCE)
        .await
        .expect("delete");
    // While Rancher finishes the removal the old cluster no longer owns the name.
    let replacement = client
        .ensure_imported_cluster("doomed", INSTANCE)
        .await
        .expect("recreate");
    assert_ne!(replacement.id, cluster.id);
    eventually(Duration::from_secs(10), "cluster removed", || async {
        client
            .cluster(&cluster.id)
            .await
            .expect("read")
            .is_none()
            .then_some(())
    })
    .await;
    assert_eq!(clusters_named(&sim, "doomed").await, vec![replacement.id]);
    // Deleting again is not an error; registration of a deleted cluster is NotFound.
    client
        .delete_owned_cluster(&cluster.id, INSTANCE)
        .await
        .expect("idempotent delete");
    assert!(matches!(
        client.registration(&cluster.id).await,
        Err(RancherError::NotFound { .. })
    ));
}

#[tokio::test]
async fn clusters_and_tokens_survive_a_rancher_restart() {
    let mut sim = sim();
    let client = sim.client().await;
    let cluster = client
        .ensure_imported_cluster("durable", INSTANCE)
        .await
        .expect("create");
    let before = client
        .registration(&cluster.id)
        .await
        .expect("registration");
    sim.restart();
    let after_client = sim.client().await;
    let found = after_client
        .ensure_imported_cluster("durable", INSTANCE)
        .await
        .expect("find after restart");
    assert_eq!(found.id, cluster.id);
    let after = after_client.registration(&cluster.id).await.expect("again");
    assert_eq!(after.token, before.token);
    assert_eq!(after.ca_checksum, before.ca_checksum);
}

#[tokio::test]
async fn only_clusters_carrying_this_instance_are_adopted_or_deleted() {
    let sim = sim();
    let client = sim.client().await;
    let ours = client
        .ensure_imported_cluster("mine", INSTANCE)
        .await
        .expect("create");
    let raw = sim.get_v3(&format!("clusters/{}", ours.id)).await;
    assert_eq!(raw["labels"][INSTANCE_LABEL], INSTANCE, "{raw}");

    // A real cluster someone imported by hand, and another agent's cluster, with clashing names.
    let foreign = sim.create_cluster("prod-east", None).await;
    let other_agents = sim.create_cluster("sim-00001", Some("other-agent")).await;
    for (name, id, owner) in [
        ("prod-east", &foreign, None),
        ("sim-00001", &other_agents, Some("other-agent")),
    ] {
        match client.ensure_imported_cluster(name, INSTANCE).await {
            Err(RancherError::NotOwned {
                id: got,
                owner: got_owner,
                ..
            }) => {
                assert_eq!(&got, id);
                assert_eq!(got_owner.as_deref(), owner);
            }
            other => panic!("{name}: expected NotOwned, got {other:?}"),
        }
        assert!(matches!(
            client.owned_cluster(id, INSTANCE).await,
            Err(RancherError::NotOwned { .. })
        ));
        assert!(matches!(
            client.delete_owned_cluster(id, INSTANCE).await,
            Err(RancherError::NotOwned { .. })
        ));
        let error = client
            .find_owned(name, INSTANCE)
            .await
            .expect_err("not ours");
        assert!(error.to_string().contains("not this agent's"), "{error}");
        assert_eq!(clusters_named(&sim, name).await, vec![id.clone()]);
        assert!(sim.get_v3(&format!("clusters/{id}")).await["removed"].is_null());
    }
    // The other agent's instance sees its own cluster as its own.
    let theirs = client
        .ensure_imported_cluster("sim-00001", "other-agent")
        .await
        .expect("the other agent adopts its own");
    assert_eq!(theirs.id, other_agents);

    let listed = client.list_clusters().await.expect("list");
    let mut owners: Vec<(String, Option<String>)> = listed
        .iter()
        .map(|c| (c.name.clone(), c.owner().map(str::to_owned)))
        .collect();
    owners.sort();
    assert_eq!(
        owners,
        [
            ("mine".to_string(), Some(INSTANCE.to_string())),
            ("prod-east".to_string(), None),
            ("sim-00001".to_string(), Some("other-agent".to_string())),
        ]
    );
    let counts = client.request_counts();
    assert!(
        counts.iter().any(|(m, n)| *m == "GET" && *n > 0),
        "{counts:?}"
    );
}

/// Throwaway self-signed certificate for 127.0.0.1, used only by the oversized-answer server.
const TEST_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBkTCCATagAwIBAgIUTqdHpvgQes9JCxS04by+qkVKO/cwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJMTI3LjAuMC4xMCAXDTI2MTIwMTE0NDUwN1oYDzIxMjYxMTA3
MTQ0NTA3WjAUMRIwEAYDVQQDDAkxMjcuMC4wLjEwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAARuPGYibaIEBwZXeyS63u7fhNFBBjXXwDlfMyftF/bPw82FQEZXnp6G
g/R1XdJr0TFcsockZWaYHLsjjn4S97d/o2QwYjAdBgNVHQ4EFgQU0O8CLEEn8aKS
iI0AjRlp3Y0pYZ0wHwYDVR0jBBgwFoAU0O8CLEEn8aKSiI0AjRlp3Y0pYZ0wDwYD
VR0TAQH/BAUwAwEB/zAPBgNVHREECDAGhwR/AAABMAoGCCqGSM49BAMCA0kAMEYC
IQDP+d/w06jervVoh5MBMdf1UHcwIw917cmNHVnAHF0T2AIhAOFIvAR9ZtTxH923
3zw5gkioImXbHfXNohSfpwpLgRiP
-----END CERTIFICATE-----
";
const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgF+/HbYI54DIpyX5H
thivpSmH9kb8F5i47CptvDb+w2+hRANCAARuPGYibaIEBwZXeyS63u7fhNFBBjXX
wDlfMyftF/bPw82FQEZXnp6Gg/R1XdJr0TFcsockZWaYHLsjjn4S97d/
-----END PRIVATE KEY-----
";

/// An HTTPS server that answers every request with 200 and an endless JSON-looking body, and
/// counts the body bytes it managed to send. Plain threads and blocking rustls keep it
/// independent of the client under test.
fn spawn_endless_https() -> (u16, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from_pem_slice(TEST_CERT.as_bytes()).expect("test cert")],
        PrivateKeyDer::from_pem_slice(TEST_KEY.as_bytes()).expect("test key"),
    )
    .expect("server config");
    let config = Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(socket) = socket else { return };
            let (config, counter) = (config.clone(), counter.clone());
            std::thread::spawn(move || {
                let Ok(connection) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(connection, socket);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let start = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                             Connection: close\r\n\r\n{\"data\":[\"";
                if tls.write_all(start.as_bytes()).is_err() {
                    return;
                }
                let block = vec![b'x'; 64 << 10];
                while tls.write_all(&block).is_ok() {
                    counter.fetch_add(block.len() as u64, Ordering::Relaxed);
                }
            });
        }
    });
    (port, sent)
}

#[tokio::test]
async fn endless_answers_are_cut_off_at_the_size_cap() {
    let (port, sent) = spawn_endless_https();
    let config = |tls| {
        let mut config = RancherConfig::new(
            format!("https://127.0.0.1:{port}"),
            ApiToken::new(rancher_sim::API_TOKEN).expect("token"),
            tls,
        );
        config.request_timeout = Duration::from_secs(60);
        config
    };
    let bytes_sent = || sent.load(std::sync::atomic::Ordering::Relaxed);

    // Checksum pinning reads `cacerts` first: capped at 1 MiB.
    let pinned = RancherClient::new(config(TlsMode::CaChecksum("00".repeat(32)))).await;
    match pinned {
        Err(
            error @ RancherError::BodyTooLarge {
                limit: 1_048_576, ..
            },
        ) => {
            assert!(
                error.to_string().contains("/v3/settings/cacerts"),
                "{error}"
            );
        }
        other => panic!("expected BodyTooLarge for cacerts, got {other:?}"),
    }
    let after_cacerts = bytes_sent();

    // JSON answers: capped at 64 MiB, and nothing is retried.
    let client = RancherClient::new(config(TlsMode::Insecure))
        .await
        .expect("client");
    let started = Instant::now();
    match client.check_access().await {
        Err(error @ RancherError::BodyTooLarge { limit, .. }) => {
            assert_eq!(limit, 64 << 20);
            let text = error.to_string();
            assert!(
                text.contains("/v3/clusters") && text.contains("larger than"),
                "{text}"
            );
        }
        other => panic!("expected BodyTooLarge, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    // The server keeps writing until the client hangs up; socket buffers let it get a few MiB
    // past the cap, not a second request's worth.
    // The client did read up to the cap (less the block whose count may lag) before refusing.
    let read_for_json = bytes_sent() - after_cacerts;
    assert!(
        ((64 << 20) - (64 << 10)..(64 << 20) + (16 << 20)).contains(&read_for_json),
        "the server sent {read_for_json} bytes"
    );
    assert!(
        ((1 << 20) - (64 << 10)..16 << 20).contains(&after_cacerts),
        "cacerts: the server sent {after_cacerts} bytes"
    );
}

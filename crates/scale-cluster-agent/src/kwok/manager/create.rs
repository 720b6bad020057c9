//! `create`: reserve a port block, run `kwokctl create cluster`, wait for `/readyz`, populate; roll
//! back everything on failure.
//!
//! A cluster in the shared etcd (`lean`) is created by kwokctl too, with its apiserver pointed at
//! the shared etcd. kwokctl refuses a cluster without its own etcd component ("etcd must be
//! enabled", kwok v0.8.0 `pkg/kwokctl/runtime/cluster.go:436`, checked at install), so it starts
//! a throwaway one; right after the create the agent removes etcd from the cluster's saved
//! component list (`kwok.yaml`, which `kwokctl start/stop cluster` iterate, kwok
//! `runtime/util.go` `ForeachComponents`), kills that etcd and removes its data.

use tokio::time::Instant;

use super::files::{remove_dir, remove_file, write_file};
use super::processes::{kill_component, port_is_free};
use super::{ClusterInfo, ClusterManager, CreateRequest, CreateTimings, KwokError};
use crate::kwok::heal::ETCD;
use crate::kwok::kwokctl::CreateCluster;
use crate::kwok::profile::{ComponentProfile, SharedEtcdPlacement};
use crate::kwok::shared_etcd::etcd_prefix;
use crate::kwok::{endpoints, names, population, status};
use crate::store::ports::PortBlock;
use crate::store::{EtcdKind, NewCluster, Phase};

impl ClusterManager {
    /// Creates, starts, waits for `/readyz` and populates a cluster; on any failure removes every
    /// trace of it (processes, directories, port reservation) and returns the first error.
    pub async fn create(&self, req: CreateRequest) -> Result<ClusterInfo, KwokError> {
        self.create_timed(req).await.map(|(info, _)| info)
    }

    /// [`Self::create`], also reporting how long each step took (for benchmarks and progress).
    pub async fn create_timed(
        &self,
        req: CreateRequest,
    ) -> Result<(ClusterInfo, CreateTimings), KwokError> {
        let started = Instant::now();
        names::validate(&req.name)?;
        req.population
            .validate()
            .map_err(KwokError::InvalidPopulation)?;
        let population_json = serde_json::to_string(&req.population)
            .map_err(|e| KwokError::InvalidPopulation(e.to_string()))?;
        if req.profile.uses_shared_etcd() {
            // Before anything is recorded: a shared etcd that cannot run (its port taken) is a
            // clear error that leaves no row behind, and a rollback can always reach it.
            self.shared_etcd.ensure_running().await?;
        }
        let record = self
            .store
            .reserve(
                NewCluster {
                    name: &req.name,
                    component_profile: req.profile.as_str(),
                    population: &population_json,
                    etcd: if req.profile.uses_shared_etcd() {
                        EtcdKind::Shared
                    } else {
                        EtcdKind::Own
                    },
                },
                self.ports,
                port_is_free,
            )
            .await?;
        let dir = self.cluster_dir(&req.name);
        if dir.exists() {
            self.store.remove(&req.name).await?;
            return Err(KwokError::ForeignClusterDir {
                name: req.name,
                dir,
            });
        }
        match self
            .bring_up(&req, &record.ports, record.etcd, started)
            .await
        {
            Ok(timings) => {
                self.store
                    .set_phase(&req.name, Phase::Running, None)
                    .await?;
                Ok((self.get(&req.name).await?, timings))
            }
            Err(err) => match self.tear_down(&record).await {
                Ok(()) => {
                    self.store.remove(&req.name).await?;
                    Err(err)
                }
                Err(rollback) => {
                    let _ = self
                        .store
                        .set_phase(&req.name, Phase::Failed, Some(err.to_string()))
                        .await;
                    Err(KwokError::RollbackFailed(Box::new(err), Box::new(rollback)))
                }
            },
        }
    }

    async fn bring_up(
        &self,
        req: &CreateRequest,
        ports: &PortBlock,
        etcd: EtcdKind,
        started: Instant,
    ) -> Result<CreateTimings, KwokError> {
        let config = self.config_path(&req.name);
        let placement = match etcd {
            EtcdKind::Own => None,
            EtcdKind::Shared => {
                // A create right after the etcd died: start it again.
                self.shared_etcd.ensure_running().await?;
                Some(SharedEtcdPlacement {
                    client_url: self.shared_etcd.client_url(),
                    prefix: etcd_prefix(&req.name),
                })
            }
        };
        let audit_policy = if self.request_audit {
            // One policy file for all clusters; kwokctl copies it into the cluster dir.
            let path = self.config_dir.join("request-audit-policy.yaml");
            write_file(&path, crate::kwok::profile::REQUEST_AUDIT_POLICY).await?;
            Some(path)
        } else {
            None
        };
        // Only `lean` runs without the endpoint reconciler, where the host has a default route;
        // the address is the one the apiserver would choose itself, fixed in its flags so the
        // endpoints written below agree with it.
        let advertise = if req.profile == ComponentProfile::Lean {
            endpoints::host_address().await
        } else {
            None
        };
        write_file(
            &config,
            &req.profile.kwokctl_config(
                &self.toolchain,
                ports,
                placement.as_ref(),
                audit_policy.as_deref(),
                advertise,
            ),
        )
        .await?;
        self.kwokctl
            .create_cluster(&CreateCluster {
                name: &req.name,
                config: &config,
                ports,
                profile_flags: self.create_flags(req.profile),
            })
            .await?;
        self.attach_controllers(&req.name).await?;
        self.wait_ready(&req.name, ports.kube_apiserver).await?;
        let ready = started.elapsed();
        // The cluster already serves from the shared etcd: this is clean-up, not bring-up.
        if etcd == EtcdKind::Shared {
            self.drop_kwokctl_etcd(&req.name).await?;
        }
        let client = population::client(&self.kubeconfig_path(&req.name)).await?;
        if let Some(address) = advertise {
            endpoints::apply(&client, address, ports.kube_apiserver)
                .await
                .map_err(|source| KwokError::Endpoints {
                    name: req.name.clone(),
                    source,
                })?;
        }
        population::apply(&client, &req.name, &req.population).await?;
        Ok(CreateTimings {
            ready,
            populated: started.elapsed(),
        })
    }
}

impl ClusterManager {
    /// Takes kwokctl's own etcd out of a shared-etcd cluster: first out of its saved component
    /// list (so no later `kwokctl start cluster` starts it again), then the process (if the pid
    /// is still that cluster's etcd) and its data and log.
    async fn drop_kwokctl_etcd(&self, name: &str) -> Result<(), KwokError> {
        let started = Instant::now();
        let dir = self.cluster_dir(name);
        let saved = dir.join("kwok.yaml");
        let detach_err = |reason: String| KwokError::DetachEtcd {
            name: name.to_string(),
            path: saved.clone(),
            reason,
        };
        let text = tokio::fs::read_to_string(&saved)
            .await
            .map_err(|e| detach_err(e.to_string()))?;
        let edited = without_etcd_component(&text).map_err(detach_err)?;
        let tmp = dir.join("kwok.yaml.tmp");
        write_file(&tmp, &edited).await?;
        tokio::fs::rename(&tmp, &saved)
            .await
            .map_err(|e| detach_err(e.to_string()))?;
        let pid_file = status::pid_file(&dir, ETCD);
        let mut cpu_ms = None;
        if let Some(pid) = tokio::fs::read_to_string(&pid_file)
            .await
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        {
            cpu_ms = cpu_ticks(pid).await.map(|t| t * 10);
            kill_component(&dir, ETCD, pid).await;
        }
        remove_file(&pid_file).await?;
        remove_dir(&dir.join("etcd")).await?;
        remove_file(&self.log_path(name, ETCD)).await?;
        // What the etcd kwokctl insists on costs a create, for docs and benchmarks.
        tracing::debug!(
            cluster = name,
            etcd_cpu_ms = ?cpu_ms,
            took = ?started.elapsed(),
            "dropped the etcd kwokctl started for a shared-etcd cluster"
        );
        Ok(())
    }
}

/// CPU time (utime + stime, in clock ticks of 10 ms) a process has used, for the debug log.
async fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = tokio::fs::read_to_string(format!("/proc/{pid}/stat"))
        .await
        .ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Fields 14 and 15 of stat; `fields` starts at field 3.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// kwokctl's saved cluster file (`kwok.yaml`: the `KwokctlConfiguration` document, then stages and
/// other documents) without the etcd component, and without the kube-apiserver's link to it (a
/// link to a missing component fails kwokctl's start ordering, `components.GroupByLinks`).
fn without_etcd_component(text: &str) -> Result<String, String> {
    use serde::Deserialize;
    let mut out = String::new();
    let mut found = false;
    for document in serde_yaml::Deserializer::from_str(text) {
        let mut doc = serde_yaml::Value::deserialize(document).map_err(|e| e.to_string())?;
        if doc["kind"] == "KwokctlConfiguration" {
            let components = doc
                .get_mut("components")
                .and_then(|c| c.as_sequence_mut())
                .ok_or("no component list")?;
            let before = components.len();
            components.retain(|c| c["name"] != ETCD);
            found = components.len() < before;
            for component in components.iter_mut() {
                if let Some(links) = component.get_mut("links").and_then(|l| l.as_sequence_mut()) {
                    links.retain(|l| l != ETCD);
                }
            }
        }
        if doc.is_null() {
            continue;
        }
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml::to_string(&doc).map_err(|e| e.to_string())?);
    }
    if found {
        Ok(out)
    } else {
        Err("no etcd component in it".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_saved_component_list_loses_etcd_and_the_link_to_it() {
        let saved = "kind: KwokctlConfiguration
apiVersion: config.kwok.x-k8s.io/v1alpha1
components:
- name: etcd
  args: [--name=node0]
- name: kube-apiserver
  links: [etcd]
  args: [--etcd-servers=http://127.0.0.1:7999]
- name: kwok-controller
  links: [kube-apiserver]
---
kind: Stage
apiVersion: kwok.x-k8s.io/v1alpha1
metadata: {name: node-initialize}
";
        let edited = without_etcd_component(saved).unwrap();
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&edited)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 2, "{edited}");
        let names: Vec<&str> = docs[0]["components"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["kube-apiserver", "kwok-controller"]);
        assert_eq!(
            docs[0]["components"][0]["links"]
                .as_sequence()
                .unwrap()
                .len(),
            0
        );
        assert_eq!(docs[0]["components"][1]["links"][0], "kube-apiserver");
        assert_eq!(docs[1]["metadata"]["name"], "node-initialize");
        assert!(without_etcd_component(&edited).is_err(), "only once");
    }
}

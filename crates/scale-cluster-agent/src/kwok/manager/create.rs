//! `create`: reserve a port block, run `kwokctl create cluster`, wait for `/readyz`, populate; roll
//! back everything on failure.

use tokio::time::Instant;

use super::files::write_file;
use super::processes::port_is_free;
use super::{ClusterInfo, ClusterManager, CreateRequest, CreateTimings, KwokError};
use crate::kwok::kwokctl::CreateCluster;
use crate::kwok::{names, population};
use crate::store::ports::PortBlock;
use crate::store::{NewCluster, Phase};

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
        let record = self
            .store
            .reserve(
                NewCluster {
                    name: &req.name,
                    component_profile: req.profile.as_str(),
                    population: &population_json,
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
        match self.bring_up(&req, &record.ports, started).await {
            Ok(timings) => {
                self.store
                    .set_phase(&req.name, Phase::Running, None)
                    .await?;
                Ok((self.get(&req.name).await?, timings))
            }
            Err(err) => match self.tear_down(&req.name, &record.ports).await {
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
        started: Instant,
    ) -> Result<CreateTimings, KwokError> {
        let config = self.config_path(&req.name);
        write_file(&config, &req.profile.kwokctl_config(&self.toolchain, ports)).await?;
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
        let client = population::client(&self.kubeconfig_path(&req.name)).await?;
        population::apply(&client, &req.name, &req.population).await?;
        Ok(CreateTimings {
            ready,
            populated: started.elapsed(),
        })
    }
}

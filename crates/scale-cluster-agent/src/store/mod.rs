//! The embedded state database (SQLite): the single source of truth for simulated clusters and the
//! port blocks they own. Every change is one transaction, so a crash between two steps leaves either
//! the old or the new row, never half of one; port reservation and the name check happen in the same
//! write transaction, so two processes (or tasks) creating clusters at once never get the same port.

use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::process::{self, ProcessId};
use ports::{PortBlock, PortRange};

mod agent;
mod events;
pub mod memory;
pub mod ports;
pub mod requests;
pub mod scenarios;
pub use agent::{AgentPhase, AgentRecord, PhaseCount, PhaseWrite};
pub use events::now_ms;
pub use events::{Event, EventKind, LoadSample, Sample, EVENT_RETENTION, SAMPLE_RETENTION};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE clusters (
        name TEXT PRIMARY KEY,
        first_port INTEGER NOT NULL UNIQUE,
        component_profile TEXT NOT NULL,
        population TEXT NOT NULL,
        phase TEXT NOT NULL,
        owner_pid INTEGER,
        last_error TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );",
    "CREATE TABLE agent_clusters (
        name TEXT PRIMARY KEY,
        profile TEXT NOT NULL,
        phase TEXT NOT NULL,
        rancher_cluster_id TEXT,
        registration_token TEXT,
        server_url TEXT,
        ca_checksum TEXT,
        tunnel_params TEXT,
        last_error TEXT,
        attempts INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        active_at INTEGER
    );",
    // Desired state apart from the observed phase (a deletion marker, like `deletionTimestamp`);
    // no secret is stored any more: Rancher's answers were never read back, and the tunnel params
    // (which hold the cluster's service-account token) are recomputed byte for byte on every
    // start, so only their digest is kept to notice a change; the agent's own identity lives in
    // `agent_meta`.
    "ALTER TABLE agent_clusters ADD COLUMN deletion_requested_at INTEGER;
     UPDATE agent_clusters SET deletion_requested_at = updated_at WHERE phase = 'deleting';
     ALTER TABLE agent_clusters ADD COLUMN tunnel_params_sha256 TEXT;
     UPDATE agent_clusters SET registration_token = NULL, tunnel_params = NULL;
     ALTER TABLE agent_clusters DROP COLUMN registration_token;
     ALTER TABLE agent_clusters DROP COLUMN tunnel_params;
     ALTER TABLE agent_clusters DROP COLUMN server_url;
     ALTER TABLE agent_clusters DROP COLUMN ca_checksum;
     CREATE TABLE agent_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    // The owner's start time (`/proc/<pid>/stat` field 22) next to its pid, so a recycled pid (our
    // own, too: a restarted container agent is pid 1 again) is not mistaken for a live owner. Rows
    // written before this migration keep NULL: see `Owner::is_alive`.
    "ALTER TABLE clusters ADD COLUMN owner_start_time INTEGER;",
    // The run state the user wants apart from the observed phase (`stop_requested`, like a
    // Deployment scaled to zero: the cluster is kept, its processes and tunnels are not), the node
    // count the user asked for (`desired_nodes`, NULL: the agent's population profile) and the
    // count last applied (`nodes`, observed).
    "ALTER TABLE agent_clusters ADD COLUMN stop_requested INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE agent_clusters ADD COLUMN desired_nodes INTEGER;
     ALTER TABLE agent_clusters ADD COLUMN nodes INTEGER;",
    // Scenario runs and their stages (`scenarios.rs`).
    scenarios::MIGRATION,
    // The event log and the agent's resource samples (`events`).
    events::MIGRATION,
    // Where a cluster's data lives, `own` (its own etcd, run by kwokctl) or `shared`
    // (a prefix in the agent's one shared etcd). Rows from before lived in their own etcd.
    "ALTER TABLE clusters ADD COLUMN etcd TEXT NOT NULL DEFAULT 'own';",
    // Per-cluster memory samples (`memory`).
    memory::MIGRATION,
    // Rancher's requests per cluster by verb and resource (`requests`).
    requests::MIGRATION,
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("state database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("a cluster named {0:?} already exists")]
    Duplicate(String),
    #[error("no cluster named {0:?}")]
    NotFound(String),
    #[error(
        "no free port block left: all {blocks} blocks from port {first} to {last} are taken by clusters \
         or by other processes; raise --port-blocks or choose another --port-base"
    )]
    PortsExhausted { blocks: u16, first: u16, last: u16 },
    #[error("state database task failed: {0}")]
    Task(String),
    #[error("scenario run {0:?} is still running: stop it first (`scenario stop {0}`)")]
    ScenarioRunning(String),
    #[error("corrupt row for cluster {name:?}: {reason}")]
    Corrupt { name: String, reason: String },
    #[error(
        "this data dir belongs to agent instance {stored:?}, not {requested:?}: use the data dir of \
         instance {requested:?}, or drop --instance-id to keep {stored:?}"
    )]
    InstanceMismatch { stored: String, requested: String },
}

/// Where a cluster is in its life. Transitional phases (`Creating`, `Deleting`) carry the identity
/// of the process doing the work (pid + start time), so a crash can be told apart from work still
/// in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Creating,
    Running,
    Stopped,
    Deleting,
    Failed,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Creating => "creating",
            Phase::Running => "running",
            Phase::Stopped => "stopped",
            Phase::Deleting => "deleting",
            Phase::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => Phase::Creating,
            "running" => Phase::Running,
            "stopped" => Phase::Stopped,
            "deleting" => Phase::Deleting,
            "failed" => Phase::Failed,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a cluster's apiserver keeps its objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EtcdKind {
    /// Its own etcd process, started and stopped with the cluster by kwokctl.
    #[default]
    Own,
    /// Under its own prefix in the agent's shared etcd.
    Shared,
}

impl EtcdKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EtcdKind::Own => "own",
            EtcdKind::Shared => "shared",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "own" => Some(EtcdKind::Own),
            "shared" => Some(EtcdKind::Shared),
            _ => None,
        }
    }
}

impl std::fmt::Display for EtcdKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One cluster's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterRecord {
    pub name: String,
    pub ports: PortBlock,
    pub component_profile: String,
    /// The population profile as JSON (owned by `kwok::population`).
    pub population: String,
    /// Where its objects live (recorded at create: heal and status follow it, not the profile).
    pub etcd: EtcdKind,
    pub phase: Phase,
    /// The process working on a transitional phase; `None` in settled phases.
    pub owner: Option<Owner>,
    pub last_error: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
}

/// The process that owns a transitional row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub pid: u32,
    /// `None` for rows written by an agent version that did not record start times.
    pub start_time: Option<u64>,
}

impl Owner {
    /// This process, as recorded in the rows it takes ownership of.
    fn current() -> Self {
        Owner {
            pid: std::process::id(),
            start_time: ProcessId::current().map(|p| p.start_time),
        }
    }

    /// Whether the owner still runs. Reads `/proc`: call it off the async runtime.
    ///
    /// With a start time this is exact. Without one (an older row) only the pid can be compared,
    /// except for our own pid: this version always records a start time, so a row without one
    /// that names our pid was written by an earlier run that had the same pid (a container's pid
    /// 1), and that run is dead.
    pub fn is_alive(&self) -> bool {
        match self.start_time {
            Some(start_time) => process::is_alive(&ProcessId {
                pid: self.pid,
                start_time,
            }),
            None => self.pid != std::process::id() && process::pid_alive(self.pid),
        }
    }
}

/// What a new cluster needs besides its ports.
#[derive(Debug, Clone)]
pub struct NewCluster<'a> {
    pub name: &'a str,
    pub component_profile: &'a str,
    pub population: &'a str,
    pub etcd: EtcdKind,
}

/// Handle to the database; cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    /// Opens (creating if needed) the database at `path`, mode 0600, and applies migrations.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::secrets::ensure_private_dir(dir).map_err(|e| open_err(e.into()))?;
        }
        // Create the file ourselves so it is never world-readable, even for a moment: it holds
        // Rancher credentials. `mode` only applies to a new file, so an existing one (from an
        // older version, a copy, a umask accident) is tightened too, before SQLite opens it:
        // SQLite gives new -wal/-shm files the database file's mode, and existing ones are
        // tightened here as well.
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| open_err(e.into()))?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| open_err(e.into()))?;
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            match std::fs::set_permissions(&side, std::fs::Permissions::from_mode(0o600)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(open_err(e.into()))
                }
                _ => {}
            }
        }
        let conn = Connection::open(path).map_err(|e| open_err(e.into()))?;
        conn.busy_timeout(Duration::from_secs(60))?;
        // Deleted rows (a deleted cluster's tunnel params, columns a migration drops) are
        // overwritten with zeros instead of lingering in free pages of the file.
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        migrate(&conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    pub(crate) async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Task("state database lock poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Inserts a cluster in phase `Creating`, owned by this process, with the lowest free port block
    /// of `range` whose ports `port_is_free` accepts. Name check and reservation are one transaction.
    pub async fn reserve(
        &self,
        new: NewCluster<'_>,
        range: PortRange,
        port_is_free: fn(u16) -> bool,
    ) -> Result<ClusterRecord, StoreError> {
        let name = new.name.to_string();
        let profile = new.component_profile.to_string();
        let population = new.population.to_string();
        let etcd = new.etcd;
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let exists: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM clusters WHERE name = ?1)",
                [&name],
                |r| r.get(0),
            )?;
            if exists {
                return Err(StoreError::Duplicate(name));
            }
            let taken: Vec<u16> = tx
                .prepare("SELECT first_port FROM clusters")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let block = (0..range.blocks)
                .filter_map(|i| range.block(i))
                .find(|b| !taken.iter().any(|t| overlaps(*t, b.first())) && b.all().into_iter().all(port_is_free))
                .ok_or_else(|| {
                    let (first, last) = range.span();
                    StoreError::PortsExhausted {
                        blocks: range.blocks,
                        first,
                        last,
                    }
                })?;
            let now = now_secs();
            let owner = Owner::current();
            tx.execute(
                "INSERT INTO clusters (name, first_port, component_profile, population, phase, owner_pid,
                    owner_start_time, last_error, created_at, updated_at, etcd)
                    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?8, ?8, ?9)",
                params![
                    name,
                    block.first(),
                    profile,
                    population,
                    Phase::Creating.as_str(),
                    owner.pid,
                    owner.start_time,
                    now,
                    etcd.as_str()
                ],
            )?;
            let record = get_row(&tx, &name)?.ok_or_else(|| StoreError::NotFound(name.clone()))?;
            tx.commit()?;
            Ok(record)
        })
        .await
    }

    pub async fn get(&self, name: &str) -> Result<Option<ClusterRecord>, StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| get_row(conn, &name)).await
    }

    pub async fn list(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare(&format!("{SELECT_ROW} ORDER BY first_port"))?;
            let rows = stmt.query_map([], row_to_raw)?;
            rows.map(|r| r.map_err(StoreError::from).and_then(RawRow::into_record))
                .collect()
        })
        .await
    }

    /// Moves a cluster to `phase`. Transitional phases record this process as owner; others clear it.
    pub async fn set_phase(
        &self,
        name: &str,
        phase: Phase,
        last_error: Option<String>,
    ) -> Result<(), StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            let owner = matches!(phase, Phase::Creating | Phase::Deleting).then(Owner::current);
            let changed = conn.execute(
                "UPDATE clusters SET phase = ?2, owner_pid = ?3, owner_start_time = ?4, last_error = ?5,
                    updated_at = ?6 WHERE name = ?1",
                params![
                    name,
                    phase.as_str(),
                    owner.map(|o| o.pid),
                    owner.and_then(|o| o.start_time),
                    last_error,
                    now_secs()
                ],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound(name));
            }
            Ok(())
        })
        .await
    }

    pub async fn set_population(&self, name: &str, population: String) -> Result<(), StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            let changed = conn.execute(
                "UPDATE clusters SET population = ?2, updated_at = ?3 WHERE name = ?1",
                params![name, population, now_secs()],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound(name));
            }
            Ok(())
        })
        .await
    }

    /// Overwrites a row's owner, to stage what a crashed or concurrent process would have left.
    #[cfg(test)]
    pub(crate) async fn set_owner(
        &self,
        name: &str,
        owner: Option<Owner>,
    ) -> Result<(), StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            conn.execute(
                "UPDATE clusters SET owner_pid = ?2, owner_start_time = ?3 WHERE name = ?1",
                params![name, owner.map(|o| o.pid), owner.and_then(|o| o.start_time)],
            )?;
            Ok(())
        })
        .await
    }

    /// Deletes the row, which frees its port block.
    pub async fn remove(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            conn.execute("DELETE FROM clusters WHERE name = ?1", [&name])?;
            Ok(())
        })
        .await
    }
}

/// Two blocks overlap if their first ports are closer than one block (the stride may have changed
/// since a block was reserved).
fn overlaps(first_a: u16, first_b: u16) -> bool {
    first_a.abs_diff(first_b) < ports::PORTS_PER_BLOCK
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let applied: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        conn.execute_batch(&format!(
            "BEGIN; {sql} PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}

const SELECT_ROW: &str =
    "SELECT name, first_port, component_profile, population, phase, owner_pid, last_error, \
                          created_at, updated_at, owner_start_time, etcd FROM clusters";

struct RawRow {
    name: String,
    first_port: u16,
    component_profile: String,
    population: String,
    phase: String,
    owner_pid: Option<u32>,
    owner_start_time: Option<u64>,
    last_error: Option<String>,
    created_at: u64,
    updated_at: u64,
    etcd: String,
}

impl RawRow {
    fn into_record(self) -> Result<ClusterRecord, StoreError> {
        let phase = Phase::parse(&self.phase).ok_or_else(|| StoreError::Corrupt {
            name: self.name.clone(),
            reason: format!("unknown phase {:?}", self.phase),
        })?;
        let etcd = EtcdKind::parse(&self.etcd).ok_or_else(|| StoreError::Corrupt {
            name: self.name.clone(),
            reason: format!("unknown etcd kind {:?}", self.etcd),
        })?;
        Ok(ClusterRecord {
            etcd,
            ports: PortBlock::starting_at(self.first_port),
            name: self.name,
            component_profile: self.component_profile,
            population: self.population,
            phase,
            owner: self.owner_pid.map(|pid| Owner {
                pid,
                start_time: self.owner_start_time,
            }),
            last_error: self.last_error,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

fn row_to_raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        name: r.get(0)?,
        first_port: r.get(1)?,
        component_profile: r.get(2)?,
        population: r.get(3)?,
        phase: r.get(4)?,
        owner_pid: r.get(5)?,
        last_error: r.get(6)?,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
        owner_start_time: r.get(9)?,
        etcd: r.get(10)?,
    })
}

fn get_row(conn: &Connection, name: &str) -> Result<Option<ClusterRecord>, StoreError> {
    conn.query_row(&format!("{SELECT_ROW} WHERE name = ?1"), [name], row_to_raw)
        .optional()?
        .map(RawRow::into_record)
        .transpose()
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(name: &str) -> NewCluster<'_> {
        NewCluster {
            name,
            component_profile: "lean",
            population: "{}",
            etcd: EtcdKind::Own,
        }
    }

    fn all_free(_: u16) -> bool {
        true
    }

    #[tokio::test]
    async fn reserves_distinct_blocks_and_rejects_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let range = PortRange::new(20000, 10, 3).unwrap();
        let a = store.reserve(new("a"), range, all_free).await.unwrap();
        let b = store.reserve(new("b"), range, all_free).await.unwrap();
        assert_eq!(a.ports.first(), 20000);
        assert_eq!(b.ports.first(), 20010);
        assert_eq!(a.phase, Phase::Creating);
        let me = ProcessId::current().unwrap();
        assert_eq!(
            a.owner,
            Some(Owner {
                pid: me.pid,
                start_time: Some(me.start_time)
            })
        );
        assert!(matches!(
            store.reserve(new("a"), range, all_free).await,
            Err(StoreError::Duplicate(_))
        ));
        store.reserve(new("c"), range, all_free).await.unwrap();
        assert!(matches!(
            store.reserve(new("d"), range, all_free).await,
            Err(StoreError::PortsExhausted {
                blocks: 3,
                first: 20000,
                last: 20025
            })
        ));
        store.remove("b").await.unwrap();
        let d = store.reserve(new("d"), range, all_free).await.unwrap();
        assert_eq!(d.ports.first(), 20010, "a freed block is reused");
    }

    #[tokio::test]
    async fn skips_ports_in_use_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let range = PortRange::new(20000, 10, 3).unwrap();
        {
            let store = Store::open(&path).unwrap();
            let a = store
                .reserve(new("a"), range, |p| p != 20013)
                .await
                .unwrap();
            assert_eq!(a.ports.first(), 20000);
            let b = store
                .reserve(new("b"), range, |p| p != 20013)
                .await
                .unwrap();
            assert_eq!(b.ports.first(), 20020, "block with a busy port is skipped");
            store.set_phase("a", Phase::Running, None).await.unwrap();
        }
        let store = Store::open(&path).unwrap();
        let a = store.get("a").await.unwrap().unwrap();
        assert_eq!(a.phase, Phase::Running);
        assert_eq!(a.owner, None);
        assert_eq!(store.list().await.unwrap().len(), 2);
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[tokio::test]
    async fn rows_written_before_owner_start_times_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            // The database as the previous version left it: two migrations, a row mid-create.
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..2] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 2).unwrap();
            conn.execute(
                "INSERT INTO clusters (name, first_port, component_profile, population, phase, owner_pid,
                    last_error, created_at, updated_at) VALUES ('old', 20000, 'lean', '{}', 'creating', 4242,
                    NULL, 1, 1)",
                [],
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let old = store.get("old").await.unwrap().unwrap();
        assert_eq!(
            old.etcd,
            EtcdKind::Own,
            "clusters from before kept their own etcd"
        );
        assert_eq!(
            old.owner,
            Some(Owner {
                pid: 4242,
                start_time: None
            })
        );
        // A pid-only row naming our own pid was written by an earlier run: dead.
        let ours = Owner {
            pid: std::process::id(),
            start_time: None,
        };
        assert!(!ours.is_alive());
        assert!(Owner::current().is_alive());
        store.set_phase("old", Phase::Deleting, None).await.unwrap();
        assert_eq!(
            store.get("old").await.unwrap().unwrap().owner,
            Some(Owner::current())
        );
    }

    #[tokio::test]
    async fn concurrent_reservations_from_two_handles_never_share_ports() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let range = PortRange::new(20000, 10, 40).unwrap();
        // Two independent connections stand in for two processes.
        let s1 = Store::open(&path).unwrap();
        let s2 = Store::open(&path).unwrap();
        let mut tasks = Vec::new();
        for i in 0..40 {
            let store = if i % 2 == 0 { s1.clone() } else { s2.clone() };
            tasks.push(tokio::spawn(async move {
                store
                    .reserve(new(&format!("c{i}")), range, all_free)
                    .await
                    .unwrap()
                    .ports
                    .first()
            }));
        }
        let mut ports = Vec::new();
        for t in tasks {
            ports.push(t.await.unwrap());
        }
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 40);
    }

    #[tokio::test]
    async fn records_where_each_cluster_keeps_its_objects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let range = PortRange::new(20000, 10, 3).unwrap();
        {
            let store = Store::open(&path).unwrap();
            let shared = NewCluster {
                etcd: EtcdKind::Shared,
                ..new("s")
            };
            assert_eq!(
                store.reserve(shared, range, all_free).await.unwrap().etcd,
                EtcdKind::Shared
            );
            store.reserve(new("o"), range, all_free).await.unwrap();
        }
        let store = Store::open(&path).unwrap();
        let kinds: Vec<(String, EtcdKind)> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.name, r.etcd))
            .collect();
        assert_eq!(
            kinds,
            [("s".into(), EtcdKind::Shared), ("o".into(), EtcdKind::Own)]
        );
    }
}

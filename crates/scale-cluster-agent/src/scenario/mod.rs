//! Scenarios: a Rancher scale test described in one YAML file (ramp, hold, churn, faults), checked
//! before it runs and planned from the file alone.
//!
//! - [`spec`]: the file's types, parsing and validation (errors name the stage and key).
//! - [`plan`]: what each stage will do, with the numbers resolved, and its time floor.
//! - [`run`]: the runner inside the agent (one run at a time, every stage recorded before it
//!   acts); [`stage`]: one file per stage kind.
//! - [`metrics`]: the runs' figures for `/metrics`, kept in memory by the runner.

pub mod metrics;
pub mod plan;
pub mod run;
pub mod spec;
pub mod stage;

pub use plan::{plan, Plan, PlannedStage};
pub use run::{Runner, Started};
pub use spec::{Limits, Scenario, ScenarioError, Stage};

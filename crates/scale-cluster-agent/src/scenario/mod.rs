//! Scenarios: a Rancher scale test described in one YAML file (ramp, hold, churn, faults), checked
//! before it runs and planned from the file alone.
//!
//! - [`spec`]: the file's types, parsing and validation (errors name the stage and key).
//! - [`plan`]: what each stage will do, with the numbers resolved, and its time floor.

pub mod plan;
pub mod spec;

pub use plan::{plan, Plan, PlannedStage};
pub use spec::{Limits, Scenario, ScenarioError, Stage};

//! `/scenarios`: start a scenario run (or plan one: `dryRun`), follow it, stop it.
//!
//! | Request | Answer |
//! |---|---|
//! | `POST /scenarios` `{spec, dryRun?}` | 201 `{id, plan}`; 200 `{plan}` for a dry run; 400 `invalid_scenario`; 409 `scenario_running` |
//! | `GET /scenarios` | the latest runs, newest first, with their stages |
//! | `GET /scenarios/{id}` | one run; 404 `not_found` |
//! | `POST /scenarios/{id}/stop` | 202 once asked; 409 `not_running` |

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::server::ApiError;
use crate::scenario::run::RunError;
use crate::scenario::{plan, Plan, Runner};
use crate::store::scenarios::RunRecord;
use crate::store::StoreError;

/// How many runs `GET /scenarios` lists.
const LISTED: usize = 50;

/// `POST /scenarios`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartRequest {
    /// The scenario file's text (YAML).
    pub spec: String,
    /// Only validate and plan.
    #[serde(default)]
    pub dry_run: bool,
}

/// Answer to `POST /scenarios`: the plan, and the run's id unless it was a dry run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub plan: Plan,
}

pub fn router(runner: Runner) -> Router {
    Router::new()
        .route("/scenarios", get(list).post(start))
        .route("/scenarios/{id}", get(get_run))
        .route("/scenarios/{id}/stop", post(stop))
        .with_state(runner)
}

type ApiResult<T> = Result<T, ApiError>;

async fn start(
    State(runner): State<Runner>,
    body: Result<Json<StartRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<StartResponse>)> {
    let Json(request) = body?;
    if request.dry_run {
        let scenario = runner.parse(&request.spec).map_err(run_error)?;
        let plan = plan(&scenario, scenario.seed);
        return Ok((StatusCode::OK, Json(StartResponse { id: None, plan })));
    }
    let started = runner.start(&request.spec).await.map_err(run_error)?;
    Ok((
        StatusCode::CREATED,
        Json(StartResponse {
            id: Some(started.id),
            plan: started.plan,
        }),
    ))
}

async fn list(State(runner): State<Runner>) -> ApiResult<Json<Vec<RunRecord>>> {
    Ok(Json(runner.runs(LISTED).await.map_err(store_error)?))
}

async fn get_run(
    State(runner): State<Runner>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<RunRecord>> {
    let Path(id) = id?;
    match runner.run(&id).await.map_err(store_error)? {
        Some(run) => Ok(Json(run)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no scenario run {id:?}"),
        )),
    }
}

async fn stop(
    State(runner): State<Runner>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<(StatusCode, Json<RunRecord>)> {
    let Path(id) = id?;
    let Some(run) = runner.run(&id).await.map_err(store_error)? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no scenario run {id:?}"),
        ));
    };
    if !runner.stop(&id).await.map_err(store_error)? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_running",
            format!("scenario run {id:?} is {}", run.state.as_str()),
        ));
    }
    let run = runner.run(&id).await.map_err(store_error)?.unwrap_or(run);
    Ok((StatusCode::ACCEPTED, Json(run)))
}

fn run_error(error: RunError) -> ApiError {
    match error {
        RunError::Invalid(reason) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_scenario", reason)
        }
        RunError::Store(error) => store_error(error),
    }
}

fn store_error(error: StoreError) -> ApiError {
    match error {
        StoreError::ScenarioRunning(_) => {
            ApiError::new(StatusCode::CONFLICT, "scenario_running", error)
        }
        other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store_error", other),
    }
}

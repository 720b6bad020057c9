//! `hold: 10m`: nothing is done for a while; the clusters stay connected and Rancher keeps
//! probing them. Records how many were not up at the end.

use tokio::time::Instant;

use super::{is_up, millis, StageContext, StageError};
use crate::scenario::spec::Span;

pub async fn run(
    context: &mut StageContext<'_>,
    span: Span,
) -> Result<serde_json::Value, StageError> {
    let started = Instant::now();
    context.sleep_until(started + span.0).await?;
    let clusters = context.clusters().await?;
    Ok(serde_json::json!({
        "heldMs": millis(started.elapsed()),
        "clusters": clusters.len(),
        "notUpAtEnd": clusters.iter().filter(|c| !is_up(c)).count(),
    }))
}

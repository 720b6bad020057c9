//! `waitActive: {timeout}`: waits until every scenario cluster is up as Rancher sees it (active,
//! both tunnels connected, Rancher's state active); records how long that took and the most
//! clusters seen not up meanwhile. Fails with the clusters still down at the timeout.

use tokio::time::Instant;

use super::{is_up, millis, StageContext, StageError, OBSERVE};
use crate::scenario::spec::WaitActive;

/// How many of the clusters still down a timeout error names.
const NAMED: usize = 5;

pub async fn run(
    context: &mut StageContext<'_>,
    wait: &WaitActive,
) -> Result<serde_json::Value, StageError> {
    let started = Instant::now();
    let deadline = started + wait.timeout.0;
    let mut most_down = 0;
    loop {
        let clusters = context.clusters().await?;
        let down: Vec<_> = clusters.iter().filter(|c| !is_up(c)).collect();
        most_down = most_down.max(down.len());
        if down.is_empty() {
            return Ok(serde_json::json!({
                "clusters": clusters.len(),
                "tookMs": millis(started.elapsed()),
                "mostNotUp": most_down,
            }));
        }
        if Instant::now() >= deadline {
            let named: Vec<String> = down
                .iter()
                .take(NAMED)
                .map(|c| match &c.last_error {
                    Some(error) => format!("{} ({}: {error})", c.name, c.phase.as_str()),
                    None => format!(
                        "{} ({}, tunnels {}/{})",
                        c.name,
                        c.phase.as_str(),
                        c.tunnels.main,
                        c.tunnels.steve
                    ),
                })
                .collect();
            return Err(StageError::Check(format!(
                "after {}, {} of {} clusters were not active: {}{}",
                wait.timeout,
                down.len(),
                clusters.len(),
                named.join(", "),
                if down.len() > NAMED { ", …" } else { "" }
            )));
        }
        context
            .sleep_until((Instant::now() + OBSERVE).min(deadline))
            .await?;
    }
}

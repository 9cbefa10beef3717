//! The scheduler: turns due schedules into runs.
//!
//! Each firing is claimed in the store by moving the schedule's `next_run`
//! forward with a compare-and-set on the value that was read, in the same
//! transaction that inserts the run ([`oz_store::Catalog::fire_schedule`]).
//! So a firing makes at most one run, even when several replicas share the
//! database and tick at the same moment, and a schedule paused, changed or
//! deleted between the read and the claim makes none.
//!
//! Missed firings (the server was down, or busy): when a schedule is found
//! with its `next_run` in the past, it fires **once**, now, however many
//! firing times were missed, and its next firing is the first one after now.
//! That is the "coalesce" policy of systemd's `Persistent=` timers: a
//! nightly job does not run seven times after a week of downtime.
//!
//! A run that cannot be built at firing time (its agent was deleted, no
//! worker host) is not a crash: the error is kept in the schedule's
//! `last_spawn_error` and the schedule moves on to its next firing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use oz_cron::CronSchedule;
use oz_protocol::api::AgentRunParams;
use oz_store::{Firing, Schedule};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::api::runs::{Origin, build_run};
use crate::state::AppState;

/// Longest sleep between two looks at the schedules: bounds how late a
/// firing made by another replica's API call (which cannot wake this one) is
/// noticed.
const MAX_SLEEP: Duration = Duration::from_secs(15);
/// Schedules handled per pass.
const BATCH: u32 = 100;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// Runs created.
    pub fired: usize,
    /// Firings that could not create a run (recorded on the schedule).
    pub failed: usize,
    /// Firings another replica (or a concurrent change) claimed first.
    pub lost: usize,
}

/// Fire every schedule due at `now`. Public so that tests can drive the
/// scheduler on a clock of their own.
pub async fn tick(state: &AppState, now: DateTime<Utc>) -> Result<Tick, oz_store::StoreError> {
    let mut done = Tick::default();
    loop {
        let due = state.store.due_schedules(&oz_store::ts(now), BATCH).await?;
        let count = due.len();
        let before = done;
        for schedule in due {
            fire(state, &schedule, now, &mut done).await?;
        }
        // A full batch may hide more; but a batch that moved nothing (every
        // firing left due to retry) would come back the same: stop there.
        if count < BATCH as usize || done == before {
            return Ok(done);
        }
    }
}

async fn fire(
    state: &AppState,
    s: &Schedule,
    now: DateTime<Utc>,
    done: &mut Tick,
) -> Result<(), oz_store::StoreError> {
    let Some(expected) = s.next_run.clone() else {
        return Ok(());
    };
    let (next_run, run, spawn_error) = match CronSchedule::parse(&s.cron_schedule) {
        Ok(cron) => {
            let next = cron.next_after(now).map(oz_store::ts);
            match build_run(state, origin(s), params(s)).await {
                Ok(run) => (next, Some(run), None),
                // The database failed, not the schedule: leave the firing
                // due, so the next pass tries it again.
                Err(e) if e.status.is_server_error() => {
                    tracing::warn!(schedule_id = %s.id, error = %e.detail, "cannot build the scheduled run now; retrying");
                    return Ok(());
                }
                Err(e) => (next, None, Some(e.detail)),
            }
        }
        // Cannot happen for schedules made through the API; stop it rather
        // than retrying every pass.
        Err(e) => (
            None,
            None,
            Some(format!("the cron expression does not parse: {e}")),
        ),
    };
    let firing = Firing {
        schedule_id: s.id.clone(),
        expected_next_run: expected.clone(),
        next_run,
        last_ran: oz_store::ts(now),
        run,
        spawn_error: spawn_error.clone(),
    };
    match state.store.fire_schedule(firing).await? {
        None => {
            tracing::debug!(schedule_id = %s.id, "firing claimed elsewhere or schedule changed");
            done.lost += 1;
        }
        Some(Some(run)) => {
            tracing::info!(schedule_id = %s.id, run_id = %run.run_id, due = %expected, "schedule fired");
            done.fired += 1;
            state.hub.queued(&run.team_id, &run.worker_host);
        }
        Some(None) => {
            tracing::warn!(schedule_id = %s.id, error = spawn_error.as_deref().unwrap_or(""), "schedule fired but no run could be created");
            done.failed += 1;
        }
    }
    Ok(())
}

fn origin(s: &Schedule) -> Origin {
    let creator_id = s
        .created_by
        .as_ref()
        .and_then(|c| c.get("uid"))
        .and_then(|u| u.as_str())
        .map(str::to_owned);
    Origin {
        team_id: s.team_id.clone(),
        creator_id,
        creator: s.created_by.clone(),
        source: "SCHEDULED_AGENT",
        schedule: Some((
            s.id.clone(),
            json!({
                "schedule_id": s.id,
                "schedule_name": s.name,
                "cron_schedule": s.cron_schedule,
            }),
        )),
    }
}

fn params(s: &Schedule) -> AgentRunParams {
    AgentRunParams {
        prompt: Some(s.prompt.clone()),
        config: s.agent_config.clone(),
        metadata: (!s.metadata.is_empty()).then(|| s.metadata.clone()),
        mode: s.mode.clone(),
        agent_identity_uid: s.agent_uid.clone(),
        ..Default::default()
    }
}

/// Tick whenever a schedule is due, a schedule changed, or at least every
/// [`MAX_SLEEP`], until `stop` fires.
pub async fn run(state: AppState, stop: CancellationToken) {
    loop {
        let now = Utc::now();
        if let Err(e) = tick(&state, now).await {
            tracing::warn!(error = %e, "scheduler pass failed; retrying shortly");
        }
        let sleep = match state.store.next_due().await {
            Ok(Some(next)) => oz_store::parse_ts(&next)
                .and_then(|t| (t - Utc::now()).to_std().ok())
                .map_or(Duration::ZERO, |d| d.min(MAX_SLEEP)),
            Ok(None) => MAX_SLEEP,
            Err(e) => {
                tracing::warn!(error = %e, "scheduler cannot read the next firing");
                MAX_SLEEP
            }
        };
        // A due time in the past (another replica is firing it right now)
        // must not turn into a busy loop.
        let sleep = sleep.max(Duration::from_millis(50));
        tokio::select! {
            () = stop.cancelled() => return,
            () = state.scheduler.notified() => {}
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

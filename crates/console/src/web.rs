//! The console as etcdgate serves it, beside etcd's API on the same port: `GET /console` (one
//! page), `GET /console/api/inspect` (the latest inspection as JSON; `?fresh` asks for a new
//! one), `GET /console/api/backups` and `GET /console/api/apisix?prefix=/apisix` (the key
//! browser: read with the asker's own token, from `Authorization` as etcd's gateway takes it,
//! never with etcdgate's, so it shows only what they may read; one read at a time), and
//! `POST /console/api/members` (a membership change, see [`MemberChange`]: made with the
//! asker's token, so that etcd's auth decides who may make it; one at a time; JSON only,
//! which a page of another site cannot send without a CORS preflight the console does not
//! answer). Inspections run one at a time on the console's own runtime, every `interval` in
//! the background (their figures go to `/metrics`, see [`crate::metrics`]) and on demand, at
//! most once per [`FRESH_AT_MOST_EVERY`] however many ask. Backups, when configured, are taken
//! on the same runtime every backup interval after the newest one kept (so a restart does not
//! take one early).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use etcdgate_upstream::login::Login;
use etcdgate_upstream::Pool;
use serde::Deserialize;
use serde_json::json;

use crate::apisix::{analyze, read_prefix, ApisixReport};
use crate::backup::{list_backups, take_backup, BackupOptions};
use crate::calls::Credentials;
use crate::inspect::{gather, judge, BackupsView, InspectOptions, Inspection};
use crate::membership::{add_learner, promote, remove};

/// A fresh inspection asked for within this long of the last one gets the last one: each costs
/// every member a read of its whole database (HashKV).
pub const FRESH_AT_MOST_EVERY: Duration = Duration::from_secs(5);

const PAGE: &str = include_str!("console.html");

/// A failed backup is tried again after this long (or the backup interval, if shorter).
const BACKUP_RETRY: Duration = Duration::from_secs(60);

/// How long a promote asked of the console waits for its learner to catch up.
const PROMOTE_WAIT: Duration = Duration::from_secs(30);

/// A membership change asked of the console, as `POST /console/api/members` takes it:
/// `{"action":"add","name":"m4","peer_urls":["http://10.0.0.4:2380"]}`,
/// `{"action":"promote","member":"m4"}`, `{"action":"remove","member":"m4","force":false}`
/// (members by hex ID or name). See [`crate::membership`] for what each checks first.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum MemberChange {
    Add { name: String, peer_urls: Vec<String> },
    Promote { member: String },
    Remove { member: String, #[serde(default)] force: bool },
}

/// Backups taken on a schedule.
pub struct BackupSchedule {
    pub options: BackupOptions,
    pub interval: Duration,
}

/// The console's state: how to reach the cluster, the latest inspection, the backups.
pub struct Console {
    pool: Arc<Pool>,
    login: Option<Arc<Login>>,
    options: InspectOptions,
    backups: Option<BackupSchedule>,
    /// The latest backup attempt's failure.
    backup_error: Mutex<Option<String>>,
    /// Where inspections run: the runtime the pool was made on (its connections live there).
    runtime: tokio::runtime::Handle,
    latest: Mutex<Option<(Instant, Arc<Inspection>)>>,
    /// Held while an inspection runs.
    running: tokio::sync::Mutex<()>,
    /// Held while the key browser reads a prefix (each read may be tens of MiB).
    browsing: tokio::sync::Mutex<()>,
    /// Held while a membership change is made.
    changing: tokio::sync::Mutex<()>,
}

impl Console {
    /// A console for the cluster behind `pool`; must be called on the pool's runtime.
    /// `login` is etcdgate's own (`--user`), for what etcd's auth guards (HashKV: root role).
    pub fn new(pool: Arc<Pool>, login: Option<Arc<Login>>, options: InspectOptions, backups: Option<BackupSchedule>) -> Arc<Console> {
        Arc::new(Console {
            pool,
            login,
            options,
            backups,
            backup_error: Mutex::new(None),
            runtime: tokio::runtime::Handle::current(),
            latest: Mutex::new(None),
            running: tokio::sync::Mutex::new(()),
            browsing: tokio::sync::Mutex::new(()),
            changing: tokio::sync::Mutex::new(()),
        })
    }

    /// Inspects the cluster now and then every `interval`, and takes the scheduled backups, as
    /// long as the console lives.
    pub fn start(self: &Arc<Self>, interval: Duration) {
        let console = Arc::downgrade(self);
        self.runtime.spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(console) = console.upgrade() else { return };
                console.inspection(Duration::ZERO).await;
            }
        });
        if self.backups.is_some() {
            let console = Arc::downgrade(self);
            self.runtime.spawn(async move {
                loop {
                    let Some(wait) = console.upgrade().map(|c| c.until_next_backup()) else { return };
                    tokio::time::sleep(wait).await;
                    let Some(console) = console.upgrade() else { return };
                    console.back_up().await;
                }
            });
        }
    }

    /// How long until the next scheduled backup is due.
    fn until_next_backup(&self) -> Duration {
        let Some(schedule) = &self.backups else { return Duration::MAX };
        if self.backup_error.lock().unwrap_or_else(PoisonError::into_inner).is_some() {
            return BACKUP_RETRY.min(schedule.interval);
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        match list_backups(&schedule.options.dir).first() {
            Some(latest) => (Duration::from_millis(latest.taken_at_unix_ms) + schedule.interval).saturating_sub(now),
            None => Duration::ZERO,
        }
    }

    /// Takes a scheduled backup now.
    async fn back_up(&self) {
        let Some(schedule) = &self.backups else { return };
        let taken = take_backup(&self.pool, self.login.as_deref(), &schedule.options).await;
        let error = match taken {
            Ok(record) => {
                tracing::info!(file = %record.file, revision = record.revision, keys = record.keys, verified = %record.verified, "backup taken");
                None
            }
            Err(error) => {
                tracing::warn!(%error, dir = %schedule.options.dir.display(), "backup failed");
                Some(error)
            }
        };
        *self.backup_error.lock().unwrap_or_else(PoisonError::into_inner) = error;
    }

    /// The backups kept, and the latest attempt's failure; `None` without a schedule.
    pub fn backups(&self) -> Option<BackupsView> {
        let schedule = self.backups.as_ref()?;
        Some(BackupsView {
            dir: schedule.options.dir.display().to_string(),
            interval_secs: schedule.interval.as_secs(),
            kept: list_backups(&schedule.options.dir),
            last_error: self.backup_error.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        })
    }

    /// The latest inspection if it is younger than `max_age`, else a new one (joining the one
    /// under way, if any).
    pub async fn inspection(&self, max_age: Duration) -> Arc<Inspection> {
        if let Some(latest) = self.latest_within(max_age) {
            return latest;
        }
        let _running = self.running.lock().await;
        if let Some(latest) = self.latest_within(max_age.max(FRESH_AT_MOST_EVERY)) {
            return latest;
        }
        let (pool, login, options) = (self.pool.clone(), self.login.clone(), self.options.clone());
        let taken = self.runtime.spawn(async move { gather(&pool, login.as_deref(), &options).await }).await;
        let mut inspection = taken.unwrap_or_default();
        inspection.backups = self.backups();
        inspection.findings = judge(&inspection, &self.options);
        let inspection = Arc::new(inspection);
        crate::metrics::inspected(&inspection);
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), inspection.clone()));
        inspection
    }

    fn latest_within(&self, max_age: Duration) -> Option<Arc<Inspection>> {
        let latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        latest.as_ref().filter(|(at, _)| at.elapsed() < max_age).map(|(_, inspection)| inspection.clone())
    }

    /// APISIX's configuration under `prefix`, read with `token` (the asker's).
    pub async fn apisix(&self, prefix: String, token: Option<String>) -> Result<ApisixReport, String> {
        let _one_at_a_time = self.browsing.lock().await;
        let pool = self.pool.clone();
        let read = self.runtime.spawn(async move {
            let dir = format!("{}/", prefix.trim_end_matches('/'));
            let read = read_prefix(&pool, Credentials::Token(token.as_deref()), dir.as_bytes()).await?;
            Ok(analyze(&prefix, &read.kvs))
        });
        read.await.map_err(|e| format!("reading the prefix: {e}"))?
    }

    /// Makes `change` with `token` (the asker's), looking at the cluster first with
    /// etcdgate's own login; what was done, as JSON. The next inspection is a new one.
    pub async fn change_members(&self, change: MemberChange, token: Option<String>) -> Result<serde_json::Value, String> {
        let _one_at_a_time = self.changing.lock().await;
        let (pool, login, lag_threshold) = (self.pool.clone(), self.login.clone(), self.options.lag_threshold);
        let made = self.runtime.spawn(async move {
            let (login, change_as) = (login.as_deref(), Credentials::Token(token.as_deref()));
            match change {
                MemberChange::Add { name, peer_urls } => add_learner(&pool, login, change_as, &name, &peer_urls).await.map(|a| json!(a)),
                MemberChange::Promote { member } => {
                    promote(&pool, login, change_as, &member, lag_threshold, PROMOTE_WAIT).await.map(|done| json!(done))
                }
                MemberChange::Remove { member, force } => remove(&pool, login, change_as, &member, force).await.map(|done| json!(done)),
            }
        });
        let made = made.await.map_err(|e| format!("the change stopped: {e}"))?;
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner) = None;
        made
    }
}

/// A membership change: 200 with what was done; 409 with `{"error": ...}` when it was not
/// made (refused by its checks or by etcd); 415 / 400 for a body that is not such a change.
async fn change_members(State(console): State<Arc<Console>>, headers: http::HeaderMap, body: axum::body::Bytes) -> Response {
    let error = |status: http::StatusCode, error: String| (status, Json(json!({ "error": error }))).into_response();
    let json_body = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return error(http::StatusCode::UNSUPPORTED_MEDIA_TYPE, "send the change as Content-Type: application/json".into());
    }
    let change: MemberChange = match serde_json::from_slice(&body) {
        Ok(change) => change,
        Err(e) => return error(http::StatusCode::BAD_REQUEST, format!("not a membership change: {e}")),
    };
    match console.change_members(change, asker_token(&headers)).await {
        Ok(made) => Json(made).into_response(),
        Err(e) => error(http::StatusCode::CONFLICT, e),
    }
}

/// The asker's etcd token, from `Authorization` as etcd's gateway takes it.
fn asker_token(headers: &http::HeaderMap) -> Option<String> {
    headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string)
}

#[derive(Deserialize)]
struct ApisixQuery {
    prefix: Option<String>,
}

/// The key browser: 200 with the report, 502 with `{"error": ...}` when etcd refused or failed.
async fn apisix(State(console): State<Arc<Console>>, Query(query): Query<ApisixQuery>, headers: http::HeaderMap) -> Response {
    let prefix = query.prefix.filter(|p| !p.is_empty()).unwrap_or_else(|| "/apisix".to_string());
    match console.apisix(prefix, asker_token(&headers)).await {
        Ok(report) => Json(report).into_response(),
        Err(error) => (http::StatusCode::BAD_GATEWAY, Json(serde_json::json!({ "error": error }))).into_response(),
    }
}

#[derive(Deserialize)]
struct InspectQuery {
    fresh: Option<String>,
}

/// The console's routes.
pub fn routes(console: Arc<Console>) -> Router {
    Router::new()
        .route("/console", get(|| async { Html(PAGE) }))
        .route("/console/api/inspect", get(inspection))
        .route("/console/api/backups", get(|State(console): State<Arc<Console>>| async move { Json(console.backups()) }))
        .route("/console/api/apisix", get(apisix))
        .route("/console/api/members", post(change_members))
        .with_state(console)
}

async fn inspection(State(console): State<Arc<Console>>, Query(query): Query<InspectQuery>) -> Response {
    // Without `fresh`, any inspection will do; the background one keeps them recent.
    let max_age = if query.fresh.is_some() { FRESH_AT_MOST_EVERY } else { Duration::MAX };
    Json(console.inspection(max_age).await.as_ref().clone()).into_response()
}

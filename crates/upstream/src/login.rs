//! etcdgate's own login to etcd (`--user`): the token the watch cache's feeds, barrier reads
//! and continuity checks send while etcd's auth is on. It is got by `Authenticate` when first
//! needed and got again when etcd refuses it (a simple token expires after `--auth-token-ttl`
//! of disuse, goes when its user's password changes and, on etcd 3.5.1, when a member
//! restarts; a JWT expires at its `exp` and is refused as old after any auth change), at
//! most once per [`RELOGIN_PAUSE`] (etcd spends a password hash on every login).

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use etcdgate_proto::etcdserverpb::{auth_client::AuthClient, AuthenticateRequest};
use crate::{Pool, RetryPolicy, Target, Timing};
use tonic::Status;

/// Logins at most this often.
const RELOGIN_PAUSE: Duration = Duration::from_secs(1);

/// etcd's refusals of a call's token, which a new token may cure.
const TOKEN_REFUSED: &[&str] =
    &["etcdserver: user name is empty", "etcdserver: invalid auth token", "etcdserver: revision of auth store is old"];

/// Whether etcd refused a call's token (see [`TOKEN_REFUSED`]).
pub fn token_refused(status: &Status) -> bool {
    TOKEN_REFUSED.contains(&status.message())
}

/// Whether etcd refused a call for its credentials: its token, or its user's permissions.
pub fn refused_for_auth(status: &Status) -> bool {
    token_refused(status) || status.message() == "etcdserver: permission denied"
}

/// A user name and password to log in with, and the token the last login got.
#[derive(Debug)]
pub struct Login {
    name: String,
    password: String,
    state: Mutex<State>,
    /// One login at a time.
    logging_in: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    token: Option<String>,
    last_attempt: Option<Instant>,
}

impl Login {
    pub fn new(name: impl Into<String>, password: impl Into<String>) -> Login {
        Login { name: name.into(), password: password.into(), state: Mutex::default(), logging_in: tokio::sync::Mutex::new(()) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The token to send, logging in first if that was never tried; `None` while etcd's auth
    /// is off (or the login failed: calls then get etcd's refusal, and [`Login::renew`]).
    pub async fn token(&self, pool: &Pool) -> Option<String> {
        let never_tried = self.state().last_attempt.is_none();
        if never_tried {
            self.renew(pool, None).await;
        }
        self.state().token.clone()
    }

    /// etcd refused a call that carried `used`: logs in again, unless another caller already
    /// got a different token meanwhile or the last attempt was under [`RELOGIN_PAUSE`] ago.
    pub async fn renew(&self, pool: &Pool, used: Option<&str>) {
        let _one_at_a_time = self.logging_in.lock().await;
        {
            let state = self.state();
            if state.token.as_deref() != used || state.last_attempt.is_some_and(|at| at.elapsed() < RELOGIN_PAUSE) {
                return;
            }
        }
        let request = AuthenticateRequest { name: self.name.clone(), password: self.password.clone() };
        let answer = pool
            .call(&Target::Any, RetryPolicy::Read, Timing::Unmeasured, |connection| {
                let request = tonic::Request::new(request.clone());
                async move { AuthClient::new(connection).authenticate(request).await }
            })
            .await;
        let mut state = self.state();
        state.last_attempt = Some(Instant::now());
        match answer {
            Ok(answer) => {
                tracing::info!(user = %self.name, "logged in to etcd");
                state.token = Some(answer.into_inner().token);
            }
            Err(status) if status.message() == "etcdserver: authentication is not enabled" => state.token = None,
            Err(status) => {
                tracing::warn!(user = %self.name, error = %status.message(), "logging in to etcd failed");
                state.token = None;
            }
        }
    }
}

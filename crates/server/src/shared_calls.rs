//! Identical concurrent calls of an RPC etcd makes costly on purpose, answered by one call to
//! etcd: `Authenticate`, on which etcd spends a bcrypt hash of the password (~80 ms of CPU on
//! a 2-core host). APISIX's workers and other clients of one user log in together — at start,
//! every 3 minutes after (lua-resty-etcd renews its token on a timer), and all at once when
//! every token goes bad (a restart of etcd 3.5.1 loses simple tokens; any auth change makes
//! JWT tokens "old") — and without this, N of them cost etcd N hashes, starving its other
//! clients and its raft heartbeats for seconds.
//!
//! A call joins the one in flight with the same RPC, the same request bytes (same user, same
//! password) and the same metadata (a login's own token is not part of it: see
//! `UnaryRpc::SENDS_CREDENTIALS`), and gets the same answer: the same token, which is what
//! each would have got, valid for the same user under the same auth revision. Nothing is kept
//! once etcd has answered: a call made after that makes a call of its own, so a token that
//! went bad is never handed out again, and a wrong password is checked by etcd every time.
//!
//! The call to etcd runs in a task of its own, bounded by the retry budget, so that it goes
//! on for the others when the client that started it goes away; each client waits no longer
//! than its own deadline.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, Shared};
use futures::FutureExt;
use tonic::Status;

use crate::context::CallContext;
use crate::rpc::UnaryRpc;

/// What makes two calls the same call.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct CallKey {
    rpc: &'static str,
    request: Vec<u8>,
    metadata: Vec<(&'static str, Vec<u8>)>,
    member: Option<String>,
}

/// One call to etcd, awaited by every client that asked for it.
type Flight<T> = Shared<BoxFuture<'static, Result<T, Status>>>;

/// The calls in flight, each a `Flight<R::Resp>` of its RPC's response type.
#[derive(Debug, Default)]
pub struct SharedCalls {
    flights: Arc<Mutex<HashMap<CallKey, Box<dyn Any + Send + Sync>>>>,
}

impl SharedCalls {
    /// The answer to `message`: that of the identical call in flight if there is one (the
    /// second value is then `true`), else of `forward` run for this call and any that join it.
    pub async fn call<R: UnaryRpc>(
        &self,
        ctx: &CallContext,
        message: &R::Req,
        forward: impl FnOnce() -> BoxFuture<'static, Result<R::Resp, Status>>,
    ) -> (Result<R::Resp, Status>, bool) {
        let key = CallKey {
            rpc: R::NAME,
            request: prost::Message::encode_to_vec(message),
            metadata: ctx.metadata(),
            member: ctx.member.clone(),
        };
        let (flight, joined) = {
            let mut flights = self.flights.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match flights.get(&key).and_then(|flight| flight.downcast_ref::<Flight<R::Resp>>()) {
                Some(flight) => (flight.clone(), true),
                None => {
                    let call = forward();
                    let (done, finished) = (self.flights.clone(), key.clone());
                    let task = tokio::spawn(async move {
                        let result = call.await;
                        // Taken after the insertion below has let go of the lock.
                        done.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&finished);
                        result
                    });
                    let flight: Flight<R::Resp> = task
                        .map(|joined| joined.unwrap_or_else(|e| Err(Status::internal(format!("etcdgate: shared call failed: {e}")))))
                        .boxed()
                        .shared();
                    flights.insert(key, Box::new(flight.clone()));
                    (flight, false)
                }
            }
        };
        if joined {
            crate::metrics::call_joined(R::NAME);
        }
        (flight.await, joined)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use etcdgate_proto::etcdserverpb::{AuthenticateRequest, AuthenticateResponse};
    use tokio::sync::watch;

    use super::*;
    use crate::rpc::Authenticate;

    fn login(password: &str) -> AuthenticateRequest {
        AuthenticateRequest { name: "app".to_string(), password: password.to_string() }
    }

    /// Calls to etcd made, and a forward that answers token-N (N counting those calls) once
    /// `release` is true, or refuses a wrong password.
    fn etcd(
        calls: &Arc<AtomicUsize>,
        release: &watch::Receiver<bool>,
        password: &'static str,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<AuthenticateResponse, Status>> {
        let (calls, mut release) = (calls.clone(), release.clone());
        move || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                let _ = release.wait_for(|released| *released).await;
                match password {
                    "right" => Ok(AuthenticateResponse { token: format!("token-{n}"), ..Default::default() }),
                    _ => Err(Status::invalid_argument("etcdserver: authentication failed, invalid user ID or password")),
                }
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn identical_calls_in_flight_share_one_answer_and_later_ones_ask_again() {
        let shared = SharedCalls::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, released) = watch::channel(false);
        let ctx = CallContext::default();
        let (right, wrong) = (login("right"), login("wrong"));
        let (first, second, third, refused, ()) = futures::join!(
            shared.call::<Authenticate>(&ctx, &right, etcd(&calls, &released, "right")),
            shared.call::<Authenticate>(&ctx, &right, etcd(&calls, &released, "right")),
            shared.call::<Authenticate>(&ctx, &right, etcd(&calls, &released, "right")),
            shared.call::<Authenticate>(&ctx, &wrong, etcd(&calls, &released, "wrong")),
            async { release.send_replace(true); },
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one call for the right password, one for the wrong one");
        assert_eq!((first.1, second.1, third.1, refused.1), (false, true, true, false));
        for (result, _) in [&first, &second, &third] {
            assert_eq!(result.as_ref().expect("a token").token, "token-1");
        }
        assert!(refused.0.expect_err("refused").message().contains("authentication failed"));
        assert!(shared.flights.lock().unwrap().is_empty(), "nothing kept once etcd answered");

        let (later, joined) = shared.call::<Authenticate>(&ctx, &right, etcd(&calls, &released, "right")).await;
        assert_eq!((later.expect("a token").token.as_str(), joined), ("token-3", false), "a later call asks etcd again");
    }

    #[tokio::test]
    async fn the_call_goes_on_for_the_others_when_the_client_that_started_it_goes_away() {
        let shared = SharedCalls::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, released) = watch::channel(false);
        let ctx = CallContext::default();
        let right = login("right");
        let mut first = Box::pin(shared.call::<Authenticate>(&ctx, &right, etcd(&calls, &released, "right")));
        assert!(futures::poll!(first.as_mut()).is_pending());
        drop(first);
        let (second, ()) = futures::join!(
            shared.call::<Authenticate>(&ctx, &right, etcd(&calls, &released, "right")),
            async { release.send_replace(true); },
        );
        assert_eq!((second.0.expect("a token").token.as_str(), second.1), ("token-1", true));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}

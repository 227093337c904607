//! Whose credentials the console's calls carry: etcdgate's own etcd user (`--user`: the token
//! attached where etcd's auth asks for one, and a new one got once when etcd refuses it), or
//! the token of the person asking (the key browser reads only what they may read).

use etcdgate_upstream::login::{token_refused, Login};
use etcdgate_upstream::{Pool, NOT_SENT};
use tonic::Status;

/// A request carrying `token`, if there is one.
pub(crate) fn with_token<T>(message: T, token: &Option<String>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = token.as_deref().and_then(|t| t.parse().ok()) {
        request.metadata_mut().insert("token", value);
    }
    request
}

/// Whose credentials a call carries.
#[derive(Clone, Copy, Debug)]
pub enum Credentials<'a> {
    /// etcdgate's own login (`--user`), if it has one.
    Gateway(Option<&'a Login>),
    /// A token from the person asking (as etcd's HTTP gateway takes it, `Authorization`), if any.
    Token(Option<&'a str>),
}

/// Runs `call` with the token `credentials` give.
pub(crate) async fn call_as<T, F, Fut>(pool: &Pool, credentials: Credentials<'_>, call: F) -> Result<T, Status>
where
    F: Fn(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    match credentials {
        Credentials::Gateway(login) => as_gateway(pool, login, call).await,
        Credentials::Token(token) => call(token.map(str::to_string)).await,
    }
}

/// Runs `call` with etcdgate's token; once more with a new one if etcd refuses the token.
pub(crate) async fn as_gateway<T, F, Fut>(pool: &Pool, login: Option<&Login>, call: F) -> Result<T, Status>
where
    F: Fn(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let Some(login) = login else { return call(None).await };
    let token = login.token(pool).await;
    match call(token.clone()).await {
        Err(status) if token_refused(&status) => {
            login.renew(pool, token.as_deref()).await;
            call(login.token(pool).await).await
        }
        result => result,
    }
}

/// What went wrong, in etcd's words or the connection's.
pub(crate) fn status_message(status: &Status) -> String {
    match status.message().trim_start_matches(NOT_SENT) {
        "" => format!("{:?}", status.code()),
        message => message.to_string(),
    }
}

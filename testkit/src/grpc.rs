//! SciStream's control calls made by hand, as its own client makes them
//! (`req` and `hello` at once, then `update`), for tests that need a step
//! the client library does in one go.

use scistream_protocol::pb::{Hello, Request, UpdateTargets};

/// `req` + `hello` of `num_conn` connections (the receivers in the hello);
/// the session's listeners.
pub async fn open(
    c: &scistream_client::Connection,
    uid: &str,
    role: &str,
    num_conn: i32,
    receivers: &[&str],
) -> Result<Vec<String>, tonic::Status> {
    let mut rc = c.client.clone();
    let r = Request {
        uid: uid.into(),
        role: role.into(),
        num_conn,
        rate: 0,
        protocol: String::new(),
    };
    let pending = tokio::spawn(async move { rc.req(r).await });
    let h = c
        .client
        .clone()
        .hello(Hello {
            uid: uid.into(),
            role: role.into(),
            prod_listeners: receivers.iter().map(|s| s.to_string()).collect(),
        })
        .await;
    let r = pending
        .await
        .map_err(|e| tonic::Status::internal(format!("the req task failed: {e}")))??;
    h?;
    Ok(r.into_inner().listeners)
}

/// `update` of the session's targets.
pub async fn update(
    c: &scistream_client::Connection,
    uid: &str,
    role: &str,
    targets: &[&str],
) -> Result<(), tonic::Status> {
    c.client
        .clone()
        .update(UpdateTargets {
            uid: uid.into(),
            remote_listeners: targets.iter().map(|s| s.to_string()).collect(),
            role: role.into(),
        })
        .await
        .map(|_| ())
}

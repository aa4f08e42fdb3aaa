//! The calling side: this node's [`Remote`], through which `Users` asks a user's owner.
//!
//! One HTTP/2 channel per peer address, connected lazily on first use and kept (tonic
//! reconnects it when it drops); plain `http://`, or `https://` when this node serves TLS, with
//! this node's certificate as its client certificate. Each call presents the cluster secret,
//! carries the caller's principal (the one the gate admitted on this task; else this node's own,
//! for the push hub), and gives up after `cluster.handoff_timeout` (at most
//! `actors::CALL_TIMEOUT`), so that a dead owner costs one hand-off wait, not more.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actors::session::UserView;
use actors::users::{Peer, Remote};
use common::{ApiError, Config, RecQuery, Recommendations};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint, Uri};

use super::pb::users_client::UsersClient;
use super::pb::{JsonReply, RecommendRequest, UserRequest};
use super::{PRINCIPAL_KEY, api_error, encode_principal};
use crate::auth::node::NODE_SECRET_KEY;
use crate::policy::{Principal, caller};

/// How long opening a connection to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often an idle channel is pinged, so that a dead peer is noticed between requests.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Largest answer accepted (a GDPR export can be large).
const MAX_REPLY_BYTES: usize = 64 << 20;

pub struct Client {
    /// This node's own principal (see [`Principal::node`]).
    node: Principal,
    secret: Option<AsciiMetadataValue>,
    timeout: Duration,
    /// `None`: plain HTTP/2. Else the TLS client config, or why it could not be built.
    tls: Option<Result<Arc<rustls::ClientConfig>, String>>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Client {
    pub fn new(config: &Config) -> Self {
        let secret = config.cluster.secret.as_ref().and_then(|s| {
            s.0.parse()
                .inspect_err(|_| tracing::error!("cluster.secret is not a valid header value"))
                .ok()
        });
        let tls = config.server.tls.cert.is_some().then(|| {
            crate::tls::client_config(&config.server.tls)
                .map(Arc::new)
                .map_err(|e| {
                    tracing::error!(error = %e, "cannot call other nodes over TLS");
                    e.to_string()
                })
        });
        Self {
            node: Principal::node(&config.cluster.node_id),
            secret,
            timeout: config.cluster.handoff_timeout.min(actors::CALL_TIMEOUT),
            tls,
            channels: Mutex::default(),
        }
    }

    /// The channel to `address`, created on first use.
    fn channel(&self, address: &str) -> Result<Channel, ApiError> {
        if let Some(channel) = self.channels.lock().get(address) {
            return Ok(channel.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| ApiError::internal(format!("peer address {address}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEP_ALIVE)
            .keep_alive_while_idle(true);
        let channel = match &self.tls {
            None => endpoint.connect_lazy(),
            Some(Ok(config)) => {
                let config = config.clone();
                endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
                    connect_tls(config.clone(), uri)
                }))
            }
            Some(Err(why)) => {
                return Err(ApiError::unavailable(format!(
                    "this node cannot call other nodes over TLS: {why}"
                )));
            }
        };
        Ok(self
            .channels
            .lock()
            .entry(address.to_owned())
            .or_insert(channel)
            .clone())
    }

    /// Calls `rpc` on `to` with this node's credentials and the caller's principal; the JSON of
    /// the answer.
    async fn call<M, F, Fut>(&self, to: &Peer, message: M, rpc: F) -> Result<Vec<u8>, ApiError>
    where
        F: FnOnce(UsersClient<Channel>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<JsonReply>, tonic::Status>>,
    {
        let client =
            UsersClient::new(self.channel(&to.address)?).max_decoding_message_size(MAX_REPLY_BYTES);
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        let principal = encode_principal(&caller().unwrap_or_else(|| self.node.clone()));
        let metadata = request.metadata_mut();
        metadata.insert(
            PRINCIPAL_KEY,
            principal
                .parse()
                .map_err(|_| ApiError::internal("an encoded principal is ASCII"))?,
        );
        if let Some(secret) = &self.secret {
            metadata.insert(NODE_SECRET_KEY, secret.clone());
        }
        // The trace continues on the owner (W3C `traceparent`; nothing when tracing is off).
        for (key, value) in common::telemetry::trace_headers() {
            if let (Ok(key), Ok(value)) = (
                key.parse::<tonic::metadata::AsciiMetadataKey>(),
                value.parse::<AsciiMetadataValue>(),
            ) {
                metadata.insert(key, value);
            }
        }
        match tokio::time::timeout(self.timeout, rpc(client, request)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner().json),
            Ok(Err(status)) => Err(api_error(&to.node_id, &status)),
            Err(_) => Err(ApiError::unavailable(format!(
                "node {} did not answer within {:?}",
                to.node_id, self.timeout
            ))),
        }
    }
}

fn from_json<T: DeserializeOwned>(to: &Peer, json: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(json).map_err(|e| {
        ApiError::internal(format!(
            "node {} sent an unreadable answer: {e}",
            to.node_id
        ))
    })
}

fn user_request(user_id: &str) -> UserRequest {
    UserRequest {
        user_id: user_id.to_owned(),
    }
}

#[tonic::async_trait]
impl Remote for Client {
    async fn recommend(
        &self,
        to: &Peer,
        user_id: &str,
        query: &RecQuery,
    ) -> Result<Arc<Recommendations>, ApiError> {
        let message = RecommendRequest {
            user_id: user_id.to_owned(),
            k: u32::try_from(query.k).unwrap_or(u32::MAX),
            category: query.category.clone(),
            diversity_thousandths: u32::from(query.diversity.thousandths()),
        };
        let json = self
            .call(to, message, |mut c, r| async move { c.recommend(r).await })
            .await?;
        from_json(to, &json).map(Arc::new)
    }

    async fn get(&self, to: &Peer, user_id: &str) -> Result<Option<UserView>, ApiError> {
        let json = self
            .call(to, user_request(user_id), |mut c, r| async move {
                c.get_user(r).await
            })
            .await?;
        from_json(to, &json)
    }

    async fn erase(&self, to: &Peer, user_id: &str) -> Result<(), ApiError> {
        self.call(to, user_request(user_id), |mut c, r| async move {
            c.erase_user(r).await
        })
        .await
        .map(drop)
    }

    async fn export(&self, to: &Peer, user_id: &str) -> Result<serde_json::Value, ApiError> {
        let json = self
            .call(to, user_request(user_id), |mut c, r| async move {
                c.export_user(r).await
            })
            .await?;
        from_json(to, &json)
    }
}

/// Connects to a peer over TLS (rustls, ALPN `h2`), checking its certificate against the host
/// of its advertised address.
async fn connect_tls(
    config: Arc<rustls::ClientConfig>,
    uri: Uri,
) -> std::io::Result<TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>> {
    let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
    let host = uri
        .host()
        .ok_or_else(|| invalid(format!("no host in {uri}")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(host.clone()).map_err(|e| invalid(format!("{host}: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    Ok(TokioIo::new(connector.connect(name, tcp).await?))
}

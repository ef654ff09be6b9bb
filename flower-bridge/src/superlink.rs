//! A SuperLink's Fleet API, served to unchanged `flower-supernode`s (flwr 1.42).
//!
//! The Fleet API is protobuf bodies POSTed to `/v1/fleet/<rpc>` over HTTP/1.1.
//! A SuperNode registers its public key, activates, heartbeats, and polls
//! `pull-messages`; a message's content it fetches object by object
//! (`pull-object`, see [`crate::objects`]), then confirms; its reply it
//! announces with `push-messages` and uploads object by object
//! (`push-object`). It runs its ClientApp from the run's FAB, which it gets
//! through `get-run` and `get-fab`.
//!
//! [`SuperLink`] keeps that state for one run and gives the host a
//! [`NodeHandle`] per activated node, through which it sends a message and
//! awaits the reply's objects. Every request is authenticated as Flower's
//! SuperLink does it: headers `flwr-public-key` (base64 PEM), `flwr-timestamp`
//! (ISO 8601, at most 5 s ahead or 305 s old) and `flwr-signature` (base64
//! DER ECDSA with SHA-256 over the timestamp, on P-384, the curve a SuperNode
//! makes its own key on, or P-256); the key must be the node's own,
//! and with an allow-list only listed keys may register. Everything a node
//! sends is bounded: registered nodes at most the number the host gives,
//! one body at most [`MAX_BODY`], one reply at most
//! [`MAX_REPLY_OBJECTS`] objects and [`MAX_BODY`] bytes in all, and only the
//! objects the reply's tree announced are taken.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use fedcore::model::ModelSpec;
use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use p256::pkcs8::DecodePublicKey as _;
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};

use crate::objects::{self, Objects, Outgoing};
use crate::proto::{self, Metadata, ObjectTree};

/// Largest request body (Flower's own limit for a message).
pub const MAX_BODY: usize = 512 * 1024 * 1024;
/// Most objects one reply may announce.
pub const MAX_REPLY_OBJECTS: usize = 4096;
/// How far a request's timestamp may run ahead of our clock.
const AHEAD: f64 = 5.0;
/// How old a request's timestamp may be.
const OLD: f64 = 305.0;
/// Heartbeats a node may miss before it counts as gone (Flower's patience).
const PATIENCE: f64 = 2.0;
/// Extra time beyond the missed heartbeats.
const GRACE: Duration = Duration::from_secs(5);
/// Our run's id (there is one run: the federation's).
pub const RUN_ID: u64 = 1;
/// The SuperLink's node id, the source of every instruction.
const SUPERLINK_NODE: u64 = 1;

/// The run's app: the FAB every node runs.
#[derive(Debug, Clone)]
pub struct Fab {
    /// The bundle's bytes, as `flwr build` wrote them.
    pub content: Vec<u8>,
    /// Its SHA-256, hex.
    pub hash: String,
    /// `publisher/name`, from its pyproject.toml.
    pub id: String,
    /// Its version, from its pyproject.toml.
    pub version: String,
}

/// Why a FAB cannot be used.
#[derive(Debug, Error)]
pub enum FabError {
    /// Not a zip archive.
    #[error("not a FAB (a zip archive from `flwr build`): {0}")]
    Zip(#[from] zip::result::ZipError),
    /// Its pyproject.toml cannot be read.
    #[error("its pyproject.toml: {0}")]
    Project(String),
}

impl Fab {
    /// Reads a FAB's identity from its bytes.
    pub fn new(content: Vec<u8>) -> Result<Self, FabError> {
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&content))?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut archive.by_name("pyproject.toml")?, &mut text)
            .map_err(|e| FabError::Project(e.to_string()))?;
        let project: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| FabError::Project(e.to_string()))?;
        let project = toml::Value::Table(project);
        let field = |path: &[&str]| -> Result<String, FabError> {
            let mut at = &project;
            for key in path {
                at = at
                    .get(key)
                    .ok_or_else(|| FabError::Project(format!("no {}", path.join("."))))?;
            }
            at.as_str()
                .map(str::to_string)
                .ok_or_else(|| FabError::Project(format!("{} is not a string", path.join("."))))
        };
        let publisher = field(&["tool", "flwr", "app", "publisher"])?;
        let name = field(&["project", "name"])?;
        let version = field(&["project", "version"])?;
        drop(archive);
        Ok(Fab {
            hash: objects::object_id(&content),
            content,
            id: format!("{publisher}/{name}"),
            version,
        })
    }
}

/// What a message asks of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Train from the model sent (`train`).
    Train,
    /// Evaluate the model sent (`evaluate`).
    Evaluate,
}

impl Ask {
    fn message_type(self) -> &'static str {
        match self {
            Ask::Train => "train",
            Ask::Evaluate => "evaluate",
        }
    }
}

/// A node's reply: its objects, rooted at `message_id`.
#[derive(Debug)]
pub struct Reply {
    /// The reply message's object id.
    pub message_id: String,
    /// Its objects.
    pub objects: Objects,
    /// Bytes the node sent for it.
    pub bytes: u64,
}

/// Why a message to a node got no reply.
#[derive(Debug, Error, PartialEq)]
pub enum NodeError {
    /// It deactivated, unregistered or stopped heartbeating.
    #[error("the SuperNode left: {0}")]
    Gone(String),
    /// Its reply broke the protocol.
    #[error("{0}")]
    Protocol(String),
}

/// A node as the host addresses it.
pub struct NodeHandle {
    /// Its id.
    pub node_id: u64,
    link: Arc<Link>,
    gone: watch::Receiver<Option<String>>,
}

impl NodeHandle {
    /// Sends `params` (of `spec`) for round `round` as `ask`, and waits for the reply.
    pub async fn ask(
        &mut self,
        ask: Ask,
        spec: &ModelSpec,
        params: &[f32],
        round: u32,
        ttl: Duration,
    ) -> Result<Reply, NodeError> {
        let created_at = unix_now();
        let metadata = Metadata {
            run_id: RUN_ID,
            src_node_id: SUPERLINK_NODE,
            dst_node_id: self.node_id,
            group_id: round.to_string(),
            ttl: ttl.as_secs_f64(),
            message_type: ask.message_type().into(),
            created_at,
            ..Metadata::default()
        };
        let outgoing = objects::instruction(spec, params, round, metadata);
        let (tx, rx) = oneshot::channel();
        self.link.queue(self.node_id, outgoing, tx)?;
        tokio::select! {
            reply = rx => reply.unwrap_or_else(|_| Err(NodeError::Gone("the SuperLink stopped".into()))),
            why = gone(&mut self.gone) => Err(NodeError::Gone(why)),
        }
    }

    /// Resolves when the node leaves, with why.
    pub async fn gone(&mut self) -> String {
        gone(&mut self.gone).await
    }

    /// Bytes of instructions the node has pulled so far (messages and objects).
    pub fn bytes_pulled(&self) -> u64 {
        self.link.with_node(self.node_id, |n| n.pulled).unwrap_or(0)
    }
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

async fn gone(watch: &mut watch::Receiver<Option<String>>) -> String {
    loop {
        if let Some(why) = watch.borrow_and_update().clone() {
            return why;
        }
        if watch.changed().await.is_err() {
            return "the SuperLink stopped".into();
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A node's state.
struct Node {
    key: Vec<u8>,
    active: bool,
    heartbeat: Duration,
    heard: Instant,
    gone: watch::Sender<Option<String>>,
    /// The instruction waiting to be pulled, or pulled and not yet answered.
    instruction: Option<Outgoing>,
    delivered: bool,
    /// Where the reply goes.
    waiting: Option<oneshot::Sender<Result<Reply, NodeError>>>,
    /// The reply being uploaded.
    upload: Option<Upload>,
    pulled: u64,
}

struct Upload {
    message_id: String,
    session: String,
    needed: HashSet<String>,
    objects: Objects,
    bytes: u64,
}

/// The shared state behind every request.
struct Link {
    fab: Fab,
    allowed: Option<HashSet<Vec<u8>>>,
    /// Most nodes registered at once (each registration with a new key is one).
    max_nodes: usize,
    state: Mutex<Nodes>,
    activated: mpsc::Sender<NodeHandle>,
    this: std::sync::Weak<Link>,
}

#[derive(Default)]
struct Nodes {
    by_id: HashMap<u64, Node>,
    next_session: u64,
}

/// A refusal, as the HTTP response a node gets.
#[derive(Debug, Error)]
enum Refusal {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Bad(String),
    #[error("{0}")]
    Unknown(String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = match self {
            Refusal::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Refusal::Bad(_) => StatusCode::BAD_REQUEST,
            Refusal::Unknown(_) => StatusCode::NOT_FOUND,
        };
        // Flower's SuperNode prints the reason of an error it cannot act on.
        let body = serde_json::json!({ "code": status.as_u16(), "message": self.to_string() });
        (status, body.to_string()).into_response()
    }
}

impl Link {
    fn lock(&self) -> std::sync::MutexGuard<'_, Nodes> {
        // Every update is a handful of field writes on one node: still sound after a panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_node<T>(&self, id: u64, f: impl FnOnce(&mut Node) -> T) -> Option<T> {
        self.lock().by_id.get_mut(&id).map(f)
    }

    fn queue(
        &self,
        id: u64,
        outgoing: Outgoing,
        reply: oneshot::Sender<Result<Reply, NodeError>>,
    ) -> Result<(), NodeError> {
        self.with_node(id, |node| {
            node.instruction = Some(outgoing);
            node.delivered = false;
            node.upload = None;
            node.waiting = Some(reply);
        })
        .ok_or_else(|| NodeError::Gone("it is not registered".into()))
    }

    /// Marks `id` gone, failing what waits on it.
    fn leave(nodes: &mut Nodes, id: u64, why: &str) {
        if let Some(node) = nodes.by_id.get_mut(&id)
            && node.active
        {
            node.active = false;
            node.instruction = None;
            node.upload = None;
            if let Some(waiting) = node.waiting.take() {
                let _ = waiting.send(Err(NodeError::Gone(why.into())));
            }
            let _ = node.gone.send(Some(why.into()));
        }
    }

    /// Nodes that missed their heartbeats are gone.
    fn sweep(&self) {
        let mut nodes = self.lock();
        let late: Vec<u64> = nodes
            .by_id
            .iter()
            .filter(|(_, n)| n.active && n.heard.elapsed() > n.heartbeat.mul_f64(PATIENCE) + GRACE)
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            Link::leave(&mut nodes, id, "it stopped heartbeating");
        }
    }

    /// Checks the request's signature, and that its key is `node`'s (when given).
    fn authenticate(&self, headers: &HeaderMap, node: Option<u64>) -> Result<Signer, Refusal> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| Refusal::Unauthorized(format!("no {name} header")))
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = b64
            .decode(header("flwr-public-key")?)
            .map_err(|_| Refusal::Unauthorized("flwr-public-key is not base64".into()))?;
        let signature = b64
            .decode(header("flwr-signature")?)
            .map_err(|_| Refusal::Unauthorized("flwr-signature is not base64".into()))?;
        let timestamp = header("flwr-timestamp")?;
        let signed = chrono::DateTime::parse_from_rfc3339(timestamp)
            .map_err(|e| Refusal::Unauthorized(format!("flwr-timestamp {timestamp:?}: {e}")))?;
        let age = unix_now() - signed.timestamp_micros() as f64 / 1e6;
        if !(-AHEAD..OLD).contains(&age) {
            return Err(Refusal::Unauthorized(format!(
                "flwr-timestamp is {age:.0} s old; a request must be signed within the last {OLD} s"
            )));
        }
        let pem = std::str::from_utf8(&key)
            .map_err(|_| Refusal::Unauthorized("the public key is not PEM".into()))?;
        let verifying = PublicKey::from_pem(pem)
            .map_err(|e| Refusal::Unauthorized(format!("the public key: {e}")))?;
        if !verifying.verifies(timestamp.as_bytes(), &signature) {
            return Err(Refusal::Unauthorized(
                "flwr-signature is not this key's signature of flwr-timestamp".into(),
            ));
        }
        if let Some(id) = node {
            let owned = self.with_node(id, |n| n.key == key).unwrap_or(false);
            if !owned {
                return Err(Refusal::Unauthorized(format!(
                    "node {id} is not this key's (or not registered)"
                )));
            }
        }
        Ok(Signer {
            pem: key,
            point: verifying.point(),
        })
    }
}

/// A SuperNode's public key: Flower makes P-384 keys, and admits others.
enum PublicKey {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

impl PublicKey {
    fn from_pem(pem: &str) -> Result<Self, String> {
        if let Ok(key) = p384::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Ok(PublicKey::P384(key));
        }
        p256::ecdsa::VerifyingKey::from_public_key_pem(pem)
            .map(PublicKey::P256)
            .map_err(|e| format!("not a P-384 or P-256 public key: {e}"))
    }

    /// The key as an uncompressed curve point (what an allow-list compares).
    fn point(&self) -> Vec<u8> {
        match self {
            PublicKey::P256(k) => k.to_encoded_point(false).as_bytes().to_vec(),
            PublicKey::P384(k) => k.to_encoded_point(false).as_bytes().to_vec(),
        }
    }

    /// Whether `der` is this key's ECDSA signature of SHA-256(`message`).
    fn verifies(&self, message: &[u8], der: &[u8]) -> bool {
        let digest = Sha256::digest(message);
        match self {
            PublicKey::P256(k) => p256::ecdsa::DerSignature::try_from(der)
                .is_ok_and(|s| k.verify_prehash(&digest, &s).is_ok()),
            PublicKey::P384(k) => p384::ecdsa::DerSignature::try_from(der)
                .is_ok_and(|s| k.verify_prehash(&digest, &s).is_ok()),
        }
    }
}

/// Who signed a request: its key as sent (PEM bytes) and as a curve point.
struct Signer {
    pem: Vec<u8>,
    point: Vec<u8>,
}

/// Reads the public keys (PEM, one or more `PUBLIC KEY` blocks) of an allow-list.
pub fn read_keys(text: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut keys = Vec::new();
    for block in text.split_inclusive("-----END PUBLIC KEY-----") {
        let Some(start) = block.find("-----BEGIN PUBLIC KEY-----") else {
            if block.trim().is_empty() {
                continue;
            }
            return Err(format!(
                "text that is not a PEM public key: {:?}",
                block.trim()
            ));
        };
        keys.push(PublicKey::from_pem(&block[start..])?.point());
    }
    if keys.is_empty() {
        return Err("no PEM public key in it".into());
    }
    Ok(keys)
}

/// A SuperLink for one run of `fab`.
pub struct SuperLink {
    link: Arc<Link>,
}

impl SuperLink {
    /// A SuperLink handing out `fab`, admitting only `allowed` public keys
    /// (curve points, as [`read_keys`] gives them) when given, and at most
    /// `max_nodes` registered nodes; each node that activates arrives on the
    /// receiver.
    pub fn new(
        fab: Fab,
        allowed: Option<Vec<Vec<u8>>>,
        max_nodes: usize,
    ) -> (Self, mpsc::Receiver<NodeHandle>) {
        let (activated, nodes) = mpsc::channel(64);
        let link = Arc::new_cyclic(|this| Link {
            fab,
            allowed: allowed.map(|keys| keys.into_iter().collect()),
            max_nodes,
            state: Mutex::default(),
            activated,
            this: this.clone(),
        });
        (SuperLink { link }, nodes)
    }

    /// The HTTP routes of the Fleet API.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/fleet/{rpc}", axum::routing::post(fleet))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(Arc::clone(&self.link))
    }

    /// Serves the Fleet API on `listener` (over TLS with `tls`) until the
    /// task is dropped, and finds nodes that stopped heartbeating.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        tls: Option<fedhost::tls::ServerTls>,
    ) -> std::io::Result<()> {
        let link = Arc::clone(&self.link);
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                link.sweep();
            }
        });
        let router = self.router();
        let served = match tls {
            Some(tls) => {
                let incoming =
                    fedhost::tls::Incoming::new(listener, tls.server_only(&[b"http/1.1"]))?;
                axum::serve(crate::tls::FleetListener(incoming), router).await
            }
            None => axum::serve(listener, router).await,
        };
        sweeper.abort();
        served
    }
}

fn decode<T: prost::Message + Default>(body: &[u8]) -> Result<T, Refusal> {
    T::decode(body)
        .map_err(|e| Refusal::Bad(format!("the body is not the request's protobuf: {e}")))
}

fn reply(msg: &impl prost::Message) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/protobuf")],
        msg.encode_to_vec(),
    )
        .into_response()
}

async fn fleet(
    State(link): State<Arc<Link>>,
    Path(rpc): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match handle(&link, &rpc, &headers, &body) {
        Ok(response) => response,
        Err(refusal) => {
            tracing::warn!(rpc, "a SuperNode's request was refused: {refusal}");
            refusal.into_response()
        }
    }
}

fn node_of(node: Option<&proto::Node>) -> Result<u64, Refusal> {
    node.map(|n| n.node_id)
        .ok_or_else(|| Refusal::Bad("the request names no node".into()))
}

fn handle(link: &Link, rpc: &str, headers: &HeaderMap, body: &[u8]) -> Result<Response, Refusal> {
    match rpc {
        "register-node" => {
            let req: proto::RegisterNodeFleetRequest = decode(body)?;
            let Signer { pem: key, point } = link.authenticate(headers, None)?;
            if req.public_key != key {
                return Err(Refusal::Unauthorized(
                    "the key registered is not the key that signed".into(),
                ));
            }
            if link
                .allowed
                .as_ref()
                .is_some_and(|keys| !keys.contains(&point))
            {
                return Err(Refusal::Unauthorized(
                    "this SuperNode's public key is not on the server's list (--flower-node-keys)"
                        .into(),
                ));
            }
            let mut nodes = link.lock();
            let existing = nodes
                .by_id
                .iter()
                .find(|(_, n)| n.key == key)
                .map(|(&id, _)| id);
            let id = match existing {
                Some(id) => id,
                None if nodes.by_id.len() >= link.max_nodes => {
                    return Err(Refusal::Unauthorized(format!(
                        "the SuperLink holds as many nodes as it takes ({}); unregister one first",
                        link.max_nodes
                    )));
                }
                None => {
                    let mut id = rand::random::<u64>() >> 1;
                    while id <= SUPERLINK_NODE || nodes.by_id.contains_key(&id) {
                        id = rand::random::<u64>() >> 1;
                    }
                    let (gone, _) = watch::channel(None);
                    nodes.by_id.insert(
                        id,
                        Node {
                            key,
                            active: false,
                            heartbeat: Duration::from_secs(30),
                            heard: Instant::now(),
                            gone,
                            instruction: None,
                            delivered: false,
                            waiting: None,
                            upload: None,
                            pulled: 0,
                        },
                    );
                    id
                }
            };
            Ok(reply(&proto::RegisterNodeFleetResponse { node_id: id }))
        }
        "activate-node" => {
            let req: proto::ActivateNodeRequest = decode(body)?;
            let key = link.authenticate(headers, None)?.pem;
            if req.public_key != key {
                return Err(Refusal::Unauthorized(
                    "the key activated is not the key that signed".into(),
                ));
            }
            if !(10.0..=1800.0).contains(&req.heartbeat_interval) {
                return Err(Refusal::Bad(format!(
                    "heartbeat interval {} s is outside 10 to 1800 s",
                    req.heartbeat_interval
                )));
            }
            let mut nodes = link.lock();
            let Some((&id, node)) = nodes.by_id.iter_mut().find(|(_, n)| n.key == key) else {
                return Err(Refusal::Unknown(
                    "this key is not registered: register first".into(),
                ));
            };
            node.heartbeat = Duration::from_secs_f64(req.heartbeat_interval);
            node.heard = Instant::now();
            if !node.active {
                node.active = true;
                let (gone, watching) = watch::channel(None);
                node.gone = gone;
                let handle = NodeHandle {
                    node_id: id,
                    link: link
                        .this
                        .upgrade()
                        .ok_or_else(|| Refusal::Unknown("shutting down".into()))?,
                    gone: watching,
                };
                if link.activated.try_send(handle).is_err() {
                    node.active = false;
                    return Err(Refusal::Unknown(
                        "the server takes no more nodes now".into(),
                    ));
                }
            }
            Ok(reply(&proto::ActivateNodeResponse { node_id: id }))
        }
        "deactivate-node" | "unregister-node" => {
            let id = if rpc == "deactivate-node" {
                decode::<proto::DeactivateNodeRequest>(body)?.node_id
            } else {
                decode::<proto::UnregisterNodeFleetRequest>(body)?.node_id
            };
            link.authenticate(headers, Some(id))?;
            let mut nodes = link.lock();
            Link::leave(&mut nodes, id, "it deactivated");
            if rpc == "unregister-node" {
                nodes.by_id.remove(&id);
                return Ok(reply(&proto::UnregisterNodeFleetResponse {}));
            }
            Ok(reply(&proto::DeactivateNodeResponse {}))
        }
        "send-node-heartbeat" => {
            let req: proto::SendNodeHeartbeatRequest = decode(body)?;
            let id = node_of(req.node.as_ref())?;
            link.authenticate(headers, Some(id))?;
            let success = link
                .with_node(id, |n| {
                    n.heard = Instant::now();
                    if (10.0..=1800.0).contains(&req.heartbeat_interval) {
                        n.heartbeat = Duration::from_secs_f64(req.heartbeat_interval);
                    }
                    n.active
                })
                .unwrap_or(false);
            Ok(reply(&proto::SendNodeHeartbeatResponse { success }))
        }
        "pull-messages" => {
            let req: proto::PullMessagesRequest = decode(body)?;
            let id = node_of(req.node.as_ref())?;
            link.authenticate(headers, Some(id))?;
            let response = link
                .with_node(id, |n| {
                    n.heard = Instant::now();
                    match &n.instruction {
                        Some(out) if n.active && !n.delivered => {
                            n.delivered = true;
                            let response = proto::PullMessagesResponse {
                                reconnect: None,
                                messages_list: vec![out.message.clone()],
                                message_object_trees: vec![out.tree.clone()],
                            };
                            n.pulled += response.encoded_len() as u64;
                            response
                        }
                        _ => proto::PullMessagesResponse::default(),
                    }
                })
                .unwrap_or_default();
            Ok(reply(&response))
        }
        "pull-object" => {
            let req: proto::PullObjectRequest = decode(body)?;
            let id = node_of(req.node.as_ref())?;
            link.authenticate(headers, Some(id))?;
            let content = link
                .with_node(id, |n| {
                    let content = n
                        .instruction
                        .as_ref()
                        .and_then(|o| o.objects.contents.get(&req.object_id))
                        .cloned();
                    n.pulled += content.as_ref().map_or(0, |c| c.len() as u64);
                    content
                })
                .flatten();
            let response = match content {
                Some(object_content) => proto::PullObjectResponse {
                    object_found: true,
                    object_available: true,
                    object_content,
                },
                None => proto::PullObjectResponse::default(),
            };
            Ok(reply(&response))
        }
        "confirm-message-received" => {
            let req: proto::ConfirmMessageReceivedRequest = decode(body)?;
            let id = node_of(req.node.as_ref())?;
            link.authenticate(headers, Some(id))?;
            link.with_node(id, |n| {
                // The objects are no longer needed; the message is still awaited.
                if let Some(out) = n.instruction.as_mut()
                    && out.tree.object_id == req.message_object_id
                {
                    out.objects.contents.clear();
                }
            });
            Ok(reply(&proto::ConfirmMessageReceivedResponse {}))
        }
        "push-messages" => {
            let req: proto::PushMessagesRequest = decode(body)?;
            let id = node_of(req.node.as_ref())?;
            link.authenticate(headers, Some(id))?;
            let (Some(message), Some(tree)) =
                (req.messages_list.first(), req.message_object_trees.first())
            else {
                return Err(Refusal::Bad("push-messages carries no message".into()));
            };
            let mut needed = HashSet::new();
            collect(tree, &mut needed)?;
            let mut nodes = link.lock();
            let session = nodes.next_session;
            nodes.next_session += 1;
            let node = nodes
                .by_id
                .get_mut(&id)
                .ok_or_else(|| Refusal::Unknown(format!("node {id} is not registered")))?;
            let awaited = node.instruction.as_ref().map(|o| o.tree.object_id.clone());
            let replying_to = message
                .metadata
                .as_ref()
                .map(|m| m.reply_to_message_id.clone());
            if awaited.is_none() || awaited != replying_to {
                return Err(Refusal::Bad(
                    "this reply answers no message of ours that is awaited".into(),
                ));
            }
            let objects_to_push: Vec<String> = needed.iter().cloned().collect();
            node.upload = Some(Upload {
                message_id: tree.object_id.clone(),
                session: session.to_string(),
                needed,
                objects: Objects::default(),
                bytes: 0,
            });
            let response = proto::PushMessagesResponse {
                reconnect: Some(proto::Reconnect { reconnect: 5 }),
                results: HashMap::from([(tree.object_id.clone(), 0)]),
                objects_to_push,
                session_id: session.to_string(),
            };
            Ok(reply(&response))
        }
        "push-object" => {
            let req: proto::PushObjectRequest = decode(body)?;
            let id = node_of(req.node.as_ref())?;
            link.authenticate(headers, Some(id))?;
            let mut nodes = link.lock();
            let node = nodes
                .by_id
                .get_mut(&id)
                .ok_or_else(|| Refusal::Unknown(format!("node {id} is not registered")))?;
            let Some(upload) = node.upload.as_mut().filter(|u| u.session == req.session_id) else {
                return Err(Refusal::Bad(
                    "no reply of this session is being uploaded".into(),
                ));
            };
            if !upload.needed.contains(&req.object_id) {
                return Ok(reply(&proto::PushObjectResponse { stored: false }));
            }
            if objects::object_id(&req.object_content) != req.object_id {
                return Err(Refusal::Bad(format!(
                    "object {}'s content does not hash to its id",
                    req.object_id
                )));
            }
            upload.bytes += req.object_content.len() as u64;
            if upload.bytes > MAX_BODY as u64 {
                return Err(Refusal::Bad(format!("the reply exceeds {MAX_BODY} bytes")));
            }
            upload.needed.remove(&req.object_id);
            upload
                .objects
                .contents
                .insert(req.object_id, req.object_content);
            if upload.needed.is_empty()
                && let (Some(done), Some(waiting)) = (node.upload.take(), node.waiting.take())
            {
                node.instruction = None;
                let _ = waiting.send(Ok(Reply {
                    message_id: done.message_id,
                    objects: done.objects,
                    bytes: done.bytes,
                }));
            }
            Ok(reply(&proto::PushObjectResponse { stored: true }))
        }
        "get-run" => {
            let req: proto::GetRunRequest = decode(body)?;
            let id = node_of(req.node.as_ref())?;
            link.authenticate(headers, Some(id))?;
            if req.run_id != RUN_ID {
                return Err(Refusal::Unknown(format!(
                    "run {} is not this server's (run {RUN_ID})",
                    req.run_id
                )));
            }
            let fab = &link.fab;
            let run = proto::Run {
                run_id: RUN_ID,
                fab_id: fab.id.clone(),
                fab_version: fab.version.clone(),
                fab_hash: fab.hash.clone(),
                status: Some(proto::RunStatus {
                    status: "running".into(),
                    ..proto::RunStatus::default()
                }),
                series_id: RUN_ID,
                ..proto::Run::default()
            };
            Ok(reply(&proto::GetRunResponse { run: Some(run) }))
        }
        "get-fab" => {
            let req: proto::GetFabRequest = decode(body)?;
            let id = node_of(req.node.as_ref())?;
            link.authenticate(headers, Some(id))?;
            if req.hash_str != link.fab.hash {
                return Err(Refusal::Unknown(format!(
                    "no FAB {}; this run's is {}",
                    req.hash_str, link.fab.hash
                )));
            }
            let fab = proto::Fab {
                hash_str: link.fab.hash.clone(),
                content: link.fab.content.clone(),
                verifications: HashMap::new(),
            };
            Ok(reply(&proto::GetFabResponse { fab: Some(fab) }))
        }
        other => Err(Refusal::Unknown(format!("no Fleet API call {other:?}"))),
    }
}

/// Every id in `tree`, at most [`MAX_REPLY_OBJECTS`].
fn collect(tree: &ObjectTree, into: &mut HashSet<String>) -> Result<(), Refusal> {
    if into.len() >= MAX_REPLY_OBJECTS {
        return Err(Refusal::Bad(format!(
            "a reply may have at most {MAX_REPLY_OBJECTS} objects"
        )));
    }
    into.insert(tree.object_id.clone());
    for child in &tree.children {
        collect(child, into)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use p384::ecdsa::SigningKey;
    use p384::ecdsa::signature::hazmat::PrehashSigner as _;
    use p384::pkcs8::EncodePublicKey as _;
    use tower::ServiceExt as _;

    /// A SuperNode's identity: a P-384 key, as Flower makes one.
    struct Identity {
        key: SigningKey,
        pem: Vec<u8>,
    }

    impl Identity {
        fn new(seed: u8) -> Self {
            let key = SigningKey::from_bytes(&[seed; 48].into()).unwrap();
            let pem = key
                .verifying_key()
                .to_public_key_pem(p384::pkcs8::LineEnding::LF)
                .unwrap()
                .into_bytes();
            Identity { key, pem }
        }

        /// Headers signing `timestamp`, as a SuperNode sends them.
        fn sign(&self, timestamp: &str) -> [(&'static str, String); 3] {
            let b64 = base64::engine::general_purpose::STANDARD;
            let digest = Sha256::digest(timestamp.as_bytes());
            let signature: p384::ecdsa::Signature = self.key.sign_prehash(&digest).unwrap();
            [
                ("flwr-public-key", b64.encode(&self.pem)),
                ("flwr-timestamp", timestamp.to_string()),
                ("flwr-signature", b64.encode(signature.to_der().as_bytes())),
            ]
        }
    }

    fn now_iso(offset_seconds: i64) -> String {
        let at = chrono::DateTime::from_timestamp(unix_now() as i64 + offset_seconds, 0).unwrap();
        at.to_rfc3339()
    }

    fn superlink(allowed: Option<Vec<Vec<u8>>>) -> (SuperLink, mpsc::Receiver<NodeHandle>) {
        let fab = Fab {
            content: b"fab".to_vec(),
            hash: objects::object_id(b"fab"),
            id: "us/app".into(),
            version: "1.0.0".into(),
        };
        SuperLink::new(fab, allowed, 2)
    }

    /// Posts `body` to `rpc` with `headers`; the status and the body back.
    async fn post(
        link: &SuperLink,
        rpc: &str,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> (StatusCode, Vec<u8>) {
        let mut request = Request::post(format!("/v1/fleet/{rpc}"));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = link
            .router()
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, bytes.to_vec())
    }

    async fn register(
        link: &SuperLink,
        who: &Identity,
        headers: &[(&'static str, String)],
    ) -> (StatusCode, String) {
        let body = proto::RegisterNodeFleetRequest {
            public_key: who.pem.clone(),
        };
        let (status, bytes) = post(link, "register-node", headers, body.encode_to_vec()).await;
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn a_signed_node_registers_and_activates() {
        let (link, mut nodes) = superlink(None);
        let node = Identity::new(7);
        let (status, _) = register(&link, &node, &node.sign(&now_iso(0))).await;
        assert_eq!(status, StatusCode::OK);
        let activate = proto::ActivateNodeRequest {
            public_key: node.pem.clone(),
            heartbeat_interval: 30.0,
        };
        let (status, body) = post(
            &link,
            "activate-node",
            &node.sign(&now_iso(0)),
            activate.encode_to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let id = proto::ActivateNodeResponse::decode(body.as_slice())
            .unwrap()
            .node_id;
        assert_eq!(nodes.try_recv().unwrap().node_id, id);
        // Its run and FAB are this server's.
        let run = proto::GetRunRequest {
            node: Some(proto::Node { node_id: id }),
            run_id: RUN_ID,
        };
        let (status, body) = post(
            &link,
            "get-run",
            &node.sign(&now_iso(0)),
            run.encode_to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let run = proto::GetRunResponse::decode(body.as_slice())
            .unwrap()
            .run
            .unwrap();
        assert_eq!((run.fab_id.as_str(), run.fab_hash.len()), ("us/app", 64));
    }

    #[tokio::test]
    async fn bad_signatures_old_timestamps_and_borrowed_identities_are_refused() {
        let (link, mut nodes) = superlink(None);
        let node = Identity::new(7);
        let other = Identity::new(9);
        // Signed by another key than the one it sends.
        let mut forged = node.sign(&now_iso(0));
        forged[2] = other.sign(&now_iso(0))[2].clone();
        let (status, text) = register(&link, &node, &forged).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(text.contains("not this key's signature"), "{text}");
        // A signature of a timestamp ten minutes old (a replayed request).
        let (status, text) = register(&link, &node, &node.sign(&now_iso(-600))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            text.contains("s old; a request must be signed within the last 305 s"),
            "{text}"
        );
        // No headers at all.
        let (status, text) = register(&link, &node, &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(text.contains("no flwr-public-key header"), "{text}");
        // Registering another's key with one's own signature.
        let (status, text) = register(&link, &node, &other.sign(&now_iso(0))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(text.contains("not the key that signed"), "{text}");
        // Once registered, a node's id cannot be used under another key.
        let (status, body) = post(
            &link,
            "register-node",
            &node.sign(&now_iso(0)),
            proto::RegisterNodeFleetRequest {
                public_key: node.pem.clone(),
            }
            .encode_to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let id = proto::RegisterNodeFleetResponse::decode(body.as_slice())
            .unwrap()
            .node_id;
        let pull = proto::PullMessagesRequest {
            node: Some(proto::Node { node_id: id }),
            message_ids: Vec::new(),
        };
        let (status, body) = post(
            &link,
            "pull-messages",
            &other.sign(&now_iso(0)),
            pull.encode_to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(String::from_utf8_lossy(&body).contains("not this key's"));
        // A body that is not the request's protobuf.
        let (status, _) = post(
            &link,
            "pull-messages",
            &node.sign(&now_iso(0)),
            vec![0xff; 9],
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(nodes.try_recv().is_err(), "nobody activated");
    }

    #[tokio::test]
    async fn with_an_allow_list_only_listed_keys_register() {
        let listed = Identity::new(3);
        let unlisted = Identity::new(4);
        let keys = read_keys(std::str::from_utf8(&listed.pem).unwrap()).unwrap();
        let (link, _nodes) = superlink(Some(keys));
        let (status, text) = register(&link, &unlisted, &unlisted.sign(&now_iso(0))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(text.contains("not on the server's list"), "{text}");
        let (status, _) = register(&link, &listed, &listed.sign(&now_iso(0))).await;
        assert_eq!(status, StatusCode::OK);
        assert!(read_keys("not a key").is_err());
    }

    #[tokio::test]
    async fn registrations_beyond_the_bound_are_refused_and_a_known_key_keeps_its_id() {
        let (link, _nodes) = superlink(None);
        for seed in [1, 2] {
            let node = Identity::new(seed);
            assert_eq!(
                register(&link, &node, &node.sign(&now_iso(0))).await.0,
                StatusCode::OK
            );
        }
        let third = Identity::new(3);
        let (status, text) = register(&link, &third, &third.sign(&now_iso(0))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(text.contains("as many nodes as it takes (2)"), "{text}");
        // A node registering again is the same node, not one more.
        let first = Identity::new(1);
        assert_eq!(
            register(&link, &first, &first.sign(&now_iso(0))).await.0,
            StatusCode::OK
        );
    }
}

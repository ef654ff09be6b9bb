//! Our end of the Fleet API: the requests a SuperNode makes of a SuperLink.
//!
//! [`Fleet`] posts each call's protobuf to `/v1/fleet/<rpc>` over plain
//! HTTP/1.1 (a SuperLink started `--insecure`), signed as Flower's SuperNode
//! signs: a P-384 key of its own making, its public key as base64 PEM in
//! `flwr-public-key`, the current time in `flwr-timestamp` and an ECDSA
//! (SHA-256) signature of that time in `flwr-signature`. What a node does
//! with the messages is the host's (see [`crate::objects`] for their content).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use p384::ecdsa::SigningKey;
use p384::ecdsa::signature::hazmat::PrehashSigner as _;
use p384::pkcs8::EncodePublicKey as _;
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::proto::{self, Node, ObjectTree};
use crate::superlink::MAX_BODY;

/// Why a Fleet API call failed.
#[derive(Debug, Error)]
pub enum FleetError {
    /// The SuperLink could not be reached, or the connection broke.
    #[error("cannot reach the SuperLink at {addr}: {reason}")]
    Transport {
        /// Its address.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// The SuperLink answered with an error.
    #[error("the SuperLink refused {rpc} ({status}): {body}")]
    Refused {
        /// The call.
        rpc: &'static str,
        /// Its HTTP status.
        status: u16,
        /// Its reason, as the SuperLink gave it.
        body: String,
    },
    /// The answer is not the call's protobuf.
    #[error("the SuperLink's answer to {rpc} is not protobuf: {reason}")]
    Decode {
        /// The call.
        rpc: &'static str,
        /// Why.
        reason: String,
    },
}

/// A SuperNode's connection to a SuperLink: its address, its key, its node id.
#[derive(Clone)]
pub struct Fleet {
    addr: String,
    http: Client<HttpConnector, Full<Bytes>>,
    key: SigningKey,
    public_pem: Vec<u8>,
    node: Option<Node>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("addr", &self.addr)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Flower's heartbeat interval, seconds.
pub const HEARTBEAT: f64 = 30.0;

impl Fleet {
    /// A connection to the SuperLink at `addr` (host:port) with a fresh P-384 key.
    pub fn new(addr: &str) -> Self {
        let key = loop {
            // A random scalar is a valid key unless it is 0 or not below the
            // group order: vanishingly rare, and then we draw again.
            let bytes: [u8; 48] = rand::random();
            if let Ok(key) = SigningKey::from_bytes(&bytes.into()) {
                break key;
            }
        };
        let public_pem = key
            .verifying_key()
            .to_public_key_pem(p384::pkcs8::LineEnding::LF)
            .map(String::into_bytes)
            .unwrap_or_default();
        Fleet {
            addr: addr.to_string(),
            http: Client::builder(TokioExecutor::new()).build_http(),
            key,
            public_pem,
            node: None,
        }
    }

    /// This node's id, once activated.
    pub fn node_id(&self) -> Option<u64> {
        self.node.as_ref().map(|n| n.node_id)
    }

    fn node(&self) -> Option<Node> {
        self.node
    }

    /// The headers that sign a request made now.
    fn signed(&self) -> [(&'static str, String); 3] {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let timestamp = chrono::DateTime::from_timestamp_micros(now)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        let digest = Sha256::digest(timestamp.as_bytes());
        let b64 = base64::engine::general_purpose::STANDARD;
        let signature = match self.key.sign_prehash(&digest) {
            Ok(sig) => {
                let sig: p384::ecdsa::Signature = sig;
                b64.encode(sig.to_der().as_bytes())
            }
            Err(_) => String::new(),
        };
        [
            ("flwr-public-key", b64.encode(&self.public_pem)),
            ("flwr-timestamp", timestamp),
            ("flwr-signature", signature),
        ]
    }

    async fn call<R: prost::Message + Default>(
        &self,
        rpc: &'static str,
        request: &impl prost::Message,
    ) -> Result<R, FleetError> {
        let transport = |reason: String| FleetError::Transport {
            addr: self.addr.clone(),
            reason,
        };
        let mut builder = hyper::Request::post(format!("http://{}/v1/fleet/{rpc}", self.addr))
            .header("content-type", "application/protobuf")
            .header("accept", "application/protobuf");
        for (name, value) in self.signed() {
            builder = builder.header(name, value);
        }
        let body = Full::new(Bytes::from(request.encode_to_vec()));
        let request = builder.body(body).map_err(|e| transport(e.to_string()))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| transport(e.to_string()))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| transport(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(FleetError::Refused {
                rpc,
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
            });
        }
        R::decode(bytes).map_err(|e| FleetError::Decode {
            rpc,
            reason: e.to_string(),
        })
    }

    /// Registers this node's key and activates it; its node id, which
    /// [`Fleet::joined`] then makes this connection's.
    pub async fn join(&self) -> Result<u64, FleetError> {
        let public_key = self.public_pem.clone();
        let _: proto::RegisterNodeFleetResponse = self
            .call(
                "register-node",
                &proto::RegisterNodeFleetRequest {
                    public_key: public_key.clone(),
                },
            )
            .await?;
        let activated: proto::ActivateNodeResponse = self
            .call(
                "activate-node",
                &proto::ActivateNodeRequest {
                    public_key,
                    heartbeat_interval: HEARTBEAT,
                },
            )
            .await?;
        Ok(activated.node_id)
    }

    /// Speaks as node `node_id` from now on.
    pub fn joined(&mut self, node_id: u64) {
        self.node = Some(Node { node_id });
    }

    /// Says the node is alive; false if the SuperLink no longer knows it.
    pub async fn heartbeat(&self) -> Result<bool, FleetError> {
        let response: proto::SendNodeHeartbeatResponse = self
            .call(
                "send-node-heartbeat",
                &proto::SendNodeHeartbeatRequest {
                    node: self.node(),
                    heartbeat_interval: HEARTBEAT,
                },
            )
            .await?;
        Ok(response.success)
    }

    /// The next message for this node and its object tree, if any.
    pub async fn pull_message(&self) -> Result<Option<(proto::Message, ObjectTree)>, FleetError> {
        let response: proto::PullMessagesResponse = self
            .call(
                "pull-messages",
                &proto::PullMessagesRequest {
                    node: self.node(),
                    message_ids: Vec::new(),
                },
            )
            .await?;
        Ok(response
            .messages_list
            .into_iter()
            .zip(response.message_object_trees)
            .next())
    }

    /// One object of run `run_id`'s message (`None`: not there, or not yet).
    pub async fn pull_object(
        &self,
        run_id: u64,
        object_id: &str,
    ) -> Result<Option<Vec<u8>>, FleetError> {
        let response: proto::PullObjectResponse = self
            .call(
                "pull-object",
                &proto::PullObjectRequest {
                    node: self.node(),
                    run_id,
                    object_id: object_id.into(),
                },
            )
            .await?;
        Ok((response.object_found && response.object_available).then_some(response.object_content))
    }

    /// Confirms the message `message_id` arrived whole.
    pub async fn confirm(&self, run_id: u64, message_id: &str) -> Result<(), FleetError> {
        let _: proto::ConfirmMessageReceivedResponse = self
            .call(
                "confirm-message-received",
                &proto::ConfirmMessageReceivedRequest {
                    node: self.node(),
                    run_id,
                    message_object_id: message_id.into(),
                },
            )
            .await?;
        Ok(())
    }

    /// Announces a reply; the ids of the objects to push and the session to push them in.
    pub async fn push_message(
        &self,
        message: proto::Message,
        tree: ObjectTree,
        runtime: f64,
    ) -> Result<(Vec<String>, String), FleetError> {
        let response: proto::PushMessagesResponse = self
            .call(
                "push-messages",
                &proto::PushMessagesRequest {
                    node: self.node(),
                    messages_list: vec![message],
                    message_object_trees: vec![tree],
                    clientapp_runtime_list: vec![runtime],
                },
            )
            .await?;
        Ok((response.objects_to_push, response.session_id))
    }

    /// Uploads one object of a reply.
    pub async fn push_object(
        &self,
        run_id: u64,
        session_id: &str,
        object_id: &str,
        content: Vec<u8>,
    ) -> Result<(), FleetError> {
        let _: proto::PushObjectResponse = self
            .call(
                "push-object",
                &proto::PushObjectRequest {
                    node: self.node(),
                    run_id,
                    object_id: object_id.into(),
                    object_content: content,
                    session_id: session_id.into(),
                },
            )
            .await?;
        Ok(())
    }

    /// Run `run_id`'s record (its status says whether it still runs).
    pub async fn get_run(&self, run_id: u64) -> Result<proto::Run, FleetError> {
        let response: proto::GetRunResponse = self
            .call(
                "get-run",
                &proto::GetRunRequest {
                    node: self.node(),
                    run_id,
                },
            )
            .await?;
        response.run.ok_or(FleetError::Decode {
            rpc: "get-run",
            reason: "no run in the answer".into(),
        })
    }

    /// Deactivates and unregisters the node (best effort: it is leaving).
    pub async fn leave(&mut self) {
        if let Some(node) = self.node.take() {
            let id = node.node_id;
            let _ = self
                .call::<proto::DeactivateNodeResponse>(
                    "deactivate-node",
                    &proto::DeactivateNodeRequest { node_id: id },
                )
                .await;
            let _ = self
                .call::<proto::UnregisterNodeFleetResponse>(
                    "unregister-node",
                    &proto::UnregisterNodeFleetRequest { node_id: id },
                )
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::superlink::{Fab, SuperLink};

    #[tokio::test]
    async fn our_node_joins_our_superlink_signed_and_leaves() {
        let fab = Fab {
            content: b"fab".to_vec(),
            hash: crate::objects::object_id(b"fab"),
            id: "us/app".into(),
            version: "1.0.0".into(),
        };
        let (link, mut nodes) = SuperLink::new(fab, None, 4);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(link.serve(listener, None));
        let mut fleet = Fleet::new(&addr);
        let id = fleet.join().await.unwrap();
        fleet.joined(id);
        let mut handle = nodes.recv().await.unwrap();
        assert_eq!(handle.node_id, id);
        assert!(fleet.heartbeat().await.unwrap());
        assert_eq!(fleet.pull_message().await.unwrap(), None);
        let run = fleet.get_run(crate::superlink::RUN_ID).await.unwrap();
        assert_eq!(run.fab_id, "us/app");
        fleet.leave().await;
        assert_eq!(handle.gone().await, "it deactivated");
        server.abort();
    }
}

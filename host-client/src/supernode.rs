//! One participant as a Flower SuperNode (`host-client --superlink`): it
//! joins a Flower 1.42 SuperLink over the Fleet API and answers the `train`
//! and `evaluate` messages of the run's ServerApp with fedcore.
//!
//! Like Flower's SuperNode it registers a key of its own making, signs every
//! request, heartbeats, and polls for messages; a message's content it pulls
//! object by object and confirms, its reply it announces and uploads object
//! by object (see flower-bridge's `supernode` and `objects`). It holds the
//! model given with `--model` and needs the message's `arrays` to have its
//! shapes: another model is answered with an error reply naming the tensor. A
//! train reply carries `arrays` and `metrics` (`num-examples`, `loss`,
//! `accuracy`), an evaluate reply `metrics`; any other message type gets an
//! error reply. It takes part in one run: once the SuperLink says the run is
//! no longer running, the node deactivates, unregisters and ends.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use fedcore::model::ModelSpec;
use fedcore::train::TrainConfig;
use flower_bridge::objects::{self, Number, Objects, Record};
use flower_bridge::proto::{Metadata, ObjectTree};
use flower_bridge::supernode::{Fleet, FleetError, HEARTBEAT};
use tokio::time::Instant;

use crate::local::Local;
use crate::participant::with_retries;

/// How often an idle node asks for a message.
const POLL: Duration = Duration::from_millis(500);
/// How often an idle node that has a run asks whether it still runs.
const RUN_CHECK: Duration = Duration::from_secs(3);
/// Tries for an object the SuperLink does not have yet.
const OBJECT_TRIES: u32 = 100;
/// Most objects one message may have.
const MAX_OBJECTS: usize = flower_bridge::superlink::MAX_REPLY_OBJECTS;
/// Flower's code for an error a ClientApp raised.
const CLIENT_ERROR: i64 = 1;

/// Settings of one participant as a SuperNode.
#[derive(Debug, Clone)]
pub struct SupernodeConfig {
    /// The SuperLink's address, host:port.
    pub superlink: String,
    /// Name for our log (the SuperLink knows nodes by id).
    pub name: String,
    /// The run's model (Flower's SuperLink does not say).
    pub model: ModelSpec,
    /// Local settings.
    pub train: TrainConfig,
    /// Seed of the sample order.
    pub seed: u64,
    /// How long to keep trying to reach the SuperLink.
    pub connect_timeout: Duration,
}

/// Takes part in one run; why it ended.
pub async fn run(config: SupernodeConfig, mut local: Local) -> anyhow::Result<String> {
    local.hold(&config.model);
    let mut fleet = Fleet::new(&config.superlink);
    let what = format!("the SuperLink at {}", config.superlink);
    let id = with_retries(&what, config.connect_timeout, || fleet.join()).await?;
    fleet.joined(id);
    tracing::info!(name = %config.name, node = id, "joined the SuperLink as a SuperNode");
    let beating = fleet.clone();
    let heartbeat = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(HEARTBEAT / 2.0));
        loop {
            tick.tick().await;
            if let Err(e) = beating.heartbeat().await {
                tracing::warn!("heartbeat failed: {e}");
            }
        }
    });
    let ended = serve(&config, &mut local, &fleet).await;
    heartbeat.abort();
    fleet.leave().await;
    ended
}

async fn serve(
    config: &SupernodeConfig,
    local: &mut Local,
    fleet: &Fleet,
) -> anyhow::Result<String> {
    let mut run: Option<u64> = None;
    let mut checked = Instant::now();
    let mut fits = 0u64;
    loop {
        let Some((message, tree)) = fleet.pull_message().await? else {
            if let Some(run_id) = run.filter(|_| checked.elapsed() >= RUN_CHECK) {
                checked = Instant::now();
                match fleet.get_run(run_id).await {
                    Ok(r) if r.status.as_ref().is_some_and(|s| s.status != "running") => {
                        return Ok(format!(
                            "run {run_id} is {}",
                            r.status.map(|s| s.status).unwrap_or_default()
                        ));
                    }
                    Ok(_) => {}
                    // A SuperLink refuses get-run for a run that finished.
                    Err(FleetError::Refused { body, .. }) => {
                        return Ok(format!("run {run_id} ended: {body}"));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            tokio::time::sleep(POLL).await;
            continue;
        };
        let metadata = message
            .metadata
            .context("the SuperLink sent a message without metadata")?;
        run = Some(metadata.run_id);
        let contents = pull(fleet, metadata.run_id, &tree).await?;
        fleet.confirm(metadata.run_id, &metadata.message_id).await?;
        let started = Instant::now();
        fits += u64::from(metadata.message_type == "train");
        let seed = config.seed.wrapping_mul(1_000_003).wrapping_add(fits);
        let reply = answer(config, local, &contents, &metadata, seed).await?;
        let runtime = started.elapsed().as_secs_f64();
        let (to_push, session) = fleet
            .push_message(reply.message, reply.tree, runtime)
            .await?;
        for id in to_push {
            let content = reply.objects.contents.get(&id).cloned().with_context(|| {
                format!("the SuperLink asked for object {id}, which is not in our reply")
            })?;
            fleet
                .push_object(metadata.run_id, &session, &id, content)
                .await?;
        }
        checked = Instant::now();
    }
}

/// Every object of `tree`, pulled (waiting for those not yet available).
async fn pull(fleet: &Fleet, run_id: u64, tree: &ObjectTree) -> anyhow::Result<Objects> {
    let mut ids = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![tree];
    while let Some(node) = stack.pop() {
        if seen.insert(node.object_id.clone()) {
            ids.push(node.object_id.clone());
        }
        if seen.len() > MAX_OBJECTS {
            bail!("the message has more than {MAX_OBJECTS} objects");
        }
        stack.extend(&node.children);
    }
    let mut objects = Objects::default();
    for id in ids {
        let mut tries = 0;
        let content = loop {
            if let Some(content) = fleet.pull_object(run_id, &id).await? {
                break content;
            }
            tries += 1;
            if tries >= OBJECT_TRIES {
                bail!("object {id} of the message never became available");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        objects.contents.insert(id, content);
    }
    Ok(objects)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The reply to the message `ins` whose objects are `contents`.
async fn answer(
    config: &SupernodeConfig,
    local: &mut Local,
    contents: &Objects,
    ins: &Metadata,
    seed: u64,
) -> anyhow::Result<objects::Outgoing> {
    let now = unix_now();
    let metadata = Metadata {
        run_id: ins.run_id,
        message_id: String::new(),
        src_node_id: ins.dst_node_id,
        dst_node_id: ins.src_node_id,
        reply_to_message_id: ins.message_id.clone(),
        group_id: ins.group_id.clone(),
        // A reply lives no longer than the message it answers.
        ttl: (ins.created_at + ins.ttl - now).max(1.0),
        message_type: ins.message_type.clone(),
        created_at: now,
        src_task_id: 0,
        dst_task_id: ins.src_task_id,
    };
    let spec = &config.model;
    let kind = ins.message_type.as_str();
    if kind != "train" && kind != "evaluate" {
        let reason = format!("this SuperNode answers train and evaluate messages, not {kind:?}");
        return Ok(objects::error_message(metadata, CLIENT_ERROR, &reason));
    }
    if let Err(e) = objects::read(contents, &ins.message_id, spec, Some(local.params()?)) {
        let reason = format!("this SuperNode holds {spec}: {e}");
        tracing::warn!(name = %config.name, "{reason}");
        return Ok(objects::error_message(metadata, CLIENT_ERROR, &reason));
    }
    if kind == "train" {
        let stats = local.fit(config.train, seed).await?;
        tracing::info!(name = %config.name, round = %ins.group_id, loss = stats.loss(), "trained");
        let metrics = [
            ("num-examples", Number::Int(i64::from(stats.examples))),
            ("loss", Number::Float(f64::from(stats.loss()))),
            ("accuracy", Number::Float(f64::from(stats.accuracy()))),
        ];
        let params = local.params()?;
        Ok(objects::message(
            metadata,
            &[
                ("arrays", Record::Arrays(spec, params)),
                ("metrics", Record::Metrics(&metrics)),
            ],
        ))
    } else {
        let s = local.evaluate().await?.stats;
        let metrics = [
            ("num-examples", Number::Int(i64::from(s.examples))),
            ("loss", Number::Float(f64::from(s.loss()))),
            ("accuracy", Number::Float(f64::from(s.accuracy()))),
        ];
        Ok(objects::message(
            metadata,
            &[("metrics", Record::Metrics(&metrics))],
        ))
    }
}

//! One participant in a Flower federation of the original protocol
//! (`host-client --flower-server`): it joins `flwr.server.start_server` as a
//! `start_numpy_client` would, and answers with fedcore.
//!
//! Flower's server names no model, so the participant holds the one given
//! with `--model`, and every model the server sends must have its shapes (a
//! mismatch ends the run, naming the tensor). Flower's FedAvg without initial
//! parameters asks one client for them: ours answers with its model
//! initialised as Keras would, from `--seed`. A fit follows the server's
//! config where it names our settings (`local_epochs`, `batch_size`,
//! `learning_rate`, `momentum`; Flower's stock strategies send none), else the
//! reference lab's, and reports `loss` and `accuracy` as metrics; an
//! evaluation reports the loss, the test examples and `accuracy`. A reconnect
//! instruction is acknowledged: after 0 seconds it is the end of the run, as
//! for Flower's own clients.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use fedcore::model::{ModelSpec, Plan, init_params};
use fedcore::rng::Rng;
use fedcore::train::TrainConfig;
use flower_bridge::join::{self, ServerStream};
use flower_bridge::legacy;
use flower_bridge::proto::server_message::Msg;

use crate::local::Local;
use crate::participant::with_retries;

/// Longest a reconnect instruction may make us wait before joining again.
const MAX_RECONNECT_WAIT: Duration = Duration::from_secs(600);

/// Settings of one participant of a Flower federation.
#[derive(Debug, Clone)]
pub struct FlowerConfig {
    /// The Flower server's address.
    pub server: SocketAddr,
    /// Name for our log (Flower's server knows clients by address).
    pub name: String,
    /// The federation's model (Flower's server does not say).
    pub model: ModelSpec,
    /// Local settings where the server's config names none.
    pub train: TrainConfig,
    /// Seed of the initial parameters and of the sample order.
    pub seed: u64,
    /// How long to keep trying to reach the server.
    pub connect_timeout: Duration,
}

/// Takes part until the Flower server says goodbye; its reason.
pub async fn run(config: FlowerConfig, mut local: Local) -> anyhow::Result<String> {
    let spec = config.model.clone();
    local.hold(&spec);
    init_params(
        &Plan::new(&spec),
        local.params()?,
        &mut Rng::new(config.seed),
    );
    let mut fits = 0u64;
    loop {
        let what = format!("the Flower server at {}", config.server);
        let mut stream = with_retries(&what, config.connect_timeout, || {
            join::connect(config.server)
        })
        .await?;
        tracing::info!(name = %config.name, model = %spec, "joined the Flower federation");
        match serve(&config, &mut local, &mut stream, &mut fits).await? {
            Some(wait) => {
                tracing::info!(name = %config.name, ?wait, "told to reconnect later");
                tokio::time::sleep(wait).await;
            }
            None => return Ok("the Flower server ended the run".into()),
        }
    }
}

/// Answers the server's instructions until it tells us to reconnect: after
/// how long (`None`: never).
async fn serve(
    config: &FlowerConfig,
    local: &mut Local,
    stream: &mut ServerStream,
    fits: &mut u64,
) -> anyhow::Result<Option<Duration>> {
    let spec = &config.model;
    loop {
        let instruction = stream
            .recv()
            .await
            .context("the Flower server's stream ended")?;
        let answer = match instruction.msg {
            Some(Msg::GetParametersIns(_)) => legacy::parameters_res(spec, local.params()?),
            Some(Msg::GetPropertiesIns(_)) => legacy::properties_res(),
            Some(Msg::FitIns(ins)) => {
                take_model(spec, ins.parameters.as_ref(), local, "a fit")?;
                let train = legacy::train_config(&ins.config, config.train)
                    .context("the Flower server's fit config")?;
                // A new sample order every fit, repeatable from the seed.
                *fits += 1;
                let seed = config.seed.wrapping_mul(1_000_003).wrapping_add(*fits);
                let stats = local.fit(train, seed).await?;
                tracing::info!(name = %config.name, loss = stats.loss(), "trained");
                let params = local.params()?;
                legacy::fit_res(spec, params, stats.examples, stats.loss(), stats.accuracy())
            }
            Some(Msg::EvaluateIns(ins)) => {
                take_model(spec, ins.parameters.as_ref(), local, "an evaluation")?;
                let scored = local.evaluate().await?;
                let s = scored.stats;
                legacy::evaluate_res(s.examples, s.loss(), s.accuracy())
            }
            Some(Msg::ReconnectIns(r)) => {
                // Acknowledged as Flower's clients do; the server may close first.
                let _ = stream.send(legacy::disconnect_res()).await;
                let wait = u64::try_from(r.seconds).unwrap_or(0);
                return Ok((wait > 0).then(|| Duration::from_secs(wait).min(MAX_RECONNECT_WAIT)));
            }
            None => bail!("the Flower server sent an empty instruction"),
        };
        stream
            .send(answer)
            .await
            .context("the Flower server's stream ended")?;
    }
}

/// Reads the model an instruction (`what`) carries into the held parameters.
fn take_model(
    spec: &ModelSpec,
    given: Option<&flower_bridge::proto::Parameters>,
    local: &mut Local,
    what: &str,
) -> anyhow::Result<()> {
    let given =
        given.with_context(|| format!("the Flower server sent {what} without parameters"))?;
    legacy::read_parameters(spec, given, local.params()?)
        .with_context(|| format!("the Flower server's model is not {spec}"))
}

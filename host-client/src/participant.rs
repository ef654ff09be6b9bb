//! One participant's conversation with the server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fedcore::data::Dataset;
use fedcore::model::ModelSpec;
use fedcore::protocol::transfer::Chunking;
use fedcore::protocol::{
    Encoding, ErrorCode, ErrorMsg, EvaluateRes, FitRes, Hello, Message, PROTOCOL_VERSION,
    ParticipantKind,
};
use fedcore::train::{TrainConfig, Trainer};
use fedhost::dataset::Shard;
use fedhost::link::{HOST_MAX_FRAME, Link, LinkError, chunking};
use fedhost::share::Share;

use crate::attack::Attack;
use crate::slots::{SlotConfig, Slots};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Settings of one participant.
#[derive(Debug, Clone)]
pub struct ParticipantConfig {
    /// Server address, host:port.
    pub server: String,
    /// Name shown in the server's history.
    pub name: String,
    /// How long to keep trying to reach the server.
    pub connect_timeout: Duration,
    /// Poison every update this way (robustness experiments only).
    pub attack: Option<Attack>,
    /// How parameters travel, both ways.
    pub encoding: Encoding,
    /// Machine-wide training slots to take turns in (none: train when asked).
    pub train_slots: Option<SlotConfig>,
}

/// Runs one participant until the server says goodbye, returning its reason. A lost connection is
/// re-established (the server drops a participant that misses a deadline); the
/// participant gives up when the server stays unreachable for the connect timeout.
pub async fn run(
    config: ParticipantConfig,
    data: Arc<Share>,
    cores: Arc<Semaphore>,
) -> anyhow::Result<String> {
    let slots = match &config.train_slots {
        Some(slots) => Some(Arc::new(Slots::open(slots).with_context(|| {
            format!("cannot open the training slots in {}", slots.dir.display())
        })?)),
        None => None,
    };
    let mut state = State {
        data,
        cores,
        slots,
        model: None,
    };
    loop {
        let socket = connect(&config).await?;
        match session(&config, &mut state, socket).await {
            Ok(ending) => return Ok(ending),
            Err(SessionError::Link(e)) => {
                tracing::warn!(name = %config.name, "connection lost ({e}); reconnecting");
            }
            Err(SessionError::Fatal(e)) => return Err(e),
        }
    }
}

struct State {
    data: Arc<Share>,
    cores: Arc<Semaphore>,
    slots: Option<Arc<Slots>>,
    /// The model, once the server has named it.
    model: Option<Model>,
}

/// The federation's model as this participant holds it.
struct Model {
    spec: ModelSpec,
    params: Vec<f32>,
    /// How the parameters are cut into chunks, both ways (this client's frames and encoding).
    chunking: Chunking,
    /// Kept between rounds so its arena is allocated once.
    trainer: Option<Trainer<f32, Vec<f32>>>,
}

enum SessionError {
    /// The connection failed: reconnect.
    Link(LinkError),
    /// Something that reconnecting will not fix.
    Fatal(anyhow::Error),
}

impl From<LinkError> for SessionError {
    fn from(e: LinkError) -> Self {
        match e {
            LinkError::Protocol(_) | LinkError::Encode(_) => SessionError::Fatal(e.into()),
            _ => SessionError::Link(e),
        }
    }
}

async fn connect(config: &ParticipantConfig) -> anyhow::Result<TcpStream> {
    let deadline = Instant::now() + config.connect_timeout;
    let mut backoff = Duration::from_millis(50);
    loop {
        match TcpStream::connect(&config.server).await {
            Ok(socket) => {
                socket.set_nodelay(true)?;
                return Ok(socket);
            }
            Err(e) if Instant::now() + backoff < deadline => {
                // Jitter (0.5x to 1.5x) keeps a fleet that lost its server together
                // (a restart) from reconnecting in lockstep.
                let wait = backoff.mul_f64(rand::random_range(0.5..1.5));
                tracing::debug!(server = %config.server, "not reachable yet ({e}); retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                bail!(
                    "cannot reach the server at {} within {:?}: {e}",
                    config.server,
                    config.connect_timeout
                )
            }
        }
    }
}

async fn session(
    config: &ParticipantConfig,
    state: &mut State,
    socket: TcpStream,
) -> Result<String, SessionError> {
    let mut link = Link::new(socket);
    let hello = Hello {
        version: PROTOCOL_VERSION,
        name: &config.name,
        kind: ParticipantKind::Host,
        train_examples: state.data.train.len() as u32,
        test_examples: state.data.test.len() as u32,
        max_frame: HOST_MAX_FRAME as u32,
        encoding: config.encoding,
        auth: &[],
    };
    link.send(&Message::Hello(hello)).await?;
    let spec = match link.recv().await? {
        Message::Welcome(w) => w.model,
        Message::Error(e) => {
            return Err(SessionError::Fatal(anyhow::anyhow!(
                "the server refused us: {}",
                e.text
            )));
        }
        other => {
            return Err(SessionError::Fatal(anyhow::anyhow!(
                "expected Welcome, got {}",
                other.name()
            )));
        }
    };
    if state.model.as_ref().is_none_or(|m| m.spec != spec) {
        let chunking = chunking(spec.param_count(), HOST_MAX_FRAME, config.encoding)
            .context("the federation's model")
            .map_err(SessionError::Fatal)?;
        state.model = Some(Model {
            params: vec![0.0; spec.param_count()],
            chunking,
            spec: spec.clone(),
            trainer: None,
        });
    }
    tracing::info!(name = %config.name, model = %spec, "joined the federation");
    loop {
        let message = link.recv().await?;
        match message {
            Message::FitIns(ins) => {
                let model = state.model.as_mut().ok_or_else(|| fatal("no model"))?;
                link.recv_params(ins.round, &mut model.params, &model.chunking)
                    .await?;
                if ins.evaluate_first {
                    // The parameters are the aggregate of the previous round: score them first.
                    let res = evaluate(
                        (&state.cores, &state.slots),
                        model,
                        &state.data.test,
                        ins.round.saturating_sub(1),
                    )
                    .await;
                    let res = report(&mut link, res).await?;
                    link.send(&Message::EvaluateRes(res)).await?;
                }
                let t = Instant::now();
                let seed = ins.seed;
                let global = config.attack.map(|_| model.params.clone());
                let stats = compute(
                    (&state.cores, &state.slots),
                    model,
                    Some(ins.config),
                    &state.data.train,
                    move |t, p, d, between| t.fit_with(p, d, seed, between),
                )
                .await;
                let stats = report(&mut link, stats).await?;
                if let (Some(attack), Some(global)) = (config.attack, &global) {
                    attack.apply(&mut model.params, global, seed);
                }
                let seconds = t.elapsed().as_secs_f32();
                tracing::info!(round = ins.round, seconds, loss = stats.loss(), "trained");
                link.send_params(ins.round, &model.params, &model.chunking)
                    .await?;
                let (examples, loss, accuracy) = (stats.examples, stats.loss(), stats.accuracy());
                link.send(&Message::FitRes(FitRes {
                    round: ins.round,
                    examples,
                    loss,
                    accuracy,
                    seconds,
                }))
                .await?;
            }
            Message::EvaluateIns(ins) => {
                let model = state.model.as_mut().ok_or_else(|| fatal("no model"))?;
                link.recv_params(ins.round, &mut model.params, &model.chunking)
                    .await?;
                let res = evaluate(
                    (&state.cores, &state.slots),
                    model,
                    &state.data.test,
                    ins.round,
                )
                .await;
                let res = report(&mut link, res).await?;
                link.send(&Message::EvaluateRes(res)).await?;
            }
            Message::Ping(nonce) => link.send(&Message::Pong(nonce)).await?,
            Message::Bye(reason) => return Ok(reason.to_string()),
            Message::Error(e) => {
                return Err(fatal(&format!("the server reported an error: {}", e.text)));
            }
            other => {
                return Err(fatal(&format!(
                    "unexpected {} from the server",
                    other.name()
                )));
            }
        }
    }
}

/// Scores the held parameters on `test` as the evaluation of `round`.
async fn evaluate(
    cores: Cores<'_>,
    model: &mut Model,
    test: &Shard,
    round: u32,
) -> Result<EvaluateRes, SessionError> {
    let t = Instant::now();
    // The held trainer as it is (its arena serves evaluation too), so that a
    // velocity kept for the next fit survives.
    let stats = compute(cores, model, None, test, |t, p, d, _| t.evaluate(p, d)).await?;
    let (examples, loss, accuracy) = (stats.examples, stats.loss(), stats.accuracy());
    Ok(EvaluateRes {
        round,
        examples,
        loss,
        accuracy,
        seconds: t.elapsed().as_secs_f32(),
    })
}

/// Passes `outcome` on; a local failure is first told to the server (so its
/// history says why this participant left, not just that its link closed).
async fn report<R>(
    link: &mut Link<TcpStream>,
    outcome: Result<R, SessionError>,
) -> Result<R, SessionError> {
    if let Err(SessionError::Fatal(e)) = &outcome {
        let text = format!("{e:#}");
        let _ = link
            .send(&Message::Error(ErrorMsg {
                code: ErrorCode::Training,
                text: &text,
            }))
            .await;
    }
    outcome
}

fn fatal(what: &str) -> SessionError {
    SessionError::Fatal(anyhow::anyhow!("{what}"))
}

/// This process's cores, and the machine's training slots when configured.
type Cores<'a> = (&'a Arc<Semaphore>, &'a Option<Arc<Slots>>);

/// Runs `work` on a blocking thread once a core of this process is free and in
/// a machine-wide training slot if there are slots, with a trainer for `cfg`
/// (the held one when its arena fits; with no `cfg`, the held one as it is, or
/// one for evaluation) and the parameters moved there and back.
async fn compute<R: Send + 'static>(
    (cores, slots): Cores<'_>,
    model: &mut Model,
    cfg: Option<TrainConfig>,
    data: &Shard,
    work: impl FnOnce(
        &mut Trainer<f32, Vec<f32>>,
        &mut Vec<f32>,
        &Shard,
        &mut dyn FnMut(usize),
    ) -> Result<R, fedcore::Error>
    + Send
    + 'static,
) -> Result<R, SessionError> {
    let slots = slots.clone();
    let permit = Arc::clone(cores)
        .acquire_owned()
        .await
        .map_err(|e| SessionError::Fatal(e.into()))?;
    let (spec, data, mut params, trainer) = (
        model.spec.clone(),
        data.clone(),
        std::mem::take(&mut model.params),
        model.trainer.take(),
    );
    let joined = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let reused = trainer.and_then(|mut t| match cfg {
            Some(cfg) => t.set_config(&cfg).is_ok().then_some(t),
            None => Some(t),
        });
        let mut trainer = match reused {
            Some(t) => t,
            None => Trainer::new(&spec, &cfg.unwrap_or_else(TrainConfig::evaluation))?,
        };
        let mut turn = slots.as_deref().map(Slots::take);
        let mut between = |trained| {
            if let Some(turn) = turn.as_mut() {
                turn.between(trained);
            }
        };
        let result = work(&mut trainer, &mut params, &data, &mut between);
        Ok::<_, fedcore::Error>((result, trainer, params))
    })
    .await
    .map_err(|e| SessionError::Fatal(e.into()))?;
    let (result, trainer, params) = joined
        .context("cannot build a trainer")
        .map_err(SessionError::Fatal)?;
    (model.trainer, model.params) = (Some(trainer), params);
    result
        .context("local training failed")
        .map_err(SessionError::Fatal)
}

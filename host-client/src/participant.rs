//! One participant's conversation with the server.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fedcore::protocol::auth;
use fedcore::protocol::transfer::Chunking;
use fedcore::protocol::{
    Encoding, ErrorCode, ErrorMsg, EvaluateRes, FitRes, Hello, Message, PROTOCOL_VERSION,
    ParticipantKind,
};
use fedhost::link::{ByteStream, HOST_MAX_FRAME, Link, LinkError, chunking};
use fedhost::tls::ClientTls;
use tokio::net::TcpStream;

use crate::attack::Attack;
use crate::local::Local;

/// Settings of one participant.
#[derive(Debug, Clone)]
pub struct ParticipantConfig {
    /// Server address, host:port.
    pub server: String,
    /// Name shown in the server's history.
    pub name: String,
    /// The key to prove we hold when the server admits by key.
    pub key: Option<Vec<u8>>,
    /// How long to keep trying to reach the server.
    pub connect_timeout: Duration,
    /// Poison every update this way (robustness experiments only).
    pub attack: Option<Attack>,
    /// How parameters travel, both ways.
    pub encoding: Encoding,
    /// TLS to the server (`--tls-ca`), if it serves TLS.
    pub tls: Option<ClientTls>,
}

/// Runs one participant until the server says goodbye, returning its reason. A lost connection is
/// re-established (the server drops a participant that misses a deadline); the
/// participant gives up when the server stays unreachable for the connect timeout.
pub async fn run(config: ParticipantConfig, mut local: Local) -> anyhow::Result<String> {
    // How the parameters are cut into chunks, both ways, once the model is known.
    let mut chunks = None;
    loop {
        let connecting = Instant::now();
        let stream = connect(&config).await?;
        let ended = session(&config, &mut local, &mut chunks, stream, connecting).await;
        // Chunks are cut once the server has welcomed us, in this session or an earlier one.
        let welcomed = chunks.is_some();
        match ended {
            Ok(ending) => return Ok(ending),
            Err(SessionError::Link(e)) if welcomed => {
                tracing::warn!(name = %config.name, "connection lost ({e}); reconnecting");
            }
            // A server that drops a first hello unanswered will drop the next too.
            Err(SessionError::Link(e)) => {
                let hint = match config.tls {
                    None => "; if it serves TLS, give --tls-ca",
                    Some(_) => "",
                };
                bail!(
                    "the server at {} did not answer our hello ({e}){hint}",
                    config.server
                );
            }
            Err(SessionError::Fatal(e)) => return Err(e),
        }
    }
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

/// Reaches the server (retrying for the connect timeout) and, with TLS,
/// runs the handshake; a failed handshake is not retried: a certificate
/// that does not verify will not verify the next time.
async fn connect(config: &ParticipantConfig) -> anyhow::Result<Box<dyn ByteStream>> {
    let what = format!("the server at {}", config.server);
    let socket = with_retries(&what, config.connect_timeout, || {
        TcpStream::connect(&config.server)
    })
    .await?;
    socket.set_nodelay(true)?;
    let Some(tls) = &config.tls else {
        return Ok(Box::new(socket));
    };
    let stream = tls.connect(&config.server, socket).await.with_context(|| {
        format!("TLS handshake with {what} failed (a server without --tls-cert speaks plaintext)")
    })?;
    Ok(Box::new(stream))
}

/// Tries `attempt` until it succeeds, backing off from 50 ms to 2 s between
/// tries, for at most `timeout`; `what` names what it reaches, for the error.
pub async fn with_retries<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    timeout: Duration,
    mut attempt: impl FnMut() -> F,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(50);
    loop {
        match attempt().await {
            Ok(done) => return Ok(done),
            Err(e) if Instant::now() + backoff < deadline => {
                // Jitter (0.5x to 1.5x) keeps a fleet that lost its server together
                // (a restart) from reconnecting in lockstep.
                let wait = backoff.mul_f64(rand::random_range(0.5..1.5));
                tracing::debug!("{what} is not reachable yet ({e}); retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => bail!("cannot reach {what} within {timeout:?}: {e}"),
        }
    }
}

async fn session(
    config: &ParticipantConfig,
    local: &mut Local,
    chunks: &mut Option<Chunking>,
    stream: Box<dyn ByteStream>,
    connecting: Instant,
) -> Result<String, SessionError> {
    let mut link = Link::new(stream);
    let hello = Hello {
        version: PROTOCOL_VERSION,
        name: &config.name,
        kind: ParticipantKind::Host,
        train_examples: local.train_examples(),
        test_examples: local.test_examples(),
        max_frame: HOST_MAX_FRAME as u32,
        encoding: config.encoding,
        data: local.data_shape(),
    };
    link.send(&Message::Hello(hello)).await?;
    let mut answer = link.recv().await?;
    if let Message::Challenge(challenge) = answer {
        let Some(key) = &config.key else {
            return Err(fatal(
                "the server admits only holders of a key: give this client its key with --auth-key-file",
            ));
        };
        let proof = auth::prove(key, &challenge, PROTOCOL_VERSION, &config.name);
        link.send(&Message::Proof(proof)).await?;
        answer = link.recv().await?;
    }
    let spec = match answer {
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
    if local.hold(&spec) || chunks.is_none() {
        let cut = chunking(spec.param_count(), HOST_MAX_FRAME, config.encoding)
            .context("the federation's model")
            .map_err(SessionError::Fatal)?;
        *chunks = Some(cut);
    }
    let chunks = chunks.as_ref().ok_or_else(|| fatal("no model"))?;
    // From the first connection attempt to the welcome: TCP, TLS and admission.
    let handshake_ms = connecting.elapsed().as_secs_f64() * 1e3;
    tracing::info!(name = %config.name, model = %spec, handshake_ms, "joined the federation");
    loop {
        let message = link.recv().await?;
        match message {
            Message::FitIns(ins) => {
                link.recv_params(
                    ins.round,
                    local.params().map_err(SessionError::Fatal)?,
                    chunks,
                )
                .await?;
                if ins.evaluate_first {
                    // The parameters are the aggregate of the previous round: score them first.
                    let res = evaluate(local, ins.round.saturating_sub(1)).await;
                    let res = report(&mut link, res).await?;
                    link.send(&Message::EvaluateRes(res)).await?;
                }
                let t = Instant::now();
                let seed = ins.seed;
                let global = match config.attack {
                    Some(_) => Some(local.params().map_err(SessionError::Fatal)?.clone()),
                    None => None,
                };
                let stats = local
                    .fit(ins.config, seed)
                    .await
                    .map_err(SessionError::Fatal);
                let stats = report(&mut link, stats).await?;
                let params = local.params().map_err(SessionError::Fatal)?;
                if let (Some(attack), Some(global)) = (config.attack, &global) {
                    attack.apply(params, global, seed);
                }
                let seconds = t.elapsed().as_secs_f32();
                tracing::info!(round = ins.round, seconds, loss = stats.loss(), "trained");
                link.send_params(ins.round, params, chunks).await?;
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
                link.recv_params(
                    ins.round,
                    local.params().map_err(SessionError::Fatal)?,
                    chunks,
                )
                .await?;
                let res = evaluate(local, ins.round).await;
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

/// Scores the held parameters on the test data as the evaluation of `round`.
async fn evaluate(local: &mut Local, round: u32) -> Result<EvaluateRes, SessionError> {
    let scored = local.evaluate().await.map_err(SessionError::Fatal)?;
    let stats = scored.stats;
    Ok(EvaluateRes {
        round,
        examples: stats.examples,
        loss: stats.loss(),
        accuracy: stats.accuracy(),
        seconds: scored.seconds,
    })
}

/// Passes `outcome` on; a local failure is first told to the server (so its
/// history says why this participant left, not just that its link closed).
async fn report<R>(
    link: &mut Link<Box<dyn ByteStream>>,
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

//! Participants as the server sees them: one task per link.
//!
//! A participant says hello, gets a client id and the model, and is entered in
//! the [`Registry`]. From then on its task owns the link and carries out the
//! [`Job`]s the round loop sends it (fit, evaluate, goodbye), each under a
//! deadline, through [`crate::exchange`]. Any failure (a broken link, a missed
//! deadline, an error from the participant) is reported to the round loop and
//! ends the session; the participant may come back and rejoin later rounds.
//!
//! A TCP connection is one session ([`serve`]). A serial line is attached for
//! the whole run ([`attach_serial`]): its task opens the port (again and again
//! if the device goes away, e.g. a pty whose simulator was restarted behind a
//! stable link), waits for the device's hello, and serves it; a device that
//! failed a job is told so and is welcomed back when it says hello again.
//!
//! Uploads are staged whole before they are folded into the aggregator, so a
//! participant that drops mid-upload leaves no trace in the model. Staging is
//! bounded by a semaphore: at most [`UPLOAD_SLOTS`] updates are held at once,
//! whatever the number of participants, so the server's memory stays O(model).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedcore::model::ModelSpec;
use fedcore::protocol::auth::{self, Challenge, Proof};
use fedcore::protocol::transfer::RetryPolicy;
use fedcore::protocol::{
    DataMismatch, DataShape, Encoding, ErrorCode, ErrorMsg, Hello, Message, PROTOCOL_VERSION,
    ParticipantKind, Welcome,
};
use fedhost::keys::Keys;
use fedhost::link::{HOST_MAX_FRAME, Link, LinkError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};
use tracing::Instrument;

use crate::config::{Limits, SerialLine};
use crate::exchange::{self, Peer};
use crate::history::{Credentials, Identity, KeyProof, LinkKind};
use crate::job::{Job, answer_by};
use crate::strikes::Strikes;
use crate::validate::Declared;

/// Updates held in memory at once, at most.
pub const UPLOAD_SLOTS: usize = 8;

/// Longest participant name, in bytes (names go into every round's record).
pub const MAX_NAME_BYTES: usize = 128;

/// How long a new connection has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a serial line that cannot be opened is tried again.
const REOPEN_INTERVAL: Duration = Duration::from_millis(500);

/// A connected participant, as the round loop addresses it.
#[derive(Debug, Clone)]
pub struct Handle {
    /// Who it is.
    pub who: Identity,
    jobs: mpsc::Sender<Job>,
    /// Told when a newer connection under the same name took its place.
    replaced: Arc<Notify>,
}

impl Handle {
    /// Hands a job over; false if the participant is gone.
    pub async fn send(&self, job: Job) -> bool {
        self.jobs.send(job).await.is_ok()
    }

    /// Resolves when a newer connection under the same name has taken its place.
    pub(crate) async fn replaced(&self) {
        self.replaced.notified().await
    }
}

/// The participants connected now.
#[derive(Debug, Default)]
pub struct Registry {
    participants: Mutex<BTreeMap<u32, Handle>>,
    next_id: AtomicU32,
    changed: Notify,
}

impl Registry {
    /// Everyone connected, by id.
    pub fn snapshot(&self) -> Vec<Handle> {
        self.lock().values().cloned().collect()
    }

    /// Waits until at least `n` participants are connected.
    pub async fn wait_for(&self, n: usize) {
        loop {
            let notified = self.changed.notified();
            if self.lock().len() >= n {
                return;
            }
            notified.await;
        }
    }

    /// Waits until every participant has left, for at most `limit`.
    pub async fn wait_empty(&self, limit: Duration) {
        let all_gone = async {
            loop {
                let notified = self.changed.notified();
                if self.is_empty() {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, all_gone).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Handle>> {
        // A panic while holding this lock cannot leave the map half-updated
        // (insert and remove are single calls), so a poisoned lock is still sound.
        self.participants
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Participants connected now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nobody is connected.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Enters `handle` unless `max` participants are connected already. One
    /// name is one participant: a connection already entered under its name
    /// is taken out and told so (its session ends), and its id returned.
    ///
    /// Replacing rather than refusing: a TCP client whose connection died
    /// reconnects at once, often before the server has noticed the old one
    /// is gone (that takes a failed job or a missed ping); refusing it would
    /// lock it out until then. With admission by key the newcomer has just
    /// proved the name's key, so only a key holder can replace anyone.
    fn admit(&self, handle: Handle, max: usize) -> Result<Option<u32>, Full> {
        let mut participants = self.lock();
        let namesake = participants
            .values()
            .find(|other| other.who.name == handle.who.name)
            .map(|other| other.who.id);
        if namesake.is_none() && participants.len() >= max {
            return Err(Full);
        }
        if let Some(old) = namesake.and_then(|id| participants.remove(&id)) {
            old.replaced.notify_one();
        }
        participants.insert(handle.who.id, handle);
        drop(participants);
        self.changed.notify_waiters();
        Ok(namesake)
    }

    /// Takes participant `id` out.
    pub(crate) fn remove(&self, id: u32) {
        self.lock().remove(&id);
        self.changed.notify_waiters();
    }
}

/// The registry holds as many participants as the federation takes.
#[derive(Debug)]
struct Full;

/// What every connection task shares.
#[derive(Debug)]
pub struct Shared {
    /// Who is connected.
    pub registry: Registry,
    /// The federation's model.
    pub model: ModelSpec,
    /// Upload staging slots.
    pub uploads: Arc<Semaphore>,
    /// What participants may claim, and how many may join.
    pub limits: Limits,
    /// Who keeps failing, and who was dropped for it.
    pub strikes: Strikes,
    /// The keys participants must prove they hold (`--auth-key-file`), if any.
    pub keys: Option<Keys>,
    /// The TLS of our listener, which Flower's listeners serve too (without
    /// asking for client certificates: Flower's clients have none).
    pub tls: Option<fedhost::tls::ServerTls>,
}

/// Why a connection was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// It said nothing in time.
    #[error("no hello within {0:?}")]
    NoHello(Duration),
    /// It began with something else.
    #[error("expected Hello, got {0}")]
    NotHello(&'static str),
    /// It speaks another protocol version.
    #[error("protocol version {0} is not {PROTOCOL_VERSION}")]
    Version(u16),
    /// The federation has as many participants as it takes.
    #[error("the federation is full: it takes at most {0} participants (--max-clients)")]
    Full(usize),
    /// It was dropped earlier in the run.
    #[error("{0}")]
    Dropped(String),
    /// Its name is too long to record.
    #[error("its name is {0} bytes long; a name may have at most {MAX_NAME_BYTES}")]
    Name(usize),
    /// It declares more examples than a participant may.
    #[error(
        "it declares {declared} examples; a participant may declare at most {max} (--max-examples)"
    )]
    Examples {
        /// What it declared.
        declared: u32,
        /// The bound.
        max: u32,
    },
    /// Its data does not fit the federation's model.
    #[error("{0}")]
    Data(DataMismatch),
    /// Admission is by key and the key file has none for its name.
    #[error("the key file holds no key for the name {0:?}")]
    NoKey(String),
    /// Its answer to the challenge is not the proof its key gives.
    #[error("it did not prove that it holds its key (a wrong key, or a replayed answer)")]
    BadProof,
    /// It did not answer the challenge.
    #[error("no answer to the key challenge within {0:?}")]
    NoProof(Duration),
    /// It answered the challenge with something else.
    #[error("expected Proof, got {0}")]
    NotProof(&'static str),
    /// The link failed.
    #[error("{0}")]
    Link(#[from] LinkError),
}

/// Where a connection comes from, as its listener saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// Its address (or what stands for one), for the log.
    pub address: String,
    /// The fingerprint of the TLS client certificate it presented (mutual TLS).
    pub certificate: Option<String>,
}

impl Origin {
    /// A connection known by its address only.
    pub fn address(address: String) -> Self {
        Origin {
            address,
            certificate: None,
        }
    }
}

/// Serves one connection from a listener (TCP, TLS, or an in-memory pipe in
/// tests) until it fails or is told goodbye.
pub async fn serve<T: AsyncRead + AsyncWrite + Unpin>(io: T, origin: Origin, shared: Arc<Shared>) {
    let mut link = Link::new(io);
    let hello = tokio::time::timeout(HELLO_TIMEOUT, await_hello(&mut link, false))
        .await
        .unwrap_or(Err(AdmissionError::NoHello(HELLO_TIMEOUT)));
    let peer = &origin.address;
    match hello {
        Ok(hello) => {
            // Every line the session logs names the peer's address.
            let span = tracing::info_span!("tcp", %peer);
            session(&mut link, hello, LinkKind::Tcp, &origin, None, &shared)
                .instrument(span)
                .await;
        }
        Err(e) => tracing::warn!(%peer, "a connection failed its hello: {e}"),
    }
}

/// Serves the device on a serial line for the whole run: opens the port
/// (retrying while it is absent), waits for the device's hello, serves it, and
/// starts over whenever the device fails, restarts or goes away.
pub async fn attach_serial(line: SerialLine, shared: Arc<Shared>) {
    let mut reported = false;
    loop {
        let port = match open_serial(&line) {
            Ok(port) => port,
            Err(e) => {
                if !reported {
                    tracing::warn!(line = %line, "cannot open the serial line (trying again): {e}");
                    reported = true;
                }
                tokio::time::sleep(REOPEN_INTERVAL).await;
                continue;
            }
        };
        reported = false;
        tracing::info!(line = %line, "serial line open; waiting for its device");
        // Tuned for the device's frames once its hello says how large they are.
        let baud = Some(line.baud);
        let mut link = Link::new(port);
        // A device still serving a server that went away (a restart) waits for
        // its next instruction; this makes it say hello now rather than after
        // minutes of silence. A device that is joining ignores it.
        let _ = link
            .send(&Message::Error(ErrorMsg {
                code: ErrorCode::Unexpected,
                text: "the server (re)started: say hello to join",
            }))
            .await;
        let mut hello = None;
        loop {
            let greeting = match hello.take() {
                Some(greeting) => greeting,
                None => match await_hello(&mut link, true).await {
                    Ok(greeting) => greeting,
                    Err(e) => {
                        tracing::warn!(line = %line, "serial line lost: {e}");
                        break;
                    }
                },
            };
            let retry = RetryPolicy::for_line(baud, greeting.max_frame);
            let origin = Origin::address(line.to_string());
            let ended = session(
                &mut link,
                greeting,
                LinkKind::Serial,
                &origin,
                Some(retry),
                &shared,
            );
            match ended.await {
                Ended::Bye => return,
                // It was told why; its hellos would only be refused again.
                Ended::Dropped(_) => return,
                // Its device says hello again and takes the name back: two
                // devices under one name take turns, never both counted.
                Ended::Failed | Ended::Replaced => {}
                Ended::Restarted(greeting) => hello = Some(greeting),
            }
        }
        tokio::time::sleep(REOPEN_INTERVAL).await;
    }
}

fn open_serial(line: &SerialLine) -> Result<SerialStream, tokio_serial::Error> {
    let port = tokio_serial::new(line.path.to_string_lossy(), line.baud).open_native_async()?;
    // Drop what the device said before anyone listened (old hellos): its next one is fresh.
    port.clear(tokio_serial::ClearBuffer::Input)?;
    Ok(port)
}

/// A hello, copied out of the link's buffer.
struct Greeting {
    version: u16,
    name: String,
    /// What it says it is (a board's firmware is recorded by its board).
    participant: ParticipantKind,
    encoding: Encoding,
    max_frame: usize,
    declared: Declared,
    data: DataShape,
}

impl From<&Hello<'_>> for Greeting {
    fn from(h: &Hello<'_>) -> Self {
        Greeting {
            version: h.version,
            name: h.name.to_string(),
            participant: h.kind,
            encoding: h.encoding,
            max_frame: (h.max_frame as usize).min(HOST_MAX_FRAME),
            declared: Declared {
                train_examples: h.train_examples,
                test_examples: h.test_examples,
            },
            data: h.data,
        }
    }
}

/// Reads until a hello. On a lossy link, damaged frames and anything else are
/// skipped (a device may be mid-conversation from an earlier session).
async fn await_hello<T: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<T>,
    lossy: bool,
) -> Result<Greeting, AdmissionError> {
    loop {
        match link.recv().await {
            Ok(Message::Hello(h)) => return Ok(Greeting::from(&h)),
            Ok(_) | Err(LinkError::Frame(_)) if lossy => {}
            Ok(other) => return Err(AdmissionError::NotHello(other.name())),
            Err(e) => return Err(e.into()),
        }
    }
}

/// How long a participant has to answer the key challenge.
const PROOF_TIMEOUT: Duration = Duration::from_secs(10);
/// Challenges sent on a lossy line before giving up (a lost one is sent again).
const CHALLENGES: usize = 4;

/// With `--auth-key-file`: challenges the participant to prove it holds its
/// name's key, before it is given an id or anything of the model; which key it proved.
async fn admit_by_key<T: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<T>,
    hello: &Greeting,
    lossy: bool,
    shared: &Shared,
) -> Result<KeyProof, (ErrorCode, AdmissionError)> {
    let Some(keys) = &shared.keys else {
        return Ok(KeyProof::None);
    };
    let proves = match keys {
        Keys::Shared(_) => KeyProof::Shared,
        Keys::PerName(_) => KeyProof::Own,
    };
    let Some(key) = keys.for_name(&hello.name) else {
        return Err((ErrorCode::Auth, AdmissionError::NoKey(hello.name.clone())));
    };
    let link_failed = |e: LinkError| (ErrorCode::Unexpected, AdmissionError::Link(e));
    for _ in 0..if lossy { CHALLENGES } else { 1 } {
        // A fresh nonce from the OS-seeded CSPRNG: a proof is good for this challenge only.
        let challenge = Challenge {
            nonce: rand::random(),
        };
        link.send(&Message::Challenge(challenge))
            .await
            .map_err(link_failed)?;
        match tokio::time::timeout(PROOF_TIMEOUT, await_proof(link, lossy)).await {
            Ok(Ok(Some(proof))) => {
                let proved = auth::verify(key, &challenge, hello.version, &hello.name, &proof);
                return if proved {
                    Ok(proves)
                } else {
                    Err((ErrorCode::Auth, AdmissionError::BadProof))
                };
            }
            // A device that missed the challenge said hello again: challenge it anew.
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => return Err((ErrorCode::Auth, e)),
            Err(_) if lossy => continue,
            Err(_) => break,
        }
    }
    Err((ErrorCode::Auth, AdmissionError::NoProof(PROOF_TIMEOUT)))
}

/// Reads the answer to a challenge: the proof, or `None` for a repeated
/// hello on a lossy line (which also skips noise and stale frames).
async fn await_proof<T: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<T>,
    lossy: bool,
) -> Result<Option<Proof>, AdmissionError> {
    loop {
        match link.recv().await {
            Ok(Message::Proof(proof)) => return Ok(Some(proof)),
            Ok(Message::Hello(_)) if lossy => return Ok(None),
            Ok(Message::Error(_)) => return Err(AdmissionError::BadProof),
            Ok(_) | Err(LinkError::Frame(_)) if lossy => {}
            Ok(other) => return Err(AdmissionError::NotProof(other.name())),
            Err(e) => return Err(e.into()),
        }
    }
}

/// How a session ended.
enum Ended {
    /// The federation is done.
    Bye,
    /// A job failed or the link broke.
    Failed,
    /// The device said hello again while idle (it restarted).
    Restarted(Greeting),
    /// It failed the same way too often and may not come back (the verdict).
    Dropped(String),
    /// A newer connection under its name took its place.
    Replaced,
}

/// Welcomes a participant and carries out its jobs until one fails or it is told goodbye.
async fn session<T: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<T>,
    hello: Greeting,
    kind: LinkKind,
    origin: &Origin,
    retry: Option<RetryPolicy>,
    shared: &Shared,
) -> Ended {
    let claimed = hello.name.clone();
    // From its hello to its welcome: what admission (by key, on this link) costs.
    let hello_heard = std::time::Instant::now();
    let (handle, mut jobs, peer) = match welcome(link, hello, kind, origin, retry, shared).await {
        Ok(joined) => joined,
        Err(e) => {
            tracing::warn!(name = %claimed, "a participant was not admitted: {e}");
            return Ended::Failed;
        }
    };
    let id = handle.who.id;
    let name = handle.who.name.clone();
    let recorded = handle.who.kind.name();
    let admission_ms = hello_heard.elapsed().as_secs_f64() * 1e3;
    tracing::info!(id, %name, kind = recorded, admission_ms, "participant joined");
    let mut heartbeat = Heartbeat::new(shared.limits.heartbeat);
    let ended = loop {
        let job = tokio::select! {
            job = jobs.recv() => job,
            () = handle.replaced() => {
                tracing::warn!(id, %name, "a newer connection under this name took its place");
                break Ended::Replaced;
            }
            heard = link.recv() => match heard {
                Ok(Message::Pong(nonce)) => {
                    heartbeat.answered(nonce);
                    continue;
                }
                // Between jobs, a device that restarts says hello.
                Ok(Message::Hello(h)) if kind == LinkKind::Serial => {
                    break Ended::Restarted(Greeting::from(&h));
                }
                // A serial line carries noise and stale frames: skip them.
                Ok(_) | Err(LinkError::Frame(_)) if kind == LinkKind::Serial => continue,
                // A TCP participant has nothing else to say between jobs:
                // anything it sends, or its closing the connection, ends the
                // session, so a peer that left is not counted as available.
                Ok(other) => {
                    tracing::warn!(id, "unexpected {} between jobs; closing", other.name());
                    break Ended::Failed;
                }
                Err(e) => {
                    tracing::info!(id, "connection closed between jobs: {e}");
                    break Ended::Failed;
                }
            },
            () = heartbeat.due() => match heartbeat.beat() {
                Some(nonce) => {
                    if link.send(&Message::Ping(nonce)).await.is_err() {
                        break Ended::Failed;
                    }
                    continue;
                }
                None => {
                    tracing::warn!(
                        id, %name,
                        "no answer to a ping within {:?}; no longer counted as available",
                        shared.limits.heartbeat.unwrap_or_default()
                    );
                    break Ended::Failed;
                }
            },
        };
        let Some(job) = job else {
            break Ended::Failed;
        };
        let outcome = match job {
            Job::Fit {
                job,
                global,
                deadline,
                reply,
            } => {
                // The model is let go when the exchange ends, before the answer
                // goes back, so the round takes it back without a copy.
                let (link, uploads) = (&mut *link, &shared.uploads);
                let work = async move {
                    let done = exchange::fit(link, uploads, job, &global, peer).await;
                    drop(global);
                    done
                };
                answer_by(deadline, work, reply).await
            }
            Job::Evaluate {
                round,
                global,
                deadline,
                reply,
            } => {
                let work = exchange::evaluate(link, round, &global, peer);
                answer_by(deadline, work, reply).await
            }
            Job::Bye(reason) => {
                let _ = link.send(&Message::Bye(&reason)).await;
                break Ended::Bye;
            }
        };
        heartbeat.heard();
        if let Some(verdict) = shared.strikes.record(&name, &outcome) {
            tracing::warn!(id, %name, "{verdict}");
            break Ended::Dropped(verdict);
        }
        // A failed job leaves the link in an unknown state: close it.
        if outcome.is_err() {
            break Ended::Failed;
        }
    };
    shared.registry.remove(id);
    let replaced;
    let told = match (&ended, kind) {
        (Ended::Dropped(verdict), _) => Some((ErrorCode::Dropped, verdict.as_str())),
        (Ended::Replaced, _) => {
            replaced = format!(
                "another connection proved the name {name} and took its place; this one is closed"
            );
            Some((ErrorCode::Unexpected, replaced.as_str()))
        }
        // Tell the device, so it says hello again instead of waiting for a job.
        (Ended::Failed, LinkKind::Serial) => Some((
            ErrorCode::Unexpected,
            "left out of the round; say hello to rejoin",
        )),
        _ => None,
    };
    if let Some((code, text)) = told {
        let _ = link.send(&Message::Error(ErrorMsg { code, text })).await;
    }
    tracing::info!(id, "participant left");
    ended
}

/// When to ping an idle participant, and whether it answered.
struct Heartbeat {
    interval: Option<Duration>,
    next: tokio::time::Instant,
    /// The nonce of the ping not yet answered.
    waiting: Option<u32>,
    nonce: u32,
}

impl Heartbeat {
    fn new(interval: Option<Duration>) -> Self {
        let mut beat = Heartbeat {
            interval,
            next: tokio::time::Instant::now(),
            waiting: None,
            nonce: 0,
        };
        beat.heard();
        beat
    }

    /// The participant showed it is there (it answered, or carried out a job).
    fn heard(&mut self) {
        self.waiting = None;
        if let Some(interval) = self.interval {
            self.next = tokio::time::Instant::now() + interval;
        }
    }

    fn answered(&mut self, nonce: u32) {
        // A late answer to an earlier ping proves nothing about the last one.
        if self.waiting == Some(nonce) {
            self.heard();
        }
    }

    /// Resolves when the next ping is due, or the last one's time is up; never without an interval.
    async fn due(&self) {
        match self.interval {
            Some(_) => tokio::time::sleep_until(self.next).await,
            None => std::future::pending().await,
        }
    }

    /// The nonce of the ping to send now, or `None` if the last one went unanswered.
    fn beat(&mut self) -> Option<u32> {
        if self.waiting.is_some() {
            return None;
        }
        self.nonce = self.nonce.wrapping_add(1);
        self.waiting = Some(self.nonce);
        if let Some(interval) = self.interval {
            self.next = tokio::time::Instant::now() + interval;
        }
        Some(self.nonce)
    }
}

/// Runs `server` (a listener of Flower's, named `what` in the log) until it
/// ends, giving every participant it hands over on `joined` its own `session`.
pub(crate) async fn sessions<T, E: std::fmt::Display, F>(
    what: &str,
    server: impl Future<Output = Result<(), E>>,
    mut joined: mpsc::Receiver<T>,
    session: impl Fn(T) -> F,
) where
    F: Future<Output = ()> + Send + 'static,
{
    tokio::pin!(server);
    loop {
        tokio::select! {
            ended = &mut server => {
                if let Err(e) = ended {
                    tracing::error!("{what} failed: {e}");
                }
                return;
            }
            Some(one) = joined.recv() => {
                tokio::spawn(session(one));
            }
        }
    }
}

/// Gives a participant named `name` an id and enters it in the registry,
/// unless its name is too long, it was dropped, or the federation is full
/// (then the code to tell it and why). Jobs for it wait in the channel.
pub(crate) fn enter(
    shared: &Shared,
    name: String,
    kind: LinkKind,
    credentials: Credentials,
) -> Result<(Handle, mpsc::Receiver<Job>), (ErrorCode, AdmissionError)> {
    if name.len() > MAX_NAME_BYTES {
        return Err((ErrorCode::Unsupported, AdmissionError::Name(name.len())));
    }
    if let Some(verdict) = shared.strikes.dropped(&name) {
        return Err((ErrorCode::Dropped, AdmissionError::Dropped(verdict)));
    }
    let id = shared.registry.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(4);
    let handle = Handle {
        who: Identity {
            id,
            name,
            kind,
            credentials,
        },
        jobs: tx,
        replaced: Arc::new(Notify::new()),
    };
    // Counted and entered in one step, so hellos racing at the limit cannot
    // both pass.
    match shared
        .registry
        .admit(handle.clone(), shared.limits.max_clients)
    {
        Ok(Some(old)) => {
            tracing::warn!(id, old, name = %handle.who.name, "replaces the connection under its name");
        }
        Ok(None) => {}
        Err(Full) => {
            let full = AdmissionError::Full(shared.limits.max_clients);
            return Err((ErrorCode::Unsupported, full));
        }
    }
    Ok((handle, rx))
}

/// Checks the hello's version, gives the participant an id and the model.
async fn welcome<T: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<T>,
    hello: Greeting,
    kind: LinkKind,
    origin: &Origin,
    retry: Option<RetryPolicy>,
    shared: &Shared,
) -> Result<(Handle, mpsc::Receiver<Job>, Peer), AdmissionError> {
    let limits = &shared.limits;
    let most = hello
        .declared
        .train_examples
        .max(hello.declared.test_examples);
    let refusal = if hello.version != PROTOCOL_VERSION {
        Some((ErrorCode::Version, AdmissionError::Version(hello.version)))
    } else if most > limits.max_examples {
        let e = AdmissionError::Examples {
            declared: most,
            max: limits.max_examples,
        };
        Some((ErrorCode::Unsupported, e))
    } else {
        let mismatch = hello.data.mismatch(&shared.model);
        mismatch.map(|m| (ErrorCode::Unsupported, AdmissionError::Data(m)))
    };
    if let Some((code, refusal)) = refusal {
        return Err(refuse(link, code, refusal).await);
    }
    let key = match admit_by_key(link, &hello, retry.is_some(), shared).await {
        Ok(key) => key,
        Err((code, refusal)) => return Err(refuse(link, code, refusal).await),
    };
    let credentials = Credentials {
        key,
        certificate: origin.certificate.clone(),
    };
    let recorded = LinkKind::recorded(kind, hello.participant);
    let (handle, rx) = match enter(shared, hello.name, recorded, credentials) {
        Ok(entered) => entered,
        Err((code, refusal)) => return Err(refuse(link, code, refusal).await),
    };
    let id = handle.who.id;
    let welcomed = link
        .send(&Message::Welcome(Welcome {
            client_id: id,
            model: shared.model.clone(),
        }))
        .await;
    if let Err(e) = welcomed {
        shared.registry.remove(id);
        return Err(e.into());
    }
    let peer = Peer {
        kind,
        encoding: hello.encoding,
        max_frame: hello.max_frame,
        retry,
        declared: hello.declared,
        max_update_norm: limits.max_update_norm,
    };
    Ok((handle, rx, peer))
}

/// Tells the peer why it is not admitted; the refusal, for the log.
async fn refuse<T: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<T>,
    code: ErrorCode,
    refusal: AdmissionError,
) -> AdmissionError {
    let text = refusal.to_string();
    let _ = link
        .send(&Message::Error(ErrorMsg { code, text: &text }))
        .await;
    refusal
}

#[cfg(test)]
mod tests {
    use fedcore::protocol::ParticipantKind;
    use tokio::io::DuplexStream;

    use super::*;

    const BEAT: Duration = Duration::from_secs(1);

    fn shared() -> Arc<Shared> {
        with_limits(Limits {
            heartbeat: Some(BEAT),
            ..Limits::default()
        })
    }

    fn with_limits(limits: Limits) -> Arc<Shared> {
        with_keys(limits, None)
    }

    fn with_keys(limits: Limits, keys: Option<&str>) -> Arc<Shared> {
        Arc::new(Shared {
            registry: Registry::default(),
            model: ModelSpec::mlp(&[4, 3, 2]).unwrap(),
            uploads: Arc::new(Semaphore::new(1)),
            limits,
            strikes: Strikes::new(3, 16),
            keys: keys.map(|text| Keys::parse(text, std::path::Path::new("keys")).unwrap()),
            tls: None,
        })
    }

    const ALICE: &[u8] = b"alice's key, 32 bytes long......";
    const BOB: &[u8] = b"bob's key, also 32 bytes long...";

    fn hex(key: &[u8]) -> String {
        key.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Says hello as `name` to a server that admits by key; the link and its challenge.
    async fn challenged(shared: &Arc<Shared>, name: &str) -> (Link<DuplexStream>, Challenge) {
        let mut link = said_hello(shared, name).await;
        match link.recv().await.unwrap() {
            Message::Challenge(c) => (link, c),
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    /// Answers a challenge with `proof`: welcomed, or refused with why.
    async fn answer(
        link: &mut Link<DuplexStream>,
        proof: Proof,
    ) -> Result<(), (ErrorCode, String)> {
        link.send(&Message::Proof(proof)).await.unwrap();
        match link.recv().await.unwrap() {
            Message::Welcome(_) => Ok(()),
            Message::Error(e) => Err((e.code, e.text.to_string())),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn admission_by_key_takes_the_right_proof_and_no_replay() {
        let shared = with_keys(Limits::default(), Some(&hex(ALICE)));
        let (mut link, first) = challenged(&shared, "alice").await;
        let proof = auth::prove(ALICE, &first, PROTOCOL_VERSION, "alice");
        assert_eq!(answer(&mut link, proof).await, Ok(()));

        let (mut wrong, c) = challenged(&shared, "bob").await;
        let refused = answer(&mut wrong, auth::prove(BOB, &c, PROTOCOL_VERSION, "bob")).await;
        assert!(
            matches!(&refused, Err((ErrorCode::Auth, why)) if why.contains("prove")),
            "{refused:?}"
        );

        // The answer captured from the first connection, replayed on another.
        let (mut replay, second) = challenged(&shared, "alice").await;
        assert_ne!(
            first.nonce, second.nonce,
            "every connection gets a fresh nonce"
        );
        let refused = answer(&mut replay, proof).await;
        assert!(matches!(refused, Err((ErrorCode::Auth, _))), "{refused:?}");
        // Only the honest participant was entered.
        assert_eq!(shared.registry.len(), 1);
    }

    #[tokio::test]
    async fn per_name_keys_stop_a_participant_from_claiming_another_name() {
        let keys = format!("alice: {}\nbob: {}", hex(ALICE), hex(BOB));
        let shared = with_keys(Limits::default(), Some(&keys));
        // Bob, with his own key, says he is Alice.
        let (mut link, c) = challenged(&shared, "alice").await;
        let refused = answer(&mut link, auth::prove(BOB, &c, PROTOCOL_VERSION, "alice")).await;
        assert!(matches!(refused, Err((ErrorCode::Auth, _))), "{refused:?}");
        // A name the file does not list is refused before any challenge.
        let (_link, unlisted) = hello(&shared, "mallory").await;
        assert!(
            matches!(&unlisted, Err((ErrorCode::Auth, why)) if why.contains("no key")),
            "{unlisted:?}"
        );
        let (mut link, c) = challenged(&shared, "bob").await;
        let proof = auth::prove(BOB, &c, PROTOCOL_VERSION, "bob");
        assert_eq!(answer(&mut link, proof).await, Ok(()));
    }

    #[tokio::test]
    async fn a_second_connection_under_a_name_replaces_the_first_only_with_a_fresh_proof() {
        let shared = with_keys(Limits::default(), Some(&hex(ALICE)));
        let (mut first, c) = challenged(&shared, "alice").await;
        let proof = auth::prove(ALICE, &c, PROTOCOL_VERSION, "alice");
        assert_eq!(answer(&mut first, proof).await, Ok(()));
        let first_id = shared.registry.snapshot()[0].who.id;
        // Someone without the key cannot push Alice out.
        let (mut impostor, c) = challenged(&shared, "alice").await;
        let refused = answer(
            &mut impostor,
            auth::prove(BOB, &c, PROTOCOL_VERSION, "alice"),
        )
        .await;
        assert!(matches!(refused, Err((ErrorCode::Auth, _))), "{refused:?}");
        assert_eq!(shared.registry.snapshot()[0].who.id, first_id);
        // Alice reconnecting (her first connection not yet noticed dead) does.
        let (mut second, c) = challenged(&shared, "alice").await;
        let proof = auth::prove(ALICE, &c, PROTOCOL_VERSION, "alice");
        assert_eq!(answer(&mut second, proof).await, Ok(()));
        let now: Vec<u32> = shared
            .registry
            .snapshot()
            .iter()
            .map(|h| h.who.id)
            .collect();
        assert_eq!(now.len(), 1, "one name, one participant");
        assert_ne!(now[0], first_id);
        // The first connection is told why, then closed.
        match first.recv().await {
            Ok(Message::Error(e)) => assert!(e.text.contains("took its place"), "{}", e.text),
            other => panic!("{other:?}"),
        }
        assert!(first.recv().await.is_err());
    }

    #[tokio::test]
    async fn a_namesake_replaces_the_first_even_when_the_federation_is_full() {
        let shared = with_limits(Limits {
            max_clients: 1,
            ..Limits::default()
        });
        let mut first = joined(&shared, "a").await;
        let _second = joined(&shared, "a").await;
        assert_eq!(shared.registry.len(), 1);
        assert!(matches!(first.recv().await, Ok(Message::Error(_))));
        let (_, other) = hello(&shared, "b").await;
        assert!(
            matches!(other, Err((ErrorCode::Unsupported, _))),
            "{other:?}"
        );
    }

    /// Connects a participant named `name` to the server and says hello;
    /// the link and the server's answer (a welcome, or why not).
    async fn hello(
        shared: &Arc<Shared>,
        name: &str,
    ) -> (Link<DuplexStream>, Result<(), (ErrorCode, String)>) {
        let mut link = said_hello(shared, name).await;
        let answer = match link.recv().await {
            Ok(Message::Welcome(_)) => Ok(()),
            Ok(Message::Error(e)) => Err((e.code, e.text.to_string())),
            other => panic!("{other:?}"),
        };
        (link, answer)
    }

    /// Connects a participant named `name` to the server and sends its hello.
    async fn said_hello(shared: &Arc<Shared>, name: &str) -> Link<DuplexStream> {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        tokio::spawn(serve(theirs, Origin::default(), Arc::clone(shared)));
        let mut link = Link::new(ours);
        link.send(&Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            name,
            kind: ParticipantKind::Host,
            train_examples: 10,
            test_examples: 10,
            max_frame: HOST_MAX_FRAME as u32,
            encoding: Encoding::F32,
            data: fedcore::protocol::DataShape {
                values: 4,
                labels: 2,
            },
        }))
        .await
        .unwrap();
        link
    }

    /// Connects a participant named `name` that is welcomed.
    async fn joined(shared: &Arc<Shared>, name: &str) -> Link<DuplexStream> {
        let (link, answer) = hello(shared, name).await;
        assert_eq!(answer, Ok(()));
        link
    }

    #[tokio::test(start_paused = true)]
    async fn a_hello_beyond_max_clients_is_refused_and_the_others_stay() {
        let shared = with_limits(Limits {
            max_clients: 2,
            ..Limits::default()
        });
        let _a = joined(&shared, "a").await;
        let _b = joined(&shared, "b").await;
        let (_, answer) = hello(&shared, "c").await;
        let (code, text) = answer.unwrap_err();
        assert_eq!(code, ErrorCode::Unsupported);
        assert!(text.contains("at most 2 participants"), "{text}");
        assert_eq!(shared.registry.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_participant_that_stops_answering_pings_is_no_longer_available() {
        let shared = shared();
        let mut deaf = joined(&shared, "deaf").await;
        let mut answering = joined(&shared, "answering").await;
        let pongs = tokio::spawn(async move {
            let mut answered = 0;
            while let Ok(Message::Ping(nonce)) = answering.recv().await {
                answering.send(&Message::Pong(nonce)).await.unwrap();
                answered += 1;
            }
            answered
        });
        tokio::task::yield_now().await;
        assert_eq!(shared.registry.len(), 2);
        // One beat: both are pinged. Two: the deaf one's time is up.
        tokio::time::sleep(BEAT * 5 / 2).await;
        let left: Vec<String> = shared
            .registry
            .snapshot()
            .into_iter()
            .map(|h| h.who.name)
            .collect();
        assert_eq!(left, ["answering"]);
        // The deaf one was pinged, then its connection was closed.
        assert!(matches!(deaf.recv().await, Ok(Message::Ping(_))));
        assert!(deaf.recv().await.is_err());
        // The one that answers stays, beat after beat.
        tokio::time::sleep(BEAT * 10).await;
        assert_eq!(shared.registry.len(), 1);
        pongs.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_name_is_refused_with_the_verdict_and_a_long_name_with_its_length() {
        let shared = shared();
        for _ in 0..3 {
            shared
                .strikes
                .failed("bad", crate::history::FailureKind::Rejected, "NaN");
        }
        let (code, text) = hello(&shared, "bad").await.1.unwrap_err();
        assert_eq!(code, ErrorCode::Dropped);
        assert!(
            text.starts_with("dropped from the federation: 3 failures"),
            "{text}"
        );
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let (code, text) = hello(&shared, &long).await.1.unwrap_err();
        assert_eq!(code, ErrorCode::Unsupported);
        assert!(text.contains("129 bytes long"), "{text}");
        assert!(shared.registry.is_empty());
    }
}

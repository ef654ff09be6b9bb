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
use fedcore::protocol::transfer::RetryPolicy;
use fedcore::protocol::{Encoding, ErrorCode, ErrorMsg, Hello, Message, PROTOCOL_VERSION, Welcome};
use fedhost::link::{HOST_MAX_FRAME, Link, LinkError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};

use crate::config::{Limits, SerialLine};
use crate::exchange::{self, Peer};
use crate::history::{Identity, LinkKind};
use crate::job::{Job, answer_by};
use crate::validate::Declared;

/// Updates held in memory at once, at most.
pub const UPLOAD_SLOTS: usize = 8;

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
}

impl Handle {
    /// Hands a job over; false if the participant is gone.
    pub async fn send(&self, job: Job) -> bool {
        self.jobs.send(job).await.is_ok()
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

    fn insert(&self, handle: Handle) {
        self.lock().insert(handle.who.id, handle);
        self.changed.notify_waiters();
    }

    fn remove(&self, id: u32) {
        self.lock().remove(&id);
        self.changed.notify_waiters();
    }
}

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
    /// The link failed.
    #[error("{0}")]
    Link(#[from] LinkError),
}

/// Serves one connection from a listener (TCP, or an in-memory pipe in tests)
/// until it fails or is told goodbye; `peer` names it in the log.
pub async fn serve<T: AsyncRead + AsyncWrite + Unpin>(io: T, peer: String, shared: Arc<Shared>) {
    let mut link = Link::new(io);
    let hello = tokio::time::timeout(HELLO_TIMEOUT, await_hello(&mut link, false))
        .await
        .unwrap_or(Err(AdmissionError::NoHello(HELLO_TIMEOUT)));
    match hello {
        Ok(hello) => {
            session(&mut link, hello, LinkKind::Tcp, None, &shared).await;
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
            match session(&mut link, greeting, LinkKind::Serial, Some(retry), &shared).await {
                Ended::Bye => return,
                Ended::Failed => {}
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
    encoding: Encoding,
    max_frame: usize,
    declared: Declared,
}

impl From<&Hello<'_>> for Greeting {
    fn from(h: &Hello<'_>) -> Self {
        Greeting {
            version: h.version,
            name: h.name.to_string(),
            encoding: h.encoding,
            max_frame: (h.max_frame as usize).min(HOST_MAX_FRAME),
            declared: Declared {
                train_examples: h.train_examples,
                test_examples: h.test_examples,
            },
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

/// How a session ended.
enum Ended {
    /// The federation is done.
    Bye,
    /// A job failed or the link broke.
    Failed,
    /// The device said hello again while idle (it restarted).
    Restarted(Greeting),
}

/// Welcomes a participant and carries out its jobs until one fails or it is told goodbye.
async fn session<T: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<T>,
    hello: Greeting,
    kind: LinkKind,
    retry: Option<RetryPolicy>,
    shared: &Shared,
) -> Ended {
    let (handle, mut jobs, peer) = match welcome(link, hello, kind, retry, shared).await {
        Ok(joined) => joined,
        Err(e) => {
            tracing::warn!("a participant was not admitted: {e}");
            return Ended::Failed;
        }
    };
    let id = handle.who.id;
    tracing::info!(id, name = %handle.who.name, ?kind, "participant joined");
    shared.registry.insert(handle);
    let ended = loop {
        let job = if kind == LinkKind::Serial {
            // Between jobs, listen to the line too: a device that restarts says hello.
            tokio::select! {
                job = jobs.recv() => job,
                heard = link.recv() => match heard {
                    Ok(Message::Hello(h)) => break Ended::Restarted(Greeting::from(&h)),
                    Ok(_) | Err(LinkError::Frame(_)) => continue,
                    Err(_) => break Ended::Failed,
                },
            }
        } else {
            // Between jobs a TCP participant has nothing to say: anything it
            // sends, or its closing the connection, ends the session, so a peer
            // that left is not counted as available.
            tokio::select! {
                job = jobs.recv() => job,
                heard = link.recv() => {
                    match heard {
                        Ok(other) => tracing::warn!(id, "unexpected {} between jobs; closing", other.name()),
                        Err(e) => tracing::info!(id, "connection closed between jobs: {e}"),
                    }
                    break Ended::Failed;
                }
            }
        };
        let Some(job) = job else {
            break Ended::Failed;
        };
        let succeeded = match job {
            Job::Fit {
                job,
                global,
                deadline,
                reply,
            } => {
                let work = exchange::fit(link, &shared.uploads, job, &global, peer);
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
        // A failed job leaves the link in an unknown state: close it.
        if !succeeded {
            break Ended::Failed;
        }
    };
    shared.registry.remove(id);
    if let (Ended::Failed, LinkKind::Serial) = (&ended, kind) {
        // Tell the device, so it says hello again instead of waiting for a job.
        let _ = link
            .send(&Message::Error(ErrorMsg {
                code: ErrorCode::Unexpected,
                text: "left out of the round; say hello to rejoin",
            }))
            .await;
    }
    tracing::info!(id, "participant left");
    ended
}

/// Checks the hello's version, gives the participant an id and the model.
async fn welcome<T: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<T>,
    hello: Greeting,
    kind: LinkKind,
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
    } else if shared.registry.len() >= limits.max_clients {
        Some((
            ErrorCode::Unsupported,
            AdmissionError::Full(limits.max_clients),
        ))
    } else {
        None
    };
    if let Some((code, refusal)) = refusal {
        let _ = link
            .send(&Message::Error(ErrorMsg {
                code,
                text: &refusal.to_string(),
            }))
            .await;
        return Err(refusal);
    }
    let id = shared.registry.next_id.fetch_add(1, Ordering::Relaxed);
    link.send(&Message::Welcome(Welcome {
        client_id: id,
        model: shared.model.clone(),
    }))
    .await?;
    let (tx, rx) = mpsc::channel(4);
    let peer = Peer {
        kind,
        encoding: hello.encoding,
        max_frame: hello.max_frame,
        retry,
        declared: hello.declared,
        max_update_norm: limits.max_update_norm,
    };
    Ok((
        Handle {
            who: Identity {
                id,
                name: hello.name,
                kind,
            },
            jobs: tx,
        },
        rx,
        peer,
    ))
}

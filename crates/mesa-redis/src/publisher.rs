//! The one queue every publication of an engine (or Dispatcher) goes through on its way to Redis.
//!
//! A publication is queued when `publish` is called, so the queue holds them in call order; one task takes
//! what is waiting, sends it as one pipeline (in a Cluster, one per slot) on the one command connection,
//! and waits for the replies before sending the next batch. So two publications from one origin to one
//! channel reach Redis, and every subscriber, in the order they were published. Each publication has a
//! deadline (`publish_timeout`): one not handed to Redis by then fails with `Unavailable` and is not sent
//! later; one whose batch was sent but not answered in time fails too, and may still have been delivered.
//!
//! Session releases must not be lost to a Redis outage (a session left held keeps its stream for good), so
//! they are queued as *retried*: one that Redis did not take is kept in [`Redo`] and queued again once
//! Redis is back ([`Publisher::resubmit`]). Releases are idempotent (a release names its holder), so one
//! that was written after all and is written again changes nothing.

use std::future::Future;
use std::sync::{Arc, Mutex};

use mesa_engine::EngineError;
use redis::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::link::Link;
use crate::routing::Sends;

/// Commands sent in one pipeline at most.
const MAX_BATCH: usize = 1024;

/// What a job's sender gets back: the subscriber counts, or why not.
type Reply = Result<Vec<i64>, EngineError>;

struct Job {
    sends: Sends,
    deadline: Instant,
    reply: oneshot::Sender<Reply>,
    /// Kept in [`Redo`] when Redis does not take it.
    retried: bool,
}

/// Retried sends Redis did not take, until they are queued again. Bounded: past [`Redo::LIMIT`] a send
/// is dropped and logged.
#[derive(Default)]
pub(crate) struct Redo {
    sends: Mutex<Vec<Sends>>,
}

impl Redo {
    /// Sends kept at most (each a session release: one session left held, within its bounds, if dropped).
    const LIMIT: usize = 100_000;

    fn keep(&self, sends: Sends) {
        let mut kept = self.sends.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < Redo::LIMIT {
            kept.push(sends);
        } else {
            tracing::warn!(
                limit = Redo::LIMIT,
                "too many session releases wait for Redis: one dropped (its session stays held)"
            );
        }
    }

    fn take(&self) -> Vec<Sends> {
        std::mem::take(&mut *self.sends.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// How many sends wait.
    pub(crate) fn len(&self) -> usize {
        self.sends.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The queue's sending side.
pub(crate) struct Publisher {
    tx: mpsc::Sender<Job>,
    link: Arc<Link>,
    redo: Arc<Redo>,
}

impl Publisher {
    /// Starts the task that empties the queue (it ends with the link's shutdown token).
    pub(crate) fn start(link: Arc<Link>) -> Publisher {
        let (tx, rx) = mpsc::channel(link.config.publish_queue);
        let redo = Arc::new(Redo::default());
        tokio::spawn(run(link.clone(), redo.clone(), rx));
        Publisher { tx, link, redo }
    }

    /// Queues `sends` now, in call order; `None` when there is nothing to send. The receiver gets the
    /// replies (a dropped receiver is fine: the job is sent all the same).
    fn enqueue(
        &self,
        sends: Sends,
        retried: bool,
    ) -> Result<Option<oneshot::Receiver<Reply>>, EngineError> {
        let link = &self.link;
        if sends.is_empty() {
            return Ok(None);
        }
        if link.shutdown.is_cancelled() {
            return Err(EngineError::Closed);
        }
        if link.is_lost() {
            return Err(EngineError::Unavailable(link.down_reason()));
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            sends,
            deadline: Instant::now() + link.config.publish_timeout,
            reply,
            retried,
        };
        match self.tx.try_send(job) {
            Ok(()) => Ok(Some(answer)),
            Err(mpsc::error::TrySendError::Full(_)) => Err(EngineError::Overloaded(format!(
                "{} publications are waiting for Redis (publish_queue)",
                link.config.publish_queue
            ))),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(EngineError::Closed),
        }
    }

    /// Queues `sends` behind the publications without waiting for Redis's answer (acknowledgements):
    /// fails only when it could not even be queued.
    pub(crate) fn submit_detached(&self, sends: Sends) -> Result<(), EngineError> {
        self.enqueue(sends, false).map(|_| ())
    }

    /// Queues `sends` like [`submit_detached`](Self::submit_detached), and keeps them to queue again
    /// when Redis does not take them (unreachable, timed out, failing over): for session releases.
    pub(crate) fn submit_retried(&self, sends: Sends) {
        match self.enqueue(sends.clone(), true) {
            Ok(_) | Err(EngineError::Closed) => {}
            Err(_) => self.redo.keep(sends),
        }
    }

    /// Queues again what Redis did not take; call once it is reachable. Returns how many were queued.
    pub(crate) fn resubmit(&self) -> usize {
        let sends = self.redo.take();
        let count = sends.len();
        for sends in sends {
            self.submit_retried(sends);
        }
        count
    }

    /// What waits to be queued again.
    pub(crate) fn redo(&self) -> &Redo {
        &self.redo
    }

    /// Queues a publication's sends now (keeping the order of calls) and returns the number of
    /// subscribers Redis reported per channel (or command). Fails at once when Redis was reachable and is
    /// not any more, or when the queue is full. Counted in the publish metrics.
    pub(crate) fn submit(
        &self,
        sends: Sends,
    ) -> impl Future<Output = Result<Vec<i64>, EngineError>> + Send + 'static {
        let link = self.link.clone();
        let answer = self.submit_uncounted(sends);
        async move {
            let result = answer.await;
            match &result {
                Ok(_) => link.metrics.published(),
                Err(_) => link.metrics.publish_failed(),
            }
            result
        }
    }

    /// Waits until everything queued before this call was written (a PING behind it in the one ordered
    /// queue); not a publication, so not counted as one.
    pub(crate) async fn barrier(&self) -> Result<(), EngineError> {
        self.submit_uncounted(Sends::Commands(vec![redis::cmd("PING")]))
            .await
            .map(|_| ())
    }

    fn submit_uncounted(
        &self,
        sends: Sends,
    ) -> impl Future<Output = Result<Vec<i64>, EngineError>> + Send + 'static {
        let timeout = self.link.config.publish_timeout;
        let queued = self.enqueue(sends, false);
        async move {
            match queued {
                Ok(None) => Ok(Vec::new()),
                Ok(Some(answer)) => match tokio::time::timeout(timeout, answer).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(_)) => Err(EngineError::Closed),
                    Err(_) => Err(EngineError::Unavailable(format!(
                        "Redis did not take the publication within {timeout:?}"
                    ))),
                },
                Err(error) => Err(error),
            }
        }
    }
}

async fn run(link: Arc<Link>, redo: Arc<Redo>, mut rx: mpsc::Receiver<Job>) {
    loop {
        let first = tokio::select! {
            _ = link.shutdown.cancelled() => return,
            job = rx.recv() => match job {
                Some(job) => job,
                None => return,
            },
        };
        let mut commands = first.sends.len();
        let mut batch = vec![first];
        while commands < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => {
                    commands += job.sends.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        send_batch(&link, &redo, batch).await;
    }
}

/// Redis did not take `jobs`: their senders hear why; the retried ones are kept to be queued again.
fn fail(jobs: Vec<Job>, error: &EngineError, redo: &Redo) {
    for job in jobs {
        if job.retried {
            redo.keep(job.sends);
        }
        let _ = job.reply.send(Err(error.clone()));
    }
}

/// Errors Redis answers while it cannot take writes for now (loading, failing over, a Cluster slot
/// moving): a retried send is tried again later.
fn is_transient(error: &redis::ServerError) -> bool {
    matches!(
        error.code(),
        "LOADING" | "READONLY" | "MASTERDOWN" | "CLUSTERDOWN" | "TRYAGAIN" | "BUSY"
    )
}

async fn send_batch(link: &Link, redo: &Redo, mut batch: Vec<Job>) {
    let Some(deadline) = batch.iter().map(|j| j.deadline).max() else {
        return;
    };
    // Before the first connection a publication waits for it (within its deadline); after a loss the
    // caller already failed fast, and what was queued before the loss fails now.
    let connections = match link.connections() {
        Some(c) => Some(c),
        None if !link.is_lost() => link.wait_connected(deadline).await,
        None => None,
    };
    let now = Instant::now();
    let (late, live): (Vec<Job>, Vec<Job>) = batch.drain(..).partition(|j| j.deadline <= now);
    fail(
        late,
        &EngineError::Unavailable("not handed to Redis within the publish timeout".into()),
        redo,
    );
    let Some(connections) = connections else {
        fail(live, &EngineError::Unavailable(link.down_reason()), redo);
        return;
    };
    if live.is_empty() {
        return;
    }
    let conn = &connections.commands;
    let cmds = live
        .iter()
        .flat_map(|job| match &job.sends {
            Sends::Publish { channels, payload } => {
                channels.iter().map(|c| conn.publish(c, payload)).collect()
            }
            Sends::Commands(cmds) => cmds.clone(),
            Sends::Scripts(calls) => calls.iter().map(|c| c.evalsha()).collect(),
        })
        .collect();
    let sent = async {
        let mut replies = conn.run(cmds).await?;
        crate::streams::rerun_missing(conn, script_calls(&live), &mut replies).await?;
        Ok::<_, redis::RedisError>(replies)
    };
    match tokio::time::timeout_at(deadline, sent).await {
        Ok(Ok(replies)) => {
            let mut replies = replies.into_iter();
            for job in live {
                let mine: Vec<Value> = replies.by_ref().take(job.sends.len()).collect();
                if job.retried
                    && mine
                        .iter()
                        .any(|v| matches!(v, Value::ServerError(e) if is_transient(e)))
                {
                    redo.keep(job.sends.clone());
                }
                let _ = job.reply.send(counts(mine));
            }
        }
        Ok(Err(error)) => {
            if error.is_io_error()
                || error.is_connection_dropped()
                || error.is_unrecoverable_error()
            {
                link.lost(connections.generation, format!("publish failed: {error}"));
            }
            fail(live, &EngineError::Unavailable(error.to_string()), redo);
        }
        Err(_) => fail(
            live,
            &EngineError::Unavailable(format!(
                "Redis did not answer within {:?}",
                link.config.publish_timeout
            )),
            redo,
        ),
    }
}

/// The script calls among `jobs`' commands, with their index in the batch.
fn script_calls(jobs: &[Job]) -> Vec<(usize, &crate::streams::ScriptCall)> {
    let mut at = 0;
    let mut calls = Vec::new();
    for job in jobs {
        if let Sends::Scripts(scripts) = &job.sends {
            calls.extend(scripts.iter().enumerate().map(|(i, call)| (at + i, call)));
        }
        at += job.sends.len();
    }
    calls
}

/// PUBLISH replies: subscriber counts, or why Redis refused.
fn counts(replies: Vec<Value>) -> Result<Vec<i64>, EngineError> {
    replies
        .into_iter()
        .map(|reply| match reply {
            Value::Int(n) => Ok(n),
            // The PING of a flush barrier: no subscribers.
            Value::SimpleString(_) | Value::Okay => Ok(0),
            Value::ServerError(e) => Err(EngineError::Backend(e.to_string())),
            other => Err(EngineError::Backend(format!(
                "unexpected PUBLISH reply {other:?}"
            ))),
        })
        .collect()
}

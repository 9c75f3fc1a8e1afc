//! Appends, grouped: one writer per node turns the appends waiting at a
//! moment into one log message.
//!
//! NATS 2.9 has no atomic publish of several messages, so a group (and so
//! each append, whatever its size) is one message, all or nothing. Its
//! headers carry the position of its first update; the next positions are
//! known only from the message before it, so a group is published with
//! `Nats-Expected-Last-Sequence` set to the log message it follows: when
//! another node appended in between, the server refuses it and the writer
//! reads the new end and tries again. Positions are therefore gapless and
//! in log order, across all nodes.
//!
//! Ids are unique across nodes through reservations: before its group, the
//! writer publishes one message per id on that id's own subject in the
//! `ids` stream (`Nats-Expected-Last-Subject-Sequence: 0`, or the sequence
//! of a reservation found stale), naming the log message the group will
//! be. A reservation found in place is checked against the log:
//!
//! - the log message it names holds the id: the id is taken (`409`);
//! - that message holds other updates, or was removed: it is stale, and is
//!   replaced;
//! - that message is not written yet: its writer may still publish it, at
//!   exactly that sequence (its expected-last-sequence fixes it). When this
//!   writer aims at that same sequence, it replaces the reservation and
//!   publishes its own group there: the server takes only one of the two,
//!   the reservation names that message either way, and the loser finds
//!   the id in the winner's message (this writer checks it before it
//!   moves its reservations anywhere else). When this writer aims at an
//!   earlier sequence, its view of the log is behind: it reads the end
//!   again.
//!
//! A resume by id reads the reservation, then the log message it names:
//! two direct gets, never a scan.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_nats::jetstream::context::{Publish, PublishErrorKind};
use async_nats::jetstream::stream::DirectGetErrorKind;
use futures_util::future::join_all;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::state::{encode_group, unavailable, Inner, Request, COUNT, FIRST};
use crate::engine::{EngineError, Position};

/// The most payload one group carries (NATS refuses messages over its
/// `max_payload`, 1 MiB by default).
const GROUP_BYTES: usize = 512 * 1024;

/// Where this writer believes the log ends.
#[derive(Debug, Clone, Copy)]
struct End {
    seq: u64,
    position: Position,
}

/// The appends waiting for the writer.
struct Queue {
    rx: UnboundedReceiver<Request>,
    /// One taken off the channel that did not fit in the last group.
    held: Option<Request>,
}

impl Queue {
    /// Moves waiting appends into `group`, up to [`GROUP_BYTES`].
    fn fill(&mut self, group: &mut Vec<Request>) {
        let mut size: usize = group.iter().map(payload_size).sum();
        while size < GROUP_BYTES {
            let Some(r) = self.held.take().or_else(|| self.rx.try_recv().ok()) else {
                break;
            };
            let s = payload_size(&r);
            if size + s > GROUP_BYTES && !group.is_empty() {
                self.held = Some(r);
                break;
            }
            size += s;
            group.push(r);
        }
    }
}

/// Runs until the engine closes.
pub(crate) async fn run(
    inner: Arc<Inner>,
    rx: UnboundedReceiver<Request>,
    stop: CancellationToken,
) {
    let mut end: Option<End> = None;
    let mut queue = Queue { rx, held: None };
    loop {
        if stop.is_cancelled() {
            break;
        }
        let first = match queue.held.take() {
            Some(r) => r,
            None => tokio::select! {
                biased;
                () = stop.cancelled() => break,
                r = queue.rx.recv() => match r { Some(r) => r, None => break },
            },
        };
        let mut group = vec![first];
        queue.fill(&mut group);
        commit(&inner, &mut end, group, &mut queue).await;
    }
    // Whatever still waits is answered: the engine is closing.
    if let Some(mut r) = queue.held.take() {
        answer(&mut r, Err(EngineError::Closed));
    }
    while let Ok(mut r) = queue.rx.try_recv() {
        answer(&mut r, Err(EngineError::Closed));
    }
}

fn payload_size(r: &Request) -> usize {
    r.updates
        .iter()
        .map(|u| 64 + u.id.len() + u.data.len() + u.topics.iter().map(String::len).sum::<usize>())
        .sum()
}

/// A reservation this writer holds: its subject's sequence, and the log
/// message it names.
#[derive(Debug, Clone, Copy)]
struct Held {
    subject_seq: u64,
    names: u64,
}

/// Publishes `group` as one log message. Each try is bounded by the
/// timeout; after another node appended first, the appends that arrived
/// meanwhile join the group, so a node that waits publishes more at once.
async fn commit(inner: &Inner, end: &mut Option<End>, mut group: Vec<Request>, queue: &mut Queue) {
    let epoch = inner.epoch.lock().clone();
    refuse_duplicates_within(inner, &epoch, &mut group).await;
    let mut ids = Ids::default();
    loop {
        group.retain(|r| r.reply.as_ref().is_some_and(|t| !t.is_closed()));
        let epoch = inner.epoch.lock().clone();
        group.retain_mut(|r| {
            if r.epoch == epoch {
                return true;
            }
            answer(
                r,
                Err(EngineError::Unavailable(
                    "nats: the log was replaced; this node is moving to the new one".into(),
                )),
            );
            false
        });
        if group.is_empty() {
            return;
        }
        let attempt = async {
            let at = match *end {
                Some(e) => e,
                None => {
                    let (seq, position) = inner.end().await?;
                    End { seq, position }
                }
            };
            *end = Some(at);
            let seq = at.seq + 1;
            // First what a replaced reservation's writer may have published
            // meanwhile, while this writer's reservations still name the
            // sequence that writer aimed at.
            let taken = ids.settle_fenced(inner, seq).await?;
            if !taken.is_empty() {
                return Ok(Outcome::Taken(taken));
            }
            match ids.reserve(inner, &epoch, seq, &group).await? {
                Reserved::Taken(taken) => return Ok(Outcome::Taken(taken)),
                Reserved::Behind => return Ok(Outcome::Moved),
                Reserved::All => {}
            }
            publish(inner, &group, at, end).await
        };
        let outcome = match tokio::time::timeout(inner.config.timeout, attempt).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                *end = None;
                fail_all(group, &e);
                return;
            }
            Err(_) => {
                *end = None;
                let e = EngineError::Unavailable(format!(
                    "nats: no answer within {:?}",
                    inner.config.timeout
                ));
                fail_all(group, &e);
                return;
            }
        };
        match outcome {
            Outcome::Done => {
                let mut last = end.map_or(0, |e| e.position) - count(&group);
                for mut r in group {
                    last += r.updates.len() as Position;
                    answer(&mut r, Ok(last));
                }
                return;
            }
            Outcome::Taken(taken) => {
                // The appends carrying a taken id are refused; the others
                // try again with the ids they hold.
                group.retain_mut(|r| {
                    match r
                        .updates
                        .iter()
                        .find(|u| taken.contains(&u.id))
                        .map(|u| u.id.clone())
                    {
                        Some(id) => {
                            answer(r, Err(EngineError::DuplicateId(id)));
                            false
                        }
                        None => true,
                    }
                });
            }
            Outcome::Moved => {
                *end = None;
                queue.fill(&mut group);
                refuse_duplicates_within(inner, &epoch, &mut group).await;
            }
        }
    }
}

enum Outcome {
    /// Published; `end` is the new end.
    Done,
    /// These ids are taken by retained updates.
    Taken(HashSet<String>),
    /// Another node appended first: read the end again.
    Moved,
}

fn count(group: &[Request]) -> Position {
    group.iter().map(|r| r.updates.len() as Position).sum()
}

fn answer(r: &mut Request, result: Result<Position, EngineError>) {
    if let Some(tx) = r.reply.take() {
        let _ = tx.send(result);
    }
}

fn fail_all(group: Vec<Request>, e: &EngineError) {
    for mut r in group {
        answer(&mut r, Err(e.clone()));
    }
}

/// An append carrying one id twice, or an id an earlier append of the
/// same group carries, is refused before anything is written, naming its
/// first id that is taken: one of its earlier ids may be in the log
/// already.
async fn refuse_duplicates_within(inner: &Inner, epoch: &str, group: &mut Vec<Request>) {
    let mut seen: HashSet<String> = HashSet::new();
    let mut refused = Vec::new();
    for (n, r) in group.iter().enumerate() {
        let mut own: HashSet<&str> = HashSet::new();
        let dup = r
            .updates
            .iter()
            .position(|u| !own.insert(&u.id) || seen.contains(&u.id));
        match dup {
            Some(at) => refused.push((n, at)),
            None => seen.extend(r.updates.iter().map(|u| u.id.clone())),
        }
    }
    for (n, at) in refused.into_iter().rev() {
        let mut r = group.remove(n);
        let mut named = r.updates[at].id.clone();
        for u in &r.updates[..at] {
            if matches!(stored_already(inner, epoch, &u.id).await, Ok(true)) {
                named = u.id.clone();
                break;
            }
        }
        answer(&mut r, Err(EngineError::DuplicateId(named)));
    }
}

/// Whether a retained update has this id.
async fn stored_already(inner: &Inner, epoch: &str, id: &str) -> Result<bool, EngineError> {
    match inner
        .ids
        .direct_get_last_for_subject(inner.names.id_subject(id))
        .await
    {
        Ok(m) => Ok(matches!(
            check(inner, epoch, id, &m.payload).await?,
            Found::Taken
        )),
        Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(false),
        Err(e) => Err(unavailable(e)),
    }
}

/// How reserving a group's ids went.
enum Reserved {
    /// Every id names the log message about to be published.
    All,
    /// These ids are taken by retained updates.
    Taken(HashSet<String>),
    /// A reservation names a later log message than this writer's: its end
    /// is behind.
    Behind,
}

/// What a reservation found in place means.
pub(crate) enum Found {
    /// The log message it names holds the id.
    Taken,
    /// Of another log, or naming a message that holds other updates or
    /// was removed.
    Stale,
    /// Naming a log message not written yet: its writer may still publish
    /// it, at exactly that sequence.
    Pending(u64),
}

/// Checks a reservation (`epoch\nseq`) found for `id` against the log.
pub(crate) async fn check(
    inner: &Inner,
    epoch: &str,
    id: &str,
    reservation: &[u8],
) -> Result<Found, EngineError> {
    let Some((theirs, seq)) = parse_reservation(reservation) else {
        return Ok(Found::Stale);
    };
    if theirs != epoch {
        // Of an older log, or of a newer one this node has not moved to
        // yet: then it must not be replaced from here.
        if theirs == inner.head().await?.epoch {
            return Err(EngineError::Unavailable(
                "nats: the log was replaced; this node is moving to the new one".into(),
            ));
        }
        return Ok(Found::Stale);
    }
    // The end first, then the message: a message missing below the end
    // was removed, not yet to come.
    let last = inner
        .log
        .get_info()
        .await
        .map_err(unavailable)?
        .state
        .last_sequence;
    match inner.group_at(seq).await? {
        Some(g) if g.find(id)?.is_some() => Ok(Found::Taken),
        Some(_) => Ok(Found::Stale),
        None if seq > last => Ok(Found::Pending(seq)),
        None => Ok(Found::Stale),
    }
}

fn parse_reservation(reservation: &[u8]) -> Option<(&str, u64)> {
    let text = std::str::from_utf8(reservation).ok()?;
    let (e, seq) = text.split_once('\n')?;
    Some((e, seq.parse().ok()?))
}

/// The log message a reservation names, if it is of this log.
pub(crate) fn reserved_seq(epoch: &str, reservation: &[u8]) -> Option<u64> {
    parse_reservation(reservation).and_then(|(e, seq)| (e == epoch).then_some(seq))
}

/// The reservations of one group, across its tries.
#[derive(Debug, Default)]
struct Ids {
    /// Per id, the subject sequence to expect: a reservation found stale.
    expect: HashMap<String, u64>,
    /// Per id, the reservation this writer holds.
    held: HashMap<String, Held>,
    /// Per id, the log message a pending reservation this writer replaced
    /// named: until that sequence is written, its writer may still publish
    /// the id there.
    fenced: HashMap<String, u64>,
}

impl Ids {
    /// Makes every id of the group reserved for log message `seq`.
    async fn reserve(
        &mut self,
        inner: &Inner,
        epoch: &str,
        seq: u64,
        group: &[Request],
    ) -> Result<Reserved, EngineError> {
        let payload = bytes::Bytes::from(format!("{epoch}\n{seq}"));
        loop {
            let todo: Vec<&str> = group
                .iter()
                .flat_map(|r| r.updates.iter().map(|u| u.id.as_str()))
                .filter(|id| self.held.get(*id).is_none_or(|h| h.names != seq))
                .collect();
            if todo.is_empty() {
                return Ok(Reserved::All);
            }
            // Every reservation is sent, then every answer awaited: one
            // round trip.
            let mut pending = Vec::with_capacity(todo.len());
            for id in &todo {
                let prior = self
                    .held
                    .get(*id)
                    .map(|h| h.subject_seq)
                    .or_else(|| self.expect.get(*id).copied())
                    .unwrap_or(0);
                let publish = Publish::build()
                    .payload(payload.clone())
                    .expected_last_subject_sequence(prior);
                let ack = inner
                    .js
                    .send_publish(inner.names.id_subject(id), publish)
                    .await
                    .map_err(unavailable)?;
                pending.push(std::future::IntoFuture::into_future(ack));
            }
            let mut conflicts = Vec::new();
            for (id, ack) in todo.iter().zip(join_all(pending).await) {
                match ack {
                    Ok(ack) => {
                        self.held.insert(
                            (*id).to_owned(),
                            Held {
                                subject_seq: ack.sequence,
                                names: seq,
                            },
                        );
                    }
                    Err(e) if matches!(e.kind(), PublishErrorKind::WrongLastSequence) => {
                        self.held.remove(*id);
                        conflicts.push(*id);
                    }
                    Err(e) => return Err(unavailable(e)),
                }
            }
            let mut taken = HashSet::new();
            for id in conflicts {
                let found = inner
                    .ids
                    .direct_get_last_for_subject(inner.names.id_subject(id))
                    .await;
                match found {
                    Ok(m) => match check(inner, epoch, id, &m.payload).await? {
                        Found::Taken => {
                            taken.insert(id.to_owned());
                        }
                        Found::Stale => {
                            self.expect.insert(id.to_owned(), m.sequence);
                        }
                        // Replaced only when this writer aims at the same
                        // message: whichever of the two the server takes
                        // there, the reservation names where the id is.
                        Found::Pending(at) if at == seq => {
                            self.expect.insert(id.to_owned(), m.sequence);
                            self.fenced.insert(id.to_owned(), at);
                        }
                        Found::Pending(_) => return Ok(Reserved::Behind),
                    },
                    Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => {
                        self.expect.insert(id.to_owned(), 0);
                    }
                    Err(e) => return Err(unavailable(e)),
                }
            }
            if !taken.is_empty() {
                return Ok(Reserved::Taken(taken));
            }
        }
    }

    /// Before publishing at `seq`: an id whose pending reservation this
    /// writer replaced is taken if its writer published it meanwhile (at
    /// the sequence it named, now before `seq`).
    async fn settle_fenced(
        &mut self,
        inner: &Inner,
        seq: u64,
    ) -> Result<HashSet<String>, EngineError> {
        let mut taken = HashSet::new();
        let due: Vec<(String, u64)> = self
            .fenced
            .iter()
            .filter(|(_, at)| **at < seq)
            .map(|(id, at)| (id.clone(), *at))
            .collect();
        for (id, at) in due {
            if let Some(g) = inner.group_at(at).await? {
                if g.find(&id)?.is_some() {
                    taken.insert(id.clone());
                }
            }
            self.fenced.remove(&id);
        }
        Ok(taken)
    }
}

/// Publishes the group as the log message after `at`.
async fn publish(
    inner: &Inner,
    group: &[Request],
    at: End,
    end: &mut Option<End>,
) -> Result<Outcome, EngineError> {
    let n = count(group);
    let payload = encode_group(group.iter().flat_map(|r| r.updates.iter()));
    let publish = Publish::build()
        .payload(payload)
        .header(FIRST, (at.position + 1).to_string())
        .header(COUNT, n.to_string())
        .expected_last_sequence(at.seq);
    let ack = inner
        .js
        .send_publish(inner.names.log_subject.clone(), publish)
        .await
        .map_err(unavailable)?
        .await;
    match ack {
        Ok(ack) => {
            *end = Some(End {
                seq: ack.sequence,
                position: at.position + n,
            });
            Ok(Outcome::Done)
        }
        Err(e) if matches!(e.kind(), PublishErrorKind::WrongLastSequence) => Ok(Outcome::Moved),
        Err(e) => Err(unavailable(e)),
    }
}

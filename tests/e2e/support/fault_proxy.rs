//! A TCP proxy in front of the database that injects the faults a network
//! and a busy server produce, aimed at one kind of command: hold or delay a
//! request, delay or drop its reply (the write happened, the client never
//! hears of it), drop the request itself (the connection breaks before the
//! server sees it), or freeze every byte in both directions.
//!
//! It reads the MongoDB wire protocol (`OP_MSG`) just enough to find message
//! boundaries, the command, its collection and its document (with document
//! sequences folded in), so a rule can pick e.g. "the next `update` on
//! `leases` that sets `owner` to null".

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::bson::{Bson, Document};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

const OP_MSG: i32 = 2013;

/// What happens to a matching command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwarded once [`FaultProxy::release`] is called (or the rule removed).
    HoldRequest,
    /// Forwarded after the delay.
    DelayRequest(Duration),
    /// Forwarded at once; its reply reaches the client after the delay.
    DelayReply(Duration),
    /// Forwarded; the reply is swallowed and the connection cut: applied,
    /// never acknowledged.
    DropReply,
    /// Never forwarded; the connection is cut: the server never saw it.
    DropRequest,
    /// The reply says the `update` command's first statement that names
    /// several `_id`s (a merged statement) was refused, as a multi-document
    /// update stopped part way answers. `applied`: the statement did change
    /// its documents first; otherwise it reaches the server matching none.
    /// The command's other statements are applied either way.
    RefuseMergedStatement { applied: bool },
    /// Forwarded; the reply is replaced by a command error with this code
    /// (for example 286, `ChangeStreamHistoryLost`, for a `getMore`).
    FailCommand { code: i32 },
}

/// What happens to a reply, by its request.
#[derive(Debug, Clone, Copy)]
enum ReplyFault {
    Delay(Duration),
    Drop,
    /// A write error for the statement at this index.
    Refuse(usize),
    /// A command error with this code instead of the reply.
    Fail(i32),
}

/// A command as the proxy sees it.
#[derive(Debug, Clone)]
pub struct Command {
    pub name: String,
    pub collection: Option<String>,
    /// The body, with document sequences (`documents`, `updates`, ...) folded in as arrays.
    pub body: Document,
}

pub type Predicate = Arc<dyn Fn(&Command) -> bool + Send + Sync>;

struct Rule {
    id: usize,
    command: String,
    collection: String,
    predicate: Option<Predicate>,
    fault: Fault,
    /// Matches left before the rule retires itself.
    remaining: usize,
}

#[derive(Default)]
struct Rules {
    next_id: usize,
    rules: Vec<Rule>,
    /// Matches so far, per rule id.
    hits: HashMap<usize, usize>,
}

#[derive(Clone)]
struct Shared {
    rules: Arc<Mutex<Rules>>,
    frozen: Arc<AtomicBool>,
    release: Arc<Notify>,
    released: Arc<Mutex<usize>>,
    hits: watch::Sender<usize>,
    /// Replies rewritten to refuse a merged statement.
    refusals: Arc<AtomicUsize>,
}

pub struct FaultProxy {
    pub port: u16,
    shared: Shared,
    hits: watch::Receiver<usize>,
}

/// A rule added with [`FaultProxy::on`]: its matches so far.
#[derive(Debug, Clone, Copy)]
pub struct RuleId(usize);

impl FaultProxy {
    /// Forwards `127.0.0.1:<port>` to `upstream` (host:port).
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let (hits_tx, hits) = watch::channel(0);
        let shared = Shared {
            rules: Arc::default(),
            frozen: Arc::default(),
            release: Arc::new(Notify::new()),
            released: Arc::default(),
            hits: hits_tx,
            refusals: Arc::default(),
        };
        let accept = shared.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let replies: Arc<Mutex<HashMap<i32, ReplyFault>>> = Arc::default();
                let (cut_tx, cut_rx) = watch::channel(false);
                tokio::spawn(requests(
                    client_read,
                    server_write,
                    accept.clone(),
                    Arc::clone(&replies),
                    cut_tx,
                ));
                tokio::spawn(answers(
                    server_read,
                    client_write,
                    accept.clone(),
                    replies,
                    cut_rx,
                ));
            }
        });
        Self { port, shared, hits }
    }

    /// In front of the shared test server.
    pub async fn start_for_shared() -> Self {
        Self::start(
            super::shared_mongo()
                .trim_start_matches("mongodb://")
                .to_owned(),
        )
        .await
    }

    /// The URI of `database` through this proxy.
    pub fn uri(&self, database: &str) -> String {
        format!(
            "mongodb://127.0.0.1:{}/{database}?directConnection=true",
            self.port
        )
    }

    /// Applies `fault` to the next `times` commands `command` on `collection`
    /// for which `predicate` (if any) holds.
    pub fn on(
        &self,
        command: &str,
        collection: &str,
        fault: Fault,
        times: usize,
        predicate: Option<Predicate>,
    ) -> RuleId {
        let mut rules = self.shared.rules.lock().unwrap();
        let id = rules.next_id;
        rules.next_id += 1;
        rules.rules.push(Rule {
            id,
            command: command.to_owned(),
            collection: collection.to_owned(),
            predicate,
            fault,
            remaining: times,
        });
        RuleId(id)
    }

    /// Shorthand for [`FaultProxy::on`] without a predicate.
    pub fn on_next(&self, command: &str, collection: &str, fault: Fault, times: usize) -> RuleId {
        self.on(command, collection, fault, times, None)
    }

    /// Removes every rule that has not fired yet.
    pub fn clear(&self) {
        self.shared.rules.lock().unwrap().rules.clear();
    }

    /// How many commands the rule has matched so far.
    pub fn hits(&self, rule: RuleId) -> usize {
        self.shared
            .rules
            .lock()
            .unwrap()
            .hits
            .get(&rule.0)
            .copied()
            .unwrap_or(0)
    }

    /// Waits (up to `timeout`) until the rule matched `n` commands.
    pub async fn wait_hits(&self, rule: RuleId, n: usize, timeout: Duration) {
        let mut hits = self.hits.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        while self.hits(rule) < n {
            assert!(
                tokio::time::timeout_at(deadline, hits.changed())
                    .await
                    .is_ok(),
                "the proxy rule matched {} of {n} commands within {timeout:?}",
                self.hits(rule)
            );
        }
    }

    /// How many replies were rewritten to refuse a merged statement
    /// ([`Fault::RefuseMergedStatement`]): a rule's hits count the commands
    /// it matched, this what it actually did to them.
    pub fn refusals(&self) -> usize {
        self.shared.refusals.load(Ordering::SeqCst)
    }

    /// Lets every held request through (and later ones that match a hold rule).
    pub fn release(&self) {
        *self.shared.released.lock().unwrap() += 1;
        self.shared.release.notify_waiters();
    }

    /// Stops (or resumes) forwarding any byte, both ways: a server that
    /// accepted requests and never answers.
    pub fn freeze(&self, frozen: bool) {
        self.shared.frozen.store(frozen, Ordering::SeqCst);
    }
}

/// Reads one whole wire-protocol message.
async fn message(from: &mut OwnedReadHalf) -> Option<Vec<u8>> {
    let mut length = [0u8; 4];
    from.read_exact(&mut length).await.ok()?;
    let total = i32::from_le_bytes(length) as usize;
    let mut message = length.to_vec();
    message.resize(total.max(4), 0);
    from.read_exact(&mut message[4..]).await.ok()?;
    Some(message)
}

fn request_id(message: &[u8]) -> i32 {
    i32::from_le_bytes(message[4..8].try_into().unwrap_or_default())
}

fn response_to(message: &[u8]) -> i32 {
    i32::from_le_bytes(message[8..12].try_into().unwrap_or_default())
}

/// The command of an `OP_MSG`: its body (section kind 0) with every document
/// sequence (kind 1) folded in under its identifier.
fn command(message: &[u8]) -> Option<Command> {
    let op_code = i32::from_le_bytes(message.get(12..16)?.try_into().ok()?);
    if op_code != OP_MSG {
        return None;
    }
    let flags = u32::from_le_bytes(message.get(16..20)?.try_into().ok()?);
    // A trailing checksum (flag bit 0) is not a section.
    let end = message.len() - if flags & 1 == 1 { 4 } else { 0 };
    let mut at = 20;
    let mut body: Option<Document> = None;
    let mut sequences: Vec<(String, Vec<Bson>)> = Vec::new();
    while at < end {
        let kind = *message.get(at)?;
        at += 1;
        match kind {
            0 => {
                let size = i32::from_le_bytes(message.get(at..at + 4)?.try_into().ok()?) as usize;
                body = Document::from_reader(message.get(at..at + size)?).ok();
                at += size;
            }
            1 => {
                let size = i32::from_le_bytes(message.get(at..at + 4)?.try_into().ok()?) as usize;
                let section = message.get(at + 4..at + size)?;
                let name_end = section.iter().position(|b| *b == 0)?;
                let name = String::from_utf8_lossy(&section[..name_end]).into_owned();
                let mut documents = Vec::new();
                let mut rest = &section[name_end + 1..];
                while rest.len() >= 4 {
                    let length = i32::from_le_bytes(rest[..4].try_into().ok()?) as usize;
                    documents.push(Bson::Document(
                        Document::from_reader(rest.get(..length)?).ok()?,
                    ));
                    rest = &rest[length..];
                }
                sequences.push((name, documents));
                at += size;
            }
            _ => return None,
        }
    }
    let mut body = body?;
    let (name, collection) = {
        let (key, value) = body.iter().next()?;
        // A getMore names its cursor first and its collection in a field.
        let collection = match value.as_str() {
            Some(collection) => Some(collection.to_owned()),
            None => body.get_str("collection").ok().map(str::to_owned),
        };
        (key.clone(), collection)
    };
    for (key, documents) in sequences {
        body.insert(key, Bson::Array(documents));
    }
    Some(Command {
        name,
        collection,
        body,
    })
}

/// The fault the rules give `command`, if any (consuming one match).
fn fault_for(shared: &Shared, command: &Command) -> Option<Fault> {
    let mut rules = shared.rules.lock().unwrap();
    let position = rules.rules.iter().position(|rule| {
        rule.command == command.name
            && command.collection.as_deref() == Some(rule.collection.as_str())
            && rule.predicate.as_ref().is_none_or(|p| p(command))
    })?;
    let rule = &mut rules.rules[position];
    let (id, fault) = (rule.id, rule.fault);
    rule.remaining -= 1;
    if rule.remaining == 0 {
        rules.rules.remove(position);
    }
    *rules.hits.entry(id).or_default() += 1;
    drop(rules);
    shared.hits.send_modify(|n| *n += 1);
    Some(fault)
}

async fn wait_unfrozen(shared: &Shared) {
    while shared.frozen.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn requests(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: Shared,
    replies: Arc<Mutex<HashMap<i32, ReplyFault>>>,
    cut: watch::Sender<bool>,
) {
    while let Some(message) = message(&mut from).await {
        let parsed = command(&message);
        let fault = parsed.as_ref().and_then(|c| fault_for(&shared, c));
        let on_reply = |fault| {
            replies.lock().unwrap().insert(request_id(&message), fault);
        };
        match fault {
            Some(Fault::HoldRequest) => {
                let seen = *shared.released.lock().unwrap();
                loop {
                    let notified = shared.release.notified();
                    if *shared.released.lock().unwrap() > seen {
                        break;
                    }
                    notified.await;
                }
            }
            Some(Fault::DelayRequest(delay)) => tokio::time::sleep(delay).await,
            Some(Fault::DropRequest) => {
                let _ = cut.send(true);
                return;
            }
            Some(Fault::DelayReply(delay)) => on_reply(ReplyFault::Delay(delay)),
            Some(Fault::DropReply) => on_reply(ReplyFault::Drop),
            Some(Fault::FailCommand { code }) => on_reply(ReplyFault::Fail(code)),
            Some(Fault::RefuseMergedStatement { applied }) => {
                if let Some((command, index)) =
                    (parsed.as_ref()).and_then(|c| merged_statement(c).map(|index| (c, index)))
                {
                    on_reply(ReplyFault::Refuse(index));
                    if !applied {
                        let unapplied = matching_nothing(&message, command, index);
                        wait_unfrozen(&shared).await;
                        if to.write_all(&unapplied).await.is_err() {
                            return;
                        }
                        continue;
                    }
                }
            }
            None => {}
        }
        wait_unfrozen(&shared).await;
        if to.write_all(&message).await.is_err() {
            return;
        }
    }
}

async fn answers(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: Shared,
    replies: Arc<Mutex<HashMap<i32, ReplyFault>>>,
    mut cut: watch::Receiver<bool>,
) {
    loop {
        let message = tokio::select! {
            message = message(&mut from) => message,
            _ = cut.wait_for(|c| *c) => None,
        };
        let Some(message) = message else {
            let _ = to.shutdown().await;
            return;
        };
        let fault = replies.lock().unwrap().remove(&response_to(&message));
        let message = match fault {
            Some(ReplyFault::Drop) => {
                // Applied; the client will never know: cut it off.
                let _ = to.shutdown().await;
                return;
            }
            Some(ReplyFault::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                message
            }
            Some(ReplyFault::Refuse(index)) => match refusing(&message, index) {
                Some(refused) => {
                    shared.refusals.fetch_add(1, Ordering::SeqCst);
                    refused
                }
                None => message,
            },
            Some(ReplyFault::Fail(code)) => failing(&message, code),
            None => message,
        };
        wait_unfrozen(&shared).await;
        if to.write_all(&message).await.is_err() {
            return;
        }
    }
}

/// The index of an `update` command's first statement whose filter names
/// several `_id`s (`{_id: {$in: [..]}}` with more than one).
fn merged_statement(command: &Command) -> Option<usize> {
    let updates = command.body.get_array("updates").ok()?;
    updates.iter().position(|statement| {
        let ids = statement
            .as_document()
            .and_then(|s| s.get_document("q").ok())
            .and_then(|q| q.get_document("_id").ok())
            .and_then(|id| id.get_array("$in").ok());
        ids.is_some_and(|ids| ids.len() > 1)
    })
}

/// `request` (an `update` command) sent again with its statement at `index`
/// matching no document, as one `OP_MSG` body (its document sequences
/// inline, which servers accept), same request id.
fn matching_nothing(request: &[u8], command: &Command, index: usize) -> Vec<u8> {
    let mut body = command.body.clone();
    if let Ok(updates) = body.get_array_mut("updates")
        && let Some(Bson::Document(statement)) = updates.get_mut(index)
    {
        statement.insert("q", mongodb::bson::doc! { "_id": { "$in": [] } });
    }
    op_msg(request, &body)
}

/// A command error with `code` in place of `reply` (an `OP_MSG`): the same
/// header, no checksum, one body section.
fn failing(reply: &[u8], code: i32) -> Vec<u8> {
    let body = mongodb::bson::doc! {
        "ok": 0.0,
        "code": code,
        "codeName": "FaultProxy",
        "errmsg": "failed by the fault proxy",
    };
    op_msg(reply, &body)
}

/// An `OP_MSG` with `original`'s header (its ids and op code), no flags and
/// `body` as its one section.
fn op_msg(original: &[u8], body: &Document) -> Vec<u8> {
    let mut encoded = Vec::new();
    body.to_writer(&mut encoded)
        .expect("a document that was read or built here");
    let mut message = original[..16].to_vec();
    message.extend_from_slice(&0u32.to_le_bytes());
    message.push(0);
    message.extend_from_slice(&encoded);
    let length = i32::try_from(message.len()).expect("a message under 2 GiB");
    message[..4].copy_from_slice(&length.to_le_bytes());
    message
}

/// `reply` (an `OP_MSG` with its body alone) with a write error for the
/// statement at `index` added; `None` if it is not such a reply.
fn refusing(reply: &[u8], index: usize) -> Option<Vec<u8>> {
    if i32::from_le_bytes(reply.get(12..16)?.try_into().ok()?) != OP_MSG {
        return None;
    }
    let flags = u32::from_le_bytes(reply.get(16..20)?.try_into().ok()?);
    if flags & 1 == 1 || *reply.get(20)? != 0 {
        return None;
    }
    let mut body = Document::from_reader(reply.get(21..)?).ok()?;
    let mut errors = body.get_array("writeErrors").cloned().unwrap_or_default();
    errors.push(Bson::Document(mongodb::bson::doc! {
        "index": index as i32,
        "code": 2,
        "errmsg": "refused by the fault proxy",
    }));
    body.insert("writeErrors", errors);
    Some(op_msg(reply, &body))
}

/// A predicate on a command's body: the value at `path` (dotted, arrays
/// entered at their first element) equals `value`.
pub fn field_is(path: &'static str, value: Bson) -> Predicate {
    Arc::new(move |command: &Command| lookup(&command.body, path) == Some(&value))
}

/// A predicate: the command's body mentions `text` anywhere (its debug form).
pub fn mentions(text: &'static str) -> Predicate {
    Arc::new(move |command: &Command| format!("{:?}", command.body).contains(text))
}

fn lookup<'a>(document: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let mut value = document.get(parts.next()?)?;
    for part in parts {
        value = match value {
            Bson::Document(d) => d.get(part)?,
            Bson::Array(a) => match a.first()? {
                Bson::Document(d) => d.get(part)?,
                _ => return None,
            },
            _ => return None,
        };
    }
    Some(value)
}

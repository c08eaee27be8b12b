//! Named services (MessagePasser's connections by protocol name, fabric's allowed names):
//! conversations and calls reach a service by (node, name) or by its capability address.
//!
//! Who may use a service: any peer the node admits, by name or by the service's address;
//! [`ServiceOptions::allow`] restricts name-based access (conversations and lookups) to a set
//! of nodes. The service's address is a capability of its own: whoever holds it may open
//! conversations with the service, like sending to a mailbox.
// Handles what peers send: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashSet;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use ferry_proto::conversation::{self as proto, Answer, Opening, Request};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, Instrument};

use crate::address::{Address, MailboxId, Usage};
use crate::conversation::Conversation;
use crate::error::{CallError, ConversationError, DialError, OpenError, ServeError, StreamError};
use crate::frame::Refusal;
use crate::frame::{self, ConverseTarget, ErrorCode, Frame};
use crate::identity::NodeId;
use crate::mailbox::{self, Mailbox};
use crate::net::builtin::refuse;
use crate::net::dial;
use crate::registry::mailboxes::Budget;
use crate::registry::services::{Handler, Incoming, ServiceEntry};
use crate::runtime::Runtime;

/// How a service is offered.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Nodes that may reach the service by name (conversations, calls, lookups). Default
    /// `None`: every node this node admits.
    pub allow: Option<HashSet<NodeId>>,
    /// Incoming conversations waiting to be accepted ([`Service::accept`]) before new ones are
    /// refused as busy. Default 1024. (A handler of `Node::serve` takes each at once.)
    pub backlog: usize,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            allow: None,
            backlog: 1024,
        }
    }
}

/// A registered service: accept its conversations with [`Service::accept`]. Dropping it
/// unregisters the name and revokes its address.
#[must_use = "dropping a Service unregisters it at once"]
pub struct Service {
    registration: Registration,
    incoming: mpsc::Receiver<Conversation>,
    /// The node's shutdown signal.
    shutdown: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.registration.name)
            .finish()
    }
}

impl Service {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.registration.name
    }

    /// The service's capability address: opening a conversation to it reaches the service.
    pub fn address(&self) -> &Address {
        self.registration.mailbox.address()
    }

    /// The next incoming conversation; `None` once the node shuts down (conversations still
    /// waiting in the backlog then are reset with [`ErrorCode::SHUTTING_DOWN`]).
    pub async fn accept(&mut self) -> Option<Conversation> {
        if !self.shutdown.is_cancelled() {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {}
                conversation = self.incoming.recv() => return conversation,
            }
        }
        self.abandon_backlog(ErrorCode::SHUTTING_DOWN);
        None
    }

    /// Takes no more conversations and resets those waiting in the backlog with `why`.
    fn abandon_backlog(&mut self, why: ErrorCode) {
        self.incoming.close();
        while let Ok(conversation) = self.incoming.try_recv() {
            conversation.abandon(why);
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Closed before the registration goes: a conversation that finds the service meanwhile
        // is refused as a stopped service (NO_SUCH_SERVICE), as it would be once it is gone.
        let shutting_down = self
            .registration
            .node
            .upgrade()
            .is_none_or(|node| node.is_closing());
        self.abandon_backlog(if shutting_down {
            ErrorCode::SHUTTING_DOWN
        } else {
            ErrorCode::HANDLER_FAILED
        });
    }
}

/// A service's place in the node's table; dropping it unregisters the name and revokes the
/// service's address (its mailbox).
struct Registration {
    name: String,
    mailbox: Mailbox,
    node: Weak<Runtime>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(node) = self.node.upgrade() {
            node.services.remove(&self.name, self.mailbox.id());
        }
    }
}

/// A service run by [`Node::serve`](crate::Node::serve); dropping it stops accepting and
/// unregisters the service (conversations already running go on).
#[must_use = "dropping a ServiceHandle stops the service at once"]
pub struct ServiceHandle {
    registration: Registration,
}

impl std::fmt::Debug for ServiceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHandle")
            .field("name", &self.registration.name)
            .finish()
    }
}

impl ServiceHandle {
    /// The service's capability address.
    pub fn address(&self) -> &Address {
        self.registration.mailbox.address()
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.registration.name
    }
}

/// Registers `name` with its own mailbox (its address), its conversations going to `incoming`.
fn register_as(
    node: &Arc<Runtime>,
    name: &str,
    allow: Option<HashSet<NodeId>>,
    incoming: Incoming,
) -> Result<Registration, ServeError> {
    if !frame::valid_service_name(name) {
        return Err(ServeError::InvalidName(name.to_owned()));
    }
    if crate::streams::ping::is_reserved(name) {
        return Err(ServeError::Reserved(name.to_owned()));
    }
    let mut registry = node.services.write();
    if registry.by_name.contains_key(name) {
        return Err(ServeError::AlreadyRegistered(name.to_owned()));
    }
    let mailbox = mailbox::new_mailbox(node, MailboxId::random(), None);
    // A service's mailbox takes conversations, not messages: without a receiver, a message
    // for it is refused with NO_SUCH_MAILBOX (docs/PROTOCOL.md §10.1) instead of piling up
    // unread.
    drop(mailbox.messages());
    let entry = Arc::new(ServiceEntry {
        name: name.to_owned(),
        mailbox: mailbox.id(),
        allow,
        incoming,
        address: mailbox.address().clone(),
    });
    registry.by_name.insert(name.to_owned(), entry.clone());
    registry.by_mailbox.insert(mailbox.id(), entry);
    Ok(Registration {
        name: name.to_owned(),
        mailbox,
        node: Arc::downgrade(node),
    })
}

pub(crate) fn register(
    node: &Arc<Runtime>,
    name: &str,
    options: ServiceOptions,
) -> Result<Service, ServeError> {
    let (backlog, incoming) = mpsc::channel(options.backlog.max(1));
    let registration = register_as(node, name, options.allow, Incoming::Backlog(backlog))?;
    Ok(Service {
        registration,
        incoming,
        shutdown: node.cancel.clone(),
    })
}

/// Registers `name`, each of its conversations served by `handler` on the conversation's own
/// stream task: a handler holding one open (HBI's "work" stage) blocks no other, and no queue
/// or task stands between the opener's request and the handler. `options.backlog` does not
/// apply (nothing waits).
pub(crate) fn serve<F, Fut>(
    node: &Arc<Runtime>,
    name: &str,
    options: ServiceOptions,
    handler: F,
) -> Result<ServiceHandle, ServeError>
where
    F: Fn(Conversation) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let run: Arc<Handler> = Arc::new(move |conversation| Box::pin(handler(conversation)));
    let span = tracing::debug_span!("service", name);
    let registration = register_as(node, name, options.allow, Incoming::Handler { run, span })?;
    Ok(ServiceHandle { registration })
}

/// Whom to open a conversation with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The service (or mailbox) of a capability address.
    Address(Address),
    /// A service by name on a node, dialed at `hints` (or a known address of the node).
    Service {
        /// The node.
        node: NodeId,
        /// The service's name.
        name: String,
        /// Where to dial the node, if not connected or known already.
        hints: Vec<SocketAddr>,
    },
}

impl Target {
    /// A service by name on `node`.
    pub fn service(node: NodeId, name: impl Into<String>) -> Self {
        Self::Service {
            node,
            name: name.into(),
            hints: Vec::new(),
        }
    }

    /// The same target with dial hints for its node.
    pub fn with_hints(self, hints: Vec<SocketAddr>) -> Self {
        match self {
            Self::Address(address) => Self::Address(address.with_hints(hints)),
            Self::Service { node, name, .. } => Self::Service { node, name, hints },
        }
    }

    /// The node the target is on.
    pub fn node(&self) -> NodeId {
        match self {
            Self::Address(address) => address.node(),
            Self::Service { node, .. } => *node,
        }
    }

    fn hints(&self) -> &[SocketAddr] {
        match self {
            Self::Address(address) => address.hints(),
            Self::Service { hints, .. } => hints,
        }
    }
}

impl From<Address> for Target {
    fn from(address: Address) -> Self {
        Self::Address(address)
    }
}

impl From<&Address> for Target {
    fn from(address: &Address) -> Self {
        Self::Address(address.clone())
    }
}

fn open_error_from_dial(error: DialError) -> OpenError {
    match error {
        DialError::NodeClosed => OpenError::NodeClosed,
        other => OpenError::Unreachable(other),
    }
}

/// The opener's error of what [`proto::Opener`] made of the answer, with what `target` adds.
fn open_error(error: proto::OpenError, target: &Target) -> OpenError {
    match error {
        proto::OpenError::NoSuchService { reason } => OpenError::NoSuchService(match target {
            Target::Service { name, .. } => name.clone(),
            Target::Address(_) => reason,
        }),
        proto::OpenError::NotAllowed => OpenError::NotAllowed,
        proto::OpenError::Busy => OpenError::Busy,
        proto::OpenError::ShuttingDown => OpenError::PeerShuttingDown,
        proto::OpenError::Refused { refusal, reason } => match refusal {
            Refusal::NoSuchMailbox => OpenError::NoSuchMailbox,
            Refusal::Forged => OpenError::Forged,
            Refusal::Expired => OpenError::Expired(match target {
                Target::Address(address) => address.effective_expiry().unwrap_or(0),
                Target::Service { .. } => 0,
            }),
            Refusal::WrongNode => OpenError::WrongNode,
            Refusal::Revoked => OpenError::Revoked,
            Refusal::Caveat => OpenError::Caveat(reason),
            Refusal::Exhausted => OpenError::Exhausted,
        },
        proto::OpenError::NotAdmitted => not_admitted(),
        proto::OpenError::Failed(code) => OpenError::Failed(code.0),
        // Another refusal code, a malformed or unexpected answer, the stream's end.
        other => OpenError::Protocol(other.to_string()),
    }
}

/// The error of a failed write of the opening: a stream stopped with NOT_ADMITTED is a refusal
/// (docs/PROTOCOL.md §2.6), anything else a failure to reach the service.
fn opening_write_error(
    opener: &proto::Opener,
    target: &Target,
    error: quinn::WriteError,
) -> OpenError {
    if let quinn::WriteError::Stopped(code) = &error {
        if let Some(refused) = opener.on_stopped(ErrorCode(code.into_inner())) {
            return open_error(refused, target);
        }
    }
    OpenError::Unreachable(DialError::Stream(StreamError::Write(error)))
}

fn not_admitted() -> OpenError {
    OpenError::Unreachable(DialError::Refused("node not admitted".into()))
}

/// Opens a stream of kind `Conversation`, sends `first` (and, for a conversation, this node's
/// limit, and `early`: a call's request pipelined after it, and FIN), and reads the
/// acceptor's answer. `open_timeout` covers waiting for stream credit,
/// writing and the answer. Until the answer is read the stream is held by a [`Conversation`]
/// of the opener, so giving up for any reason (an error, the timeout, the caller dropping the
/// future) resets it with CANCELLED (docs/PROTOCOL.md §10.3, §10.8).
async fn start(
    node: &Arc<Runtime>,
    target: &Target,
    first: &Frame<'_>,
    early: Option<&[u8]>,
) -> Result<(Conversation, Answer), OpenError> {
    let connection = connect(node, target).await?;
    let opening = answered(node, &connection, target, first, early);
    tokio::time::timeout(node.config.open_timeout, opening)
        .await
        .unwrap_or(Err(OpenError::Timeout))
}

/// The connection to `target`'s node, dialed if there is none.
async fn connect(node: &Arc<Runtime>, target: &Target) -> Result<quinn::Connection, OpenError> {
    if node.is_closing() {
        return Err(OpenError::NodeClosed);
    }
    dial::connect(&node.net, target.node(), target.hints())
        .await
        .map_err(open_error_from_dial)
}

/// [`start`] on `connection`, without its timeout.
async fn answered(
    node: &Runtime,
    connection: &quinn::Connection,
    target: &Target,
    first: &Frame<'_>,
    early: Option<&[u8]>,
) -> Result<(Conversation, Answer), OpenError> {
    let then = early.map_or(0, |object| 1 + frame::MAX_VARINT_LEN + object.len());
    let mut head = proto::opening(first, node.config.max_message_size as u64, then);
    if let Some(object) = early {
        frame::put_frame(&mut head, &Frame::Object(object));
    }
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|e| OpenError::Unreachable(DialError::Stream(StreamError::Open(e))))?;
    let mut conversation = Conversation::new(
        target.node(),
        send,
        recv,
        BytesMut::new(),
        node.config.max_message_size,
        true,
    )
    .with_frame_timeout(node.config.frame_timeout);
    let answer = read_answer(&mut conversation, &head, early.is_some(), target).await?;
    Ok((conversation, answer))
}

/// Writes the opening (and, if `finish`, FIN) and reads the acceptor's answer; what follows it
/// goes to the conversation.
async fn read_answer(
    conversation: &mut Conversation,
    head: &[u8],
    finish: bool,
    target: &Target,
) -> Result<Answer, OpenError> {
    let mut opener = proto::Opener::new();
    conversation
        .send
        .write_all(head)
        .await
        .map_err(|error| opening_write_error(&opener, target, error))?;
    if finish {
        // Fails only if the stream was stopped meanwhile, which the answer then tells.
        let _ = conversation.finish();
    }
    // A peer that does not admit this node may only stop the stream (STOP_SENDING 11).
    let stopped = conversation.send.stopped();
    tokio::pin!(stopped);
    let mut watch_stop = true;
    loop {
        if let Some(answer) = opener.answer().map_err(|e| open_error(e, target))? {
            conversation.received(&opener.into_rest());
            return Ok(answer);
        }
        let read = tokio::select! {
            read = conversation.recv.read_chunk(frame::MAX_OPENING_FRAME_LEN, true) => read,
            stop = &mut stopped, if watch_stop => {
                if let Ok(Some(code)) = stop {
                    if let Some(error) = opener.on_stopped(ErrorCode(code.into_inner())) {
                        return Err(open_error(error, target));
                    }
                }
                // Any other stop (or the end of the stream) decides nothing: the answer, a
                // reset or the connection's end follows on the read side.
                watch_stop = false;
                continue;
            }
        };
        match read {
            Ok(Some(chunk)) => opener.receive(&chunk.bytes),
            Ok(None) => return Err(open_error(opener.on_fin(), target)),
            // NOT_ADMITTED; or the service accepted, then its handler gave up before we read
            // the accept.
            Err(quinn::ReadError::Reset(code)) => {
                return Err(open_error(
                    opener.on_reset(ErrorCode(code.into_inner())),
                    target,
                ))
            }
            Err(error) => {
                return Err(OpenError::Unreachable(DialError::Stream(
                    StreamError::Read(error),
                )))
            }
        }
    }
}

pub(crate) async fn open(node: &Arc<Runtime>, target: &Target) -> Result<Conversation, OpenError> {
    let (conversation, answer) = start(node, target, &converse(target)?, None).await?;
    accepted(conversation, answer)
}

/// Whether an object of `len` bytes may go to `target` before its answer: every acceptor
/// takes that much from any opener, except the built-in services, which announce their own
/// smaller limits (docs/PROTOCOL.md §10.3).
fn may_go_early(target: &Target, len: usize) -> bool {
    let builtin =
        matches!(target, Target::Service { name, .. } if crate::streams::ping::is_reserved(name));
    len <= frame::EARLY_MESSAGE_MAX && !builtin
}

/// The first frame of a conversation with `target`.
fn converse(target: &Target) -> Result<Frame<'_>, OpenError> {
    match target {
        Target::Address(address) => Ok(Frame::Converse(ConverseTarget::Address(Box::new(
            address.without_hints(),
        )))),
        Target::Service { name, .. } => {
            if !frame::valid_service_name(name) {
                return Err(OpenError::InvalidName(name.clone()));
            }
            Ok(Frame::Converse(ConverseTarget::Service(name)))
        }
    }
}

/// The opener's side of a conversation the acceptor answered.
fn accepted(conversation: Conversation, answer: Answer) -> Result<Conversation, OpenError> {
    match answer {
        Answer::Accepted { peer_limit } => Ok(conversation.with_peer_limit(peer_limit)),
        _ => Err(OpenError::Protocol("expected accept".into())),
    }
}

pub(crate) async fn lookup(
    node: &Arc<Runtime>,
    peer: NodeId,
    name: &str,
    hints: &[SocketAddr],
) -> Result<Address, OpenError> {
    if !frame::valid_service_name(name) {
        return Err(OpenError::InvalidName(name.to_owned()));
    }
    let target = Target::Service {
        node: peer,
        name: name.to_owned(),
        hints: hints.to_vec(),
    };
    let (conversation, answer) = start(node, &target, &Frame::Lookup(name), None).await?;
    match answer {
        Answer::Found(address) if address.node() == peer => {
            conversation.close_quietly();
            let mut hints = hints.to_vec();
            if hints.is_empty() {
                if let Some(connection) = node.net.peers.connection(&peer) {
                    hints.push(connection.remote_address());
                }
            }
            Ok(address.with_hints(hints))
        }
        _ => Err(OpenError::Protocol("expected the service's address".into())),
    }
}

/// What a conversation stream opens with: the request, for a conversation the opener's limit
/// (the `Accept` following its `Converse`; `None` if another frame follows), and what the
/// opener sent after them.
async fn read_opening(
    recv: &mut quinn::RecvStream,
) -> Result<(Request, Option<u64>, BytesMut), proto::OpeningError> {
    let mut acceptor = proto::Acceptor::new();
    loop {
        match acceptor.poll()? {
            Opening::Ready {
                request,
                opener_limit,
            } => return Ok((request, opener_limit, acceptor.into_rest())),
            Opening::NeedBytes { max } => match recv.read_chunk(max, true).await {
                Ok(Some(chunk)) => acceptor.receive(&chunk.bytes),
                // The end of the stream, a reset or a lost connection.
                _ => acceptor.receive_fin(),
            },
        }
    }
}

/// Serves one conversation or lookup stream opened by `peer`. The kind byte was read.
/// `in_use` counts the stream against the peer's stream credit; an accepted conversation keeps
/// it until it is dropped.
#[allow(clippy::too_many_arguments)] // one per thing a stream's server needs
pub(crate) async fn serve_stream(
    node: Arc<Runtime>,
    peer: NodeId,
    origin: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    deadline: tokio::time::Instant,
    guard: Arc<crate::net::limits::PeerGuard>,
    in_use: crate::net::limits::OpenStream,
) {
    let opening = tokio::time::timeout_at(deadline, read_opening(&mut recv)).await;
    let (request, opener_limit, buf) = match opening {
        Ok(Ok(opening)) => opening,
        Ok(Err(error)) => {
            let reason = error.to_string();
            if error.is_violation() {
                guard.violation(&node.net, &reason);
            }
            return refuse(&mut send, ErrorCode::PROTOCOL, &reason).await;
        }
        Err(_) => {
            let reason = "no opening frame in time";
            guard.violation(&node.net, reason);
            return refuse(&mut send, ErrorCode::TIMEOUT, reason).await;
        }
    };
    // The built-in services take their request without the opener's limit
    // (docs/PROTOCOL.md §10.11).
    if let Request::ByName(name) = &request {
        match name.as_str() {
            // Boxed, as the refusals: the built-in services are rarely asked, and inline their
            // answers would make every conversation's task larger.
            crate::streams::ping::PING_SERVICE => {
                return Box::pin(crate::streams::ping::answer(
                    peer, send, recv, buf, deadline,
                ))
                .await
            }
            ferry_proto::observe::OBSERVE_SERVICE => {
                let remote = node
                    .net
                    .relay_socket
                    .route_of(origin.remote_address())
                    .is_none()
                    .then(|| origin.remote_address());
                return Box::pin(crate::net::observation::answer(send, remote)).await;
            }
            ferry_proto::punch::PUNCH_SERVICE => {
                return Box::pin(crate::net::hole_punch::answer(
                    node.net.clone(),
                    peer,
                    send,
                    recv,
                    buf,
                    origin,
                ))
                .await
            }
            _ => {}
        }
    }
    if node.is_closing() {
        return refuse(&mut send, ErrorCode::SHUTTING_DOWN, "node shutting down").await;
    }
    let opener_limit = match proto::opener_limit(&request, opener_limit) {
        Ok(limit) => limit,
        // (Also when the stream ended before the ACCEPT: no violation counted.)
        Err((code, reason)) => return refuse(&mut send, code, reason).await,
    };
    let entry = match resolve(&node, peer, &request) {
        Ok(entry) => entry,
        Err((code, reason)) => return refuse(&mut send, code, &reason).await,
    };
    if let Request::Lookup(_) = request {
        if send.write_all(&proto::found(&entry.address)).await.is_ok() {
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
        }
        return;
    }
    let backlog = match &entry.incoming {
        Incoming::Backlog(backlog) => backlog,
        Incoming::Handler { run, span } => {
            let (run, span) = (run.clone(), span.clone());
            drop(entry);
            let accepted =
                accepted_conversation(&node, peer, opener_limit, in_use, send, recv, buf);
            if let Some(conversation) = accepted.await {
                // Handlers get the shutdown grace to finish; then they are dropped
                // (docs/PROTOCOL.md §6.9). The handler's future is boxed once as it is made:
                // wrapping it before boxing moved it once more per wrapper.
                let work = run(conversation).instrument(span);
                tokio::select! {
                    biased;
                    _ = work => {}
                    _ = node.halt.cancelled() => {}
                }
            }
            return;
        }
    };
    let permit = match backlog.try_reserve() {
        Ok(permit) => permit,
        Err(mpsc::error::TrySendError::Full(())) => {
            debug!(peer = %peer.short(), "service busy; refusing conversation");
            return refuse(&mut send, ErrorCode::LIMIT, "service busy").await;
        }
        // The service's application stopped taking conversations: it is going away.
        Err(mpsc::error::TrySendError::Closed(())) if node.is_closing() => {
            return refuse(&mut send, ErrorCode::SHUTTING_DOWN, "node shutting down").await;
        }
        Err(mpsc::error::TrySendError::Closed(())) => {
            return refuse(&mut send, ErrorCode::NO_SUCH_SERVICE, "service stopped").await;
        }
    };
    let accepted = accepted_conversation(&node, peer, opener_limit, in_use, send, recv, buf);
    if let Some(conversation) = accepted.await {
        permit.send(conversation);
    }
}

/// Writes ACCEPT on a conversation stream `peer` opened and makes the acceptor's side of the
/// conversation, `buf` what the opener sent after its opening; `None` if the answer could not
/// be written.
async fn accepted_conversation(
    node: &Runtime,
    peer: NodeId,
    opener_limit: u64,
    in_use: crate::net::limits::OpenStream,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: BytesMut,
) -> Option<Conversation> {
    let limit = node.config.max_message_size;
    send.write_all(&proto::accept(limit as u64)).await.ok()?;
    Some(
        Conversation::new(peer, send, recv, buf, limit, false)
            .with_peer_limit(opener_limit)
            .with_frame_timeout(node.config.frame_timeout)
            .with_credit(in_use),
    )
}

fn resolve(
    node: &Runtime,
    peer: NodeId,
    request: &Request,
) -> Result<Arc<ServiceEntry>, (ErrorCode, String)> {
    let by_name = |name: &str| {
        let entry = node
            .services
            .read()
            .by_name
            .get(name)
            .cloned()
            .ok_or_else(|| (ErrorCode::NO_SUCH_SERVICE, format!("no service {name:?}")))?;
        match &entry.allow {
            Some(allowed) if !allowed.contains(&peer) => Err((
                ErrorCode::NOT_ALLOWED,
                format!("service {name:?} does not allow this node"),
            )),
            _ => Ok(entry),
        }
    };
    match request {
        Request::ByName(name) | Request::Lookup(name) => by_name(name),
        Request::ByAddress(address) => {
            // The service caveat needs the name of the mailbox's service; whether there is
            // one at all is told only after the proof (below).
            let name = node
                .services
                .read()
                .by_mailbox
                .get(&address.mailbox())
                .map(|entry| entry.name.clone());
            let authorized = node
                .authorize(address, &peer, Usage::Conversation(name.as_deref()))
                .map_err(|error| (error.wire_code(), error.to_string()))?;
            // Under counting caveats, each conversation counts as one message.
            match authorized
                .mailbox
                .caps
                .reserve(&authorized.limits, || node.clock.unix_now())
            {
                Ok(()) => {}
                Err(Budget::Exhausted) => {
                    return Err((ErrorCode::EXHAUSTED, "address budget used up".into()))
                }
                Err(Budget::Wait(_)) => {
                    return Err((ErrorCode::LIMIT, "address rate reached".into()))
                }
                Err(Budget::TooManyCounters) => {
                    return Err((ErrorCode::LIMIT, "too many counters".into()))
                }
            }
            node.services
                .read()
                .by_mailbox
                .get(&address.mailbox())
                .cloned()
                .ok_or_else(|| {
                    (
                        ErrorCode::NO_SUCH_SERVICE,
                        "the mailbox accepts no conversations".into(),
                    )
                })
        }
    }
}

/// A request/response exchange: one conversation carrying one request object and one
/// response object. Await it for the response; set a deadline with [`Call::timeout`].
/// Dropping it (or the timeout passing) cancels the conversation, so the callee can stop.
#[must_use = "a call does nothing unless awaited"]
pub struct Call<Resp> {
    node: Arc<Runtime>,
    target: Target,
    request: Result<Vec<u8>, CallError>,
    timeout: Duration,
    response: PhantomData<fn() -> Resp>,
}

impl<Resp> std::fmt::Debug for Call<Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("target", &self.target)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<Resp> Call<Resp> {
    pub(crate) fn new<Req: Serialize + ?Sized>(
        node: Arc<Runtime>,
        target: Target,
        request: &Req,
    ) -> Self {
        let request = crate::payload::encode_transient(request).map_err(CallError::Encode);
        let timeout = node.config.call_timeout;
        Self {
            node,
            target,
            request,
            timeout,
            response: PhantomData,
        }
    }

    /// Fails with [`CallError::Timeout`] if no response arrives within `timeout` (default:
    /// the node's `call_timeout`).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl<Resp: DeserializeOwned + Send + 'static> IntoFuture for Call<Resp> {
    type Output = Result<Resp, CallError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let request = self.request?;
            let (node, target) = (&self.node, &self.target);
            // One timer for the whole call, the opening's `open_timeout` included: each
            // timer a call starts costs it a registration and a removal.
            let deadline = Instant::now() + self.timeout;
            let timer = tokio::time::sleep_until(deadline);
            tokio::pin!(timer);
            let first = converse(target)?;
            let connecting = connect(node, target);
            tokio::pin!(connecting);
            let connection = within(timer.as_mut(), connecting)
                .await
                .ok_or(CallError::Timeout)??;
            // A small request rides with the opening: the call takes one round trip.
            let early = may_go_early(target, request.len());
            let open_deadline = Instant::now() + node.config.open_timeout;
            timer.as_mut().reset(open_deadline.min(deadline));
            let opening = answered(
                node,
                &connection,
                target,
                &first,
                early.then_some(&request[..]),
            );
            tokio::pin!(opening);
            let Some(opened) = within(timer.as_mut(), opening).await else {
                return Err(if open_deadline < deadline {
                    OpenError::Timeout.into()
                } else {
                    CallError::Timeout
                });
            };
            let (conversation, answer) = opened?;
            let conversation = accepted(conversation, answer)?;
            if open_deadline < deadline {
                timer.as_mut().reset(deadline);
            }
            let exchange = exchange::<Resp>(conversation, &request, early);
            tokio::pin!(exchange);
            within(timer, exchange)
                .await
                .unwrap_or(Err(CallError::Timeout))
        })
    }
}

/// `work`, unless `timer` ends first. Both pinned where they are: moving a future into
/// another costs a copy of it.
async fn within<F: Future>(
    mut timer: Pin<&mut tokio::time::Sleep>,
    mut work: Pin<&mut F>,
) -> Option<F::Output> {
    std::future::poll_fn(|context| {
        if let Poll::Ready(output) = work.as_mut().poll(context) {
            return Poll::Ready(Some(output));
        }
        timer.as_mut().poll(context).map(|()| None)
    })
    .await
}

/// A call's request (unless it went `early`, with the opening) and its response.
async fn exchange<Resp: DeserializeOwned>(
    mut conversation: Conversation,
    request: &[u8],
    early: bool,
) -> Result<Resp, CallError> {
    // (An early request went with its FIN.)
    let sent = if early {
        Ok(())
    } else {
        match conversation.send_encoded(request).await {
            Ok(()) => conversation.finish(),
            // Beyond the callee's announced limit: nothing was sent, and dropping the
            // conversation cancels it.
            Err(error @ ConversationError::TooLarge { .. }) => return Err(error.into()),
            Err(error) => Err(error),
        }
    };
    // A callee may answer (or fail) without reading the whole request, which makes the write
    // fail: its answer says more than the write error.
    match (conversation.recv_obj::<Resp>().await, sent) {
        (Ok(response), _) => Ok(response),
        (Err(error @ ConversationError::Failed { .. }), _) | (Err(error), Ok(())) => {
            Err(error.into())
        }
        (Err(_), Err(send_error)) => Err(send_error.into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use std::time::Duration;

    use super::*;
    use crate::{Node, NodeConfig, SecretKey};

    // Conversations with a peer played by hand (abandoned opens, stopped streams, oversized
    // frames) are in sdk/tests/fake_peer.rs.

    async fn node_with(config: NodeConfig) -> Node {
        Node::bind(SecretKey::generate(), config).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_departed_service_is_not_reported_busy() {
        let server = node_with(NodeConfig::default()).await;
        let client = node_with(NodeConfig::default()).await;
        let mut service = server.service("gone", ServiceOptions::default()).unwrap();
        // The service takes no more conversations but is still registered (the moment
        // between its application leaving and the registry forgetting it).
        service.incoming.close();
        let open = client
            .open(Target::service(server.id(), "gone").with_hints(vec![server.local_addr()]))
            .await;
        assert_eq!(open.unwrap_err(), OpenError::NoSuchService("gone".into()));
        client.shutdown(Duration::from_millis(100)).await;
        server.shutdown(Duration::from_millis(100)).await;
    }
}

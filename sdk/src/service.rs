//! Named services (MessagePasser's connections by protocol name, fabric's allowed names):
//! conversations and calls reach a service by (node, name) or by its capability address.
//!
//! Who may use a service: any peer the node admits, by name or by the service's address;
//! [`ServiceOptions::allow`] restricts name-based access (conversations and lookups) to a set
//! of nodes. The service's address is a capability of its own: whoever holds it may open
//! conversations with the service, like sending to a mailbox.

use std::collections::{HashMap, HashSet};
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{debug, Instrument};

use crate::address::{Address, MailboxId};
use crate::connection;
use crate::conversation::Conversation;
use crate::error::{CallError, ConversationError, DialError, OpenError, SendError, ServeError};
use crate::frame::{self, ConverseTarget, ErrorCode, Frame, StreamKind};
use crate::identity::NodeId;
use crate::mailbox::Mailbox;
use crate::node::NodeInner;

/// How a service is offered.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Nodes that may reach the service by name (conversations, calls, lookups). Default
    /// `None`: every node this node admits.
    pub allow: Option<HashSet<NodeId>>,
    /// Incoming conversations waiting to be accepted before new ones are refused as busy.
    /// Default 1024.
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

struct ServiceEntry {
    mailbox: MailboxId,
    allow: Option<HashSet<NodeId>>,
    incoming: mpsc::Sender<Conversation>,
    address: Address,
}

/// The node's registered services, by name and by mailbox id.
#[derive(Default)]
pub(crate) struct Services {
    inner: RwLock<Registry>,
}

#[derive(Default)]
struct Registry {
    by_name: HashMap<String, Arc<ServiceEntry>>,
    by_mailbox: HashMap<MailboxId, Arc<ServiceEntry>>,
}

impl Services {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn remove(&self, name: &str, mailbox: MailboxId) {
        let mut registry = self.write();
        if registry
            .by_name
            .get(name)
            .is_some_and(|entry| entry.mailbox == mailbox)
        {
            registry.by_name.remove(name);
        }
        registry.by_mailbox.remove(&mailbox);
    }
}

/// A registered service: accept its conversations with [`Service::accept`]. Dropping it
/// unregisters the name and revokes its address.
#[must_use = "dropping a Service unregisters it at once"]
pub struct Service {
    name: String,
    mailbox: Mailbox,
    incoming: mpsc::Receiver<Conversation>,
    node: Weak<NodeInner>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("name", &self.name).finish()
    }
}

impl Service {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The service's capability address: opening a conversation to it reaches the service.
    pub fn address(&self) -> &Address {
        self.mailbox.address()
    }

    /// The next incoming conversation; `None` once the node shuts down.
    pub async fn accept(&mut self) -> Option<Conversation> {
        self.incoming.recv().await
    }
}

impl Drop for Service {
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
    address: Address,
    name: String,
    stop: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for ServiceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHandle")
            .field("name", &self.name)
            .finish()
    }
}

impl ServiceHandle {
    /// The service's capability address.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ServiceHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub(crate) fn register(
    node: &Arc<NodeInner>,
    name: &str,
    options: ServiceOptions,
) -> Result<Service, ServeError> {
    if !frame::valid_service_name(name) {
        return Err(ServeError::InvalidName(name.to_owned()));
    }
    let mut registry = node.services.write();
    if registry.by_name.contains_key(name) {
        return Err(ServeError::AlreadyRegistered(name.to_owned()));
    }
    let mailbox = crate::node::new_mailbox(node, MailboxId::random(), None);
    let (incoming, receiver) = mpsc::channel(options.backlog.max(1));
    let entry = Arc::new(ServiceEntry {
        mailbox: mailbox.id(),
        allow: options.allow,
        incoming,
        address: mailbox.address().clone(),
    });
    registry.by_name.insert(name.to_owned(), entry.clone());
    registry.by_mailbox.insert(mailbox.id(), entry);
    Ok(Service {
        name: name.to_owned(),
        mailbox,
        incoming: receiver,
        node: Arc::downgrade(node),
    })
}

pub(crate) fn serve<F, Fut>(
    node: &Arc<NodeInner>,
    name: &str,
    options: ServiceOptions,
    handler: F,
) -> Result<ServiceHandle, ServeError>
where
    F: Fn(Conversation) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut service = register(node, name, options)?;
    let stop = node.cancel.child_token();
    let handle = ServiceHandle {
        address: service.address().clone(),
        name: name.to_owned(),
        stop: stop.clone(),
    };
    let tasks = node.tasks.clone();
    let span = tracing::debug_span!("service", name);
    node.tasks.spawn(
        async move {
            loop {
                let conversation = tokio::select! {
                    _ = stop.cancelled() => break,
                    conversation = service.accept() => conversation,
                };
                let Some(conversation) = conversation else {
                    break;
                };
                // Each conversation on its own task: a handler holding one open (HBI's "work"
                // stage) blocks no other.
                tasks.spawn(handler(conversation).in_current_span());
            }
            drop(service);
        }
        .instrument(span),
    );
    Ok(handle)
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

    fn node(&self) -> NodeId {
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

fn close_to_open_error(code: ErrorCode, reason: &str, target: &Target) -> OpenError {
    match code {
        ErrorCode::NO_SUCH_SERVICE => OpenError::NoSuchService(match target {
            Target::Service { name, .. } => name.clone(),
            Target::Address(_) => reason.to_owned(),
        }),
        ErrorCode::NOT_ALLOWED => OpenError::NotAllowed,
        ErrorCode::NO_SUCH_MAILBOX => OpenError::NoSuchMailbox,
        ErrorCode::FORGED => OpenError::Forged,
        ErrorCode::EXPIRED => OpenError::Expired(match target {
            Target::Address(address) => address.expires().unwrap_or(0),
            Target::Service { .. } => 0,
        }),
        ErrorCode::WRONG_NODE => OpenError::WrongNode,
        ErrorCode::LIMIT => OpenError::Busy,
        _ => OpenError::Protocol(format!("refused ({}): {reason}", code.0)),
    }
}

/// Opens a stream of kind `Conversation`, sends `first`, and reads the acceptor's answer.
async fn start(
    node: &Arc<NodeInner>,
    target: &Target,
    first: &Frame<'_>,
) -> Result<
    (
        quinn::SendStream,
        quinn::RecvStream,
        BytesMut,
        Frame<'static>,
    ),
    OpenError,
> {
    if node.is_closing() {
        return Err(OpenError::NodeClosed);
    }
    let connection = connection::connect(node, target.node(), target.hints())
        .await
        .map_err(open_error_from_dial)?;
    let (mut send, mut recv) = connection
        .open_bi()
        .await
        .map_err(|e| OpenError::Unreachable(DialError::Failed(e.to_string())))?;
    let mut head = vec![StreamKind::Conversation as u8];
    frame::put_frame(&mut head, first);
    let answer = async {
        send.write_all(&head)
            .await
            .map_err(|e| OpenError::Unreachable(DialError::Failed(e.to_string())))?;
        let mut buf = BytesMut::new();
        loop {
            let decoded = frame::decode_frame(&buf, frame::MAX_CONTROL_FRAME_LEN)
                .map_err(|e| OpenError::Protocol(e.to_string()))?;
            if let Some((frame, used)) = decoded {
                let owned = match frame {
                    Frame::Accept { max_message } => Frame::Accept { max_message },
                    Frame::Found(address) => Frame::Found(address),
                    Frame::Close { code, reason } => {
                        return Err(close_to_open_error(code, reason, target))
                    }
                    _ => return Err(OpenError::Protocol("unexpected answer".into())),
                };
                let _ = buf.split_to(used);
                return Ok((buf, owned));
            }
            match recv.read_chunk(frame::MAX_CONTROL_FRAME_LEN, true).await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                Ok(None) => return Err(OpenError::Protocol("stream ended before answer".into())),
                Err(quinn::ReadError::Reset(code))
                    if code.into_inner() == ErrorCode::NOT_ADMITTED.0 =>
                {
                    return Err(OpenError::Unreachable(DialError::Refused(
                        "node not admitted".into(),
                    )))
                }
                // The service accepted, then its handler gave up before we read the accept.
                Err(quinn::ReadError::Reset(code)) => {
                    return Err(OpenError::Failed(code.into_inner()))
                }
                Err(error) => {
                    return Err(OpenError::Unreachable(DialError::Failed(error.to_string())))
                }
            }
        }
    };
    let result = tokio::time::timeout(node.config.open_timeout, answer)
        .await
        .unwrap_or(Err(OpenError::Timeout));
    match result {
        Ok((buf, frame)) => Ok((send, recv, buf, frame)),
        Err(error) => {
            let _ = send.reset(quinn::VarInt::from_u32(ErrorCode::CANCELLED.0 as u32));
            Err(error)
        }
    }
}

pub(crate) async fn open(
    node: &Arc<NodeInner>,
    target: &Target,
) -> Result<Conversation, OpenError> {
    let first = match target {
        Target::Address(address) => {
            Frame::Converse(ConverseTarget::Address(Box::new(address.without_hints())))
        }
        Target::Service { name, .. } => {
            if !frame::valid_service_name(name) {
                return Err(OpenError::InvalidName(name.clone()));
            }
            Frame::Converse(ConverseTarget::Service(name))
        }
    };
    let (send, recv, buf, answer) = start(node, target, &first).await?;
    match answer {
        Frame::Accept { .. } => Ok(Conversation::new(
            target.node(),
            send,
            recv,
            buf,
            node.config.max_message_size,
            true,
        )),
        _ => Err(OpenError::Protocol("expected accept".into())),
    }
}

pub(crate) async fn lookup(
    node: &Arc<NodeInner>,
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
    let (_send, _recv, _buf, answer) = start(node, &target, &Frame::Lookup(name)).await?;
    match answer {
        Frame::Found(address) if address.node() == peer => {
            let mut hints = hints.to_vec();
            if hints.is_empty() {
                if let Some(connection) = node.peers.connection(&peer) {
                    hints.push(connection.remote_address());
                }
            }
            Ok(address.with_hints(hints))
        }
        _ => Err(OpenError::Protocol("expected the service's address".into())),
    }
}

/// Serves one conversation or lookup stream opened by `peer`. The kind byte was read.
pub(crate) async fn serve_stream(
    node: Arc<NodeInner>,
    peer: NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    deadline: tokio::time::Instant,
) {
    let mut buf = BytesMut::new();
    let first = tokio::time::timeout_at(deadline, async {
        loop {
            match frame::decode_frame(&buf, frame::MAX_CONTROL_FRAME_LEN) {
                Ok(Some((frame, used))) => {
                    let request = match frame {
                        Frame::Converse(ConverseTarget::Address(address)) => {
                            Some(Request::ByAddress(*address))
                        }
                        Frame::Converse(ConverseTarget::Service(name)) => {
                            Some(Request::ByName(name.to_owned()))
                        }
                        Frame::Lookup(name) => Some(Request::Lookup(name.to_owned())),
                        _ => None,
                    };
                    buf.advance(used);
                    return request;
                }
                Ok(None) => {}
                Err(_) => return None,
            }
            match recv.read_chunk(frame::MAX_CONTROL_FRAME_LEN, true).await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                _ => return None,
            }
        }
    })
    .await;
    let request = match first {
        Ok(Some(request)) => request,
        Ok(None) => {
            return refuse(
                &mut send,
                ErrorCode::PROTOCOL,
                "expected converse or lookup",
            )
            .await
        }
        Err(_) => return refuse(&mut send, ErrorCode::TIMEOUT, "no opening frame in time").await,
    };
    let entry = match resolve(&node, peer, &request) {
        Ok(entry) => entry,
        Err((code, reason)) => return refuse(&mut send, code, &reason).await,
    };
    if let Request::Lookup(_) = request {
        let mut out = Vec::new();
        frame::put_frame(&mut out, &Frame::Found(Box::new(entry.address.clone())));
        if send.write_all(&out).await.is_ok() {
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
        }
        return;
    }
    let Ok(permit) = entry.incoming.try_reserve() else {
        debug!(peer = %peer.short(), "service busy or gone; refusing conversation");
        return refuse(&mut send, ErrorCode::LIMIT, "service busy").await;
    };
    let mut out = Vec::new();
    frame::put_frame(
        &mut out,
        &Frame::Accept {
            max_message: node.config.max_message_size as u64,
        },
    );
    if send.write_all(&out).await.is_err() {
        return;
    }
    permit.send(Conversation::new(
        peer,
        send,
        recv,
        buf,
        node.config.max_message_size,
        false,
    ));
}

enum Request {
    ByAddress(Address),
    ByName(String),
    Lookup(String),
}

fn resolve(
    node: &NodeInner,
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
            node.mailboxes
                .authorize(node, address)
                .map_err(|error| (error_code(&error), error.to_string()))?;
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

fn error_code(error: &SendError) -> ErrorCode {
    match error {
        SendError::Forged => ErrorCode::FORGED,
        SendError::Expired(_) => ErrorCode::EXPIRED,
        SendError::WrongNode => ErrorCode::WRONG_NODE,
        _ => ErrorCode::NO_SUCH_MAILBOX,
    }
}

async fn refuse(send: &mut quinn::SendStream, code: ErrorCode, reason: &str) {
    let mut out = Vec::new();
    frame::put_frame(&mut out, &Frame::Close { code, reason });
    if send.write_all(&out).await.is_ok() {
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
    }
}

/// A request/response exchange: one conversation carrying one request object and one
/// response object. Await it for the response; set a deadline with [`Call::timeout`].
/// Dropping it (or the timeout passing) cancels the conversation, so the callee can stop.
#[must_use = "a call does nothing unless awaited"]
pub struct Call<Resp> {
    node: Arc<NodeInner>,
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
        node: Arc<NodeInner>,
        target: Target,
        request: &Req,
    ) -> Self {
        let request = postcard::to_allocvec(request).map_err(|e| CallError::Encode(e.to_string()));
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
            let exchange = async {
                let mut conversation = open(&self.node, &self.target).await?;
                let sent = match conversation.send_encoded(&request).await {
                    Ok(()) => conversation.finish(),
                    Err(error) => Err(error),
                };
                // A callee may answer (or fail) without reading the whole request, which makes
                // the write fail: its answer says more than the write error.
                match (conversation.recv_obj::<Resp>().await, sent) {
                    (Ok(response), _) => Ok(response),
                    (Err(error @ ConversationError::Failed { .. }), _) | (Err(error), Ok(())) => {
                        Err(error.into())
                    }
                    (Err(_), Err(send_error)) => Err(send_error.into()),
                }
            };
            tokio::time::timeout(self.timeout, exchange)
                .await
                .unwrap_or(Err(CallError::Timeout))
        })
    }
}

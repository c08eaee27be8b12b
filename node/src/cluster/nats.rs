//! The cluster on NATS (the official `async-nats` client).
//!
//! - **Publications** (to a channel, a user, a session) are published to the JetStream stream
//!   `FERRY_NAME` (subjects `ferry.NAME.pub.{ch,user,session}.HEX`, the name hex-encoded so
//!   that any channel name is one subject token), file storage, bounded by
//!   `cluster_history_max_bytes` and `cluster_history_max_age` (the oldest go first). A
//!   publication is confirmed to the sender once NATS kept it. Every node reads the stream
//!   through an ordered **pull** consumer from the position it started at, and delivers each
//!   publication to its own sessions; the stream's sequence number is the publication's
//!   offset, the stream's creation time its epoch.
//! - **Presence**: join and leave events are published on `ferry.NAME.presence.HEX` (core
//!   NATS, at most once: events, like Centrifugo's, are not kept); a presence query asks
//!   every node on `ferry.NAME.who.HEX` and gathers the answers for `cluster_presence_timeout`.
//!
//! **Nothing read through a bounded subscription buffer is lost silently.** async-nats hands
//! a core subscription's messages to a bounded channel (`subscription_capacity`, 65,536 by
//! default) and, when it is full, *drops* the message and only reports
//! `Event::SlowConsumer` to the event callback (nothing reaches the server, which sees no slow
//! consumer; a reader waiting for a count then waits forever). That is what an earlier bench
//! saw as a "stall". Here the history is read by a pull consumer (the server sends only what
//! was asked for, `cluster_read_batch` at a time, so nothing can overflow), and the slow
//! consumer events of the core subscriptions (presence) are logged and counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use data_encoding::HEXLOWER;
use ferry::Address;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{
    Cluster, ClusterConfig, ClusterError, ClusterFuture, History, Inbound, Member, Position,
    PresenceEvent, Published, Route,
};

/// The header carrying the sender's address.
const FROM: &str = "Ferry-From";
/// The header marking a push from the embedding application.
const PUSH: &str = "Ferry-Push";

/// Why a node could not join its cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The configuration is refused.
    #[error("invalid cluster configuration: {0}")]
    Config(#[from] super::config::ClusterConfigError),
    /// No NATS server answered, after every try.
    #[error(
        "cluster: no NATS server reachable at {servers} after {attempts} attempts \
         (cluster_start_retries, cluster_retry_interval): {last}"
    )]
    Unreachable {
        /// The servers tried.
        servers: String,
        /// How many times.
        attempts: u32,
        /// The last error.
        last: String,
    },
    /// NATS answered, but its JetStream (the history) could not be used: JetStream is not
    /// enabled (`nats-server -js`), or the stream could not be made.
    #[error("cluster: NATS JetStream (the history; start nats-server with -js): {0}")]
    JetStream(String),
}

/// One queued piece of work for the NATS client, kept in order.
enum Job {
    Publish {
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
        done: oneshot::Sender<Result<Position, ClusterError>>,
    },
    Presence {
        subject: String,
        payload: Bytes,
    },
}

/// A gateway's cluster on NATS.
pub struct NatsCluster {
    client: async_nats::Client,
    stream: stream::Stream,
    config: ClusterConfig,
    /// `ferry.NAME`.
    prefix: String,
    /// The history's epoch (the stream's creation time, nanoseconds, base 36).
    epoch: String,
    /// The stream's next sequence number when the node joined: the node reads from there.
    start_at: u64,
    jobs: mpsc::Sender<Job>,
    this: Weak<NatsCluster>,
    inbound: OnceLock<Weak<dyn Inbound>>,
    stop: CancellationToken,
    slow_consumers: Arc<AtomicU64>,
    /// Told when the client connected again after a disconnection.
    reconnected: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsCluster")
            .field("prefix", &self.prefix)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn hex(text: &str) -> String {
    HEXLOWER.encode(text.as_bytes())
}

fn unhex(text: &str) -> Option<String> {
    HEXLOWER
        .decode(text.as_bytes())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

fn base36(mut n: u128) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS.get((n % 36) as usize).copied().unwrap_or(b'0'));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

impl NatsCluster {
    /// Connects to the cluster's NATS (trying `start_retries` more times,
    /// `retry_interval` apart, when no server answers), and makes (or updates) the history
    /// stream. Later disconnections are repaired by the client by itself.
    pub async fn connect(config: ClusterConfig) -> Result<Arc<Self>, ConnectError> {
        config.validate()?;
        let servers: Vec<async_nats::ServerAddr> = config
            .servers
            .iter()
            .filter_map(|server| server.parse().ok())
            .collect();
        let slow_consumers = Arc::new(AtomicU64::new(0));
        let reconnected = Arc::new(tokio::sync::Notify::new());
        let attempts = config.start_retries.saturating_add(1);
        let mut last = String::new();
        let mut client = None;
        for attempt in 1..=attempts {
            let counter = slow_consumers.clone();
            let connected = reconnected.clone();
            let retry = config.retry_interval;
            let options = async_nats::ConnectOptions::new()
                .name(format!("ferry-gateway {}", config.name))
                .connection_timeout(retry.max(Duration::from_millis(500)))
                .subscription_capacity(config.subscription_capacity)
                .max_reconnects(None)
                .reconnect_delay_callback(move |attempts| {
                    (Duration::from_millis(50) * u32::try_from(attempts).unwrap_or(u32::MAX))
                        .min(retry)
                })
                .event_callback(move |event| {
                    let counter = counter.clone();
                    let connected = connected.clone();
                    async move {
                        match event {
                            async_nats::Event::SlowConsumer(sid) => {
                                counter.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(
                                    sid,
                                    "cluster: NATS subscription full, a presence message was \
                                     dropped (raise cluster_subscription_capacity)"
                                );
                            }
                            async_nats::Event::Disconnected => {
                                tracing::warn!("cluster: disconnected from NATS, reconnecting");
                            }
                            async_nats::Event::Connected => {
                                tracing::info!("cluster: connected to NATS");
                                // The history's reader starts again at once, rather than
                                // when its consumer's heartbeats are missed.
                                connected.notify_one();
                            }
                            other => tracing::debug!(event = %other, "cluster: NATS event"),
                        }
                    }
                });
            match options.connect(servers.clone()).await {
                Ok(connected) => {
                    client = Some(connected);
                    break;
                }
                Err(error) => {
                    last = error.to_string();
                    tracing::warn!(
                        attempt,
                        attempts,
                        error = %last,
                        "cluster: NATS not reachable at start"
                    );
                    if attempt < attempts {
                        tokio::time::sleep(config.retry_interval).await;
                    }
                }
            }
        }
        let Some(client) = client else {
            return Err(ConnectError::Unreachable {
                servers: config.servers.join(","),
                attempts,
                last,
            });
        };
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.publish_timeout);
        let prefix = format!("ferry.{}", config.name);
        let stream_config = stream::Config {
            name: format!("FERRY_{}", config.name),
            subjects: vec![format!("{prefix}.pub.>")],
            max_bytes: i64::try_from(config.history_max_bytes).unwrap_or(i64::MAX),
            max_age: config.history_max_age,
            storage: stream::StorageType::File,
            num_replicas: usize::from(config.history_replicas),
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            ..Default::default()
        };
        // A NATS cluster that just started may not have elected its JetStream leader yet:
        // tried as often as the connection.
        let mut tries = 0;
        let info = loop {
            tries += 1;
            match js.create_or_update_stream(stream_config.clone()).await {
                Ok(info) => break info,
                Err(error) if tries < attempts => {
                    tracing::warn!(%error, "cluster: making the history stream; retrying");
                    tokio::time::sleep(config.retry_interval).await;
                }
                Err(error) => return Err(ConnectError::JetStream(error.to_string())),
            }
        };
        let stream = js
            .get_stream(&stream_config.name)
            .await
            .map_err(|error| ConnectError::JetStream(error.to_string()))?;
        let epoch = base36(u128::try_from(info.created.unix_timestamp_nanos()).unwrap_or(0));
        let (jobs, jobs_rx) = mpsc::channel(config.publish_queue);
        let stop = CancellationToken::new();
        tokio::spawn(publisher(js, jobs_rx, config.publish_timeout, stop.clone()));
        Ok(Arc::new_cyclic(|this| Self {
            client,
            stream,
            prefix,
            epoch,
            start_at: info.state.last_sequence.saturating_add(1),
            jobs,
            this: this.clone(),
            inbound: OnceLock::new(),
            stop,
            slow_consumers,
            reconnected,
            config,
        }))
    }

    /// The history's epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Messages NATS subscriptions dropped because their buffer was full.
    pub fn slow_consumers(&self) -> u64 {
        self.slow_consumers.load(Ordering::Relaxed)
    }

    fn subject(&self, route: &Route) -> String {
        match route {
            Route::Channel(channel) => format!("{}.pub.ch.{}", self.prefix, hex(channel)),
            Route::User { user, .. } => format!("{}.pub.user.{}", self.prefix, hex(user)),
            Route::Session { id, .. } => format!("{}.pub.session.{}", self.prefix, hex(id)),
        }
    }

    /// The route of a publication's subject and headers.
    fn route_of(&self, subject: &str, headers: Option<&HeaderMap>) -> Option<Route> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".pub.")?;
        let (kind, name) = rest.split_once('.')?;
        let name = unhex(name)?;
        let push = headers
            .and_then(|headers| headers.get(PUSH))
            .is_some_and(|value| value.as_str() == "1");
        Some(match kind {
            "ch" => Route::Channel(name),
            "user" => Route::User { user: name, push },
            "session" => Route::Session { id: name, push },
            _ => return None,
        })
    }

    fn inbound(&self) -> Option<Arc<dyn Inbound>> {
        self.inbound.get().and_then(Weak::upgrade)
    }

    /// Reads the history from where the node joined and delivers each publication to this
    /// node's sessions, in the history's order; recreates the consumer (from the next
    /// publication) whenever it fails.
    async fn read_history(self: Arc<Self>) {
        let mut next = self.start_at;
        let inflight = Arc::new(Semaphore::new(self.config.read_batch));
        while !self.stop.is_cancelled() {
            let consumer = self
                .stream
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject: format!("{}.pub.>", self.prefix),
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: next,
                    },
                    // Each pull asks for at most this many: they all fit in the
                    // subscription's buffer (validated), so none is dropped.
                    max_batch: i64::try_from(self.config.read_batch).unwrap_or(i64::MAX),
                    ..Default::default()
                })
                .await;
            let messages = match consumer {
                Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            };
            let mut messages = match messages {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(%error, "cluster: reading the history; retrying");
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(self.config.retry_interval) => continue,
                    }
                }
            };
            // A consumer can stall without an error (its stream's leader moved to another
            // NATS server of a cluster): an idle reader checks the history's end every
            // `retry_interval` and starts again when publications it has not read are there.
            let mut idle_check = tokio::time::interval(self.config.retry_interval);
            idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            idle_check.tick().await;
            let mut read_since_check = false;
            loop {
                let message = tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = self.reconnected.notified() => {
                        tracing::debug!("cluster: reconnected; reading the history again");
                        break;
                    }
                    _ = idle_check.tick() => {
                        if std::mem::take(&mut read_since_check) || !self.unread(next).await {
                            continue;
                        }
                        tracing::debug!("cluster: the history's consumer stalled; recreating");
                        break;
                    }
                    message = messages.next() => message,
                };
                read_since_check = true;
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(error)) => {
                        tracing::warn!(%error, "cluster: history consumer failed; recreating");
                        break;
                    }
                    None => break,
                };
                let Ok(info) = message.info() else { continue };
                let offset = info.stream_sequence;
                if offset < next {
                    continue; // a repeat after a recreation
                }
                next = offset.saturating_add(1);
                let Some(inbound) = self.inbound() else {
                    return;
                };
                let route = self.route_of(message.subject.as_str(), message.headers.as_ref());
                let from = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get(FROM))
                    .and_then(|from| from.as_str().parse::<Address>().ok());
                let (Some(route), Some(from)) = (route, from) else {
                    tracing::warn!(subject = %message.subject, "cluster: unreadable publication");
                    continue;
                };
                let Ok(permit) = inflight.clone().acquire_owned().await else {
                    return;
                };
                let position = Position {
                    epoch: self.epoch.clone(),
                    offset,
                };
                // Submitted now, in the history's order; the store's answer is awaited apart.
                let delivered =
                    inbound.deliver(&route, &from, message.payload.clone(), Some(position));
                tokio::spawn(async move {
                    let _ = delivered.await;
                    drop(permit);
                });
            }
        }
    }

    /// Whether the history holds publications from `next` on (false when NATS does not answer
    /// within `publish_timeout`: the reader goes on waiting).
    async fn unread(&self, next: u64) -> bool {
        let mut stream = self.stream.clone();
        matches!(
            tokio::time::timeout(self.config.publish_timeout, stream.info()).await,
            Ok(Ok(info)) if info.state.last_sequence >= next
        )
    }

    /// Answers presence queries and hands presence events to this node's sessions.
    async fn serve_presence(self: Arc<Self>) {
        loop {
            let subscribed = async {
                let events = self
                    .client
                    .subscribe(format!("{}.presence.>", self.prefix))
                    .await?;
                let queries = self
                    .client
                    .subscribe(format!("{}.who.>", self.prefix))
                    .await?;
                let wheres = self
                    .client
                    .subscribe(format!("{}.where.>", self.prefix))
                    .await?;
                Ok::<_, async_nats::SubscribeError>((events, queries, wheres))
            }
            .await;
            let (mut events, mut queries, mut wheres) = match subscribed {
                Ok(subscriptions) => subscriptions,
                Err(error) => {
                    tracing::warn!(%error, "cluster: subscribing to presence; retrying");
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(self.config.retry_interval) => continue,
                    }
                }
            };
            loop {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    event = events.next() => {
                        let Some(event) = event else { break };
                        let Some(inbound) = self.inbound() else { return };
                        if let Ok(event) = serde_json::from_slice::<PresenceEvent>(&event.payload) {
                            inbound.presence(&event);
                        }
                    }
                    query = wheres.next() => {
                        let Some(query) = query else { break };
                        let Some(inbound) = self.inbound() else { return };
                        let id = query.subject.as_str().rsplit('.').next().and_then(unhex);
                        let here = id.is_some_and(|id| inbound.has_session(&id));
                        if let (true, Some(reply), Some(url)) = (here, query.reply, &self.config.advertise) {
                            let _ = self.client.publish(reply, url.clone().into_bytes().into()).await;
                        }
                    }
                    query = queries.next() => {
                        let Some(query) = query else { break };
                        let Some(inbound) = self.inbound() else { return };
                        let channel = query
                            .subject
                            .as_str()
                            .rsplit('.')
                            .next()
                            .and_then(unhex);
                        if let (Some(channel), Some(reply)) = (channel, query.reply) {
                            let members = inbound.members(&channel);
                            let payload = serde_json::to_vec(&members).unwrap_or_default();
                            let _ = self.client.publish(reply, payload.into()).await;
                        }
                    }
                }
            }
        }
    }
}

/// Hands queued publications to the NATS client in order, and waits for each one's
/// confirmation apart.
async fn publisher(
    js: jetstream::Context,
    mut jobs: mpsc::Receiver<Job>,
    timeout: Duration,
    stop: CancellationToken,
) {
    let client = js.client();
    loop {
        let job = tokio::select! {
            _ = stop.cancelled() => return,
            job = jobs.recv() => match job {
                Some(job) => job,
                None => return,
            },
        };
        match job {
            Job::Publish {
                subject,
                headers,
                payload,
                done,
            } => {
                let sent = tokio::time::timeout(
                    timeout,
                    js.publish_with_headers(subject, headers, payload),
                )
                .await;
                match sent {
                    Ok(Ok(ack)) => {
                        tokio::spawn(async move {
                            let result = match ack.await {
                                Ok(ack) => Ok(ack.sequence),
                                Err(error) => Err(ClusterError::Unavailable(error.to_string())),
                            };
                            let _ = done.send(result.map(|offset| Position {
                                epoch: String::new(),
                                offset,
                            }));
                        });
                    }
                    Ok(Err(error)) => {
                        let _ = done.send(Err(ClusterError::Unavailable(error.to_string())));
                    }
                    Err(_) => {
                        let _ = done.send(Err(ClusterError::Unavailable(
                            "the NATS client did not take the publication in time".into(),
                        )));
                    }
                }
            }
            Job::Presence { subject, payload } => {
                if let Err(error) = client.publish(subject, payload).await {
                    tracing::debug!(%error, "cluster: presence event not published");
                }
            }
        }
    }
}

impl Cluster for NatsCluster {
    fn start(&self, inbound: Weak<dyn Inbound>) {
        if self.inbound.set(inbound).is_err() {
            return;
        }
        // The tasks hold the cluster; `stop` ends them.
        let Some(this) = self.this.upgrade() else {
            return;
        };
        tokio::spawn(this.clone().read_history());
        tokio::spawn(this.serve_presence());
    }

    fn publish(
        &self,
        route: Route,
        from: &Address,
        payload: Bytes,
    ) -> ClusterFuture<Result<Published, ClusterError>> {
        let mut headers = HeaderMap::new();
        headers.insert(FROM, from.to_string().as_str());
        if matches!(
            route,
            Route::User { push: true, .. } | Route::Session { push: true, .. }
        ) {
            headers.insert(PUSH, "1");
        }
        let (done, answer) = oneshot::channel();
        let job = Job::Publish {
            subject: self.subject(&route),
            headers,
            payload,
            done,
        };
        let queued = self.jobs.try_send(job);
        let epoch = self.epoch.clone();
        Box::pin(async move {
            if queued.is_err() {
                return Err(ClusterError::Unavailable(
                    "too many publications are waiting for NATS".into(),
                ));
            }
            let position = answer
                .await
                .map_err(|_| ClusterError::Unavailable("the cluster stopped".into()))??;
            Ok(Published::Kept(Position {
                epoch,
                offset: position.offset,
            }))
        })
    }

    fn presence_changed(&self, event: PresenceEvent) {
        let subject = format!("{}.presence.{}", self.prefix, hex(&event.channel));
        let payload = serde_json::to_vec(&event).unwrap_or_default().into();
        if self
            .jobs
            .try_send(Job::Presence { subject, payload })
            .is_err()
        {
            tracing::debug!("cluster: presence event dropped (queue full)");
        }
    }

    fn history(
        &self,
        channel: &str,
        after: &Position,
        max: usize,
    ) -> ClusterFuture<Result<History, ClusterError>> {
        let stream = self.stream.clone();
        let subject = self.subject(&Route::Channel(channel.to_owned()));
        let epoch = self.epoch.clone();
        let batch = i64::try_from(self.config.read_batch).unwrap_or(i64::MAX);
        let wait = self.config.publish_timeout;
        let after = after.clone();
        let max = max.min(self.config.recover_max);
        Box::pin(async move {
            let unavailable = |error: &dyn std::fmt::Display| {
                ClusterError::Unavailable(format!("history: {error}"))
            };
            if after.epoch != epoch {
                // Another history: what the client had is not in this one.
                return Ok(History::default());
            }
            let mut info_of = stream.clone();
            let info = info_of.info().await.map_err(|e| unavailable(&e))?;
            let start = after.offset.saturating_add(1);
            // Publications before the oldest kept one were dropped (size or age).
            let mut complete = info.state.messages == 0 || info.state.first_sequence <= start;
            let last = info.state.last_sequence;
            let mut history = History::default();
            if last < start {
                history.complete = complete;
                return Ok(history);
            }
            let consumer = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject: subject,
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: start,
                    },
                    max_batch: batch,
                    ..Default::default()
                })
                .await
                .map_err(|e| unavailable(&e))?;
            if consumer.cached_info().num_pending == 0 {
                history.complete = complete;
                return Ok(history);
            }
            let mut messages = consumer.messages().await.map_err(|e| unavailable(&e))?;
            loop {
                if history.publications.len() >= max {
                    complete = false;
                    break;
                }
                let message = match tokio::time::timeout(wait, messages.next()).await {
                    Ok(Some(Ok(message))) => message,
                    Ok(Some(Err(error))) => return Err(unavailable(&error)),
                    Ok(None) | Err(_) => return Err(unavailable(&"no answer from NATS")),
                };
                let Ok(info) = message.info() else { continue };
                let (offset, pending) = (info.stream_sequence, info.pending);
                if offset > last {
                    break;
                }
                let from = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get(FROM))
                    .and_then(|from| from.as_str().parse::<Address>().ok());
                if let Some(from) = from {
                    let position = Position {
                        epoch: epoch.clone(),
                        offset,
                    };
                    history
                        .publications
                        .push((position, from, message.payload.clone()));
                }
                if pending == 0 || offset == last {
                    break;
                }
            }
            history.complete = complete;
            Ok(history)
        })
    }

    fn members(&self, channel: &str) -> ClusterFuture<Result<Vec<Member>, ClusterError>> {
        let client = self.client.clone();
        let subject = format!("{}.who.{}", self.prefix, hex(channel));
        let window = self.config.presence_timeout;
        Box::pin(async move {
            let unavailable = |error: &dyn std::fmt::Display| {
                ClusterError::Unavailable(format!("presence: {error}"))
            };
            let inbox = client.new_inbox();
            let mut answers = client
                .subscribe(inbox.clone())
                .await
                .map_err(|e| unavailable(&e))?;
            client
                .publish_with_reply(subject, inbox, Bytes::new())
                .await
                .map_err(|e| unavailable(&e))?;
            let deadline = tokio::time::Instant::now() + window;
            let mut members: Vec<Member> = Vec::new();
            while let Ok(Some(answer)) = tokio::time::timeout_at(deadline, answers.next()).await {
                if let Ok(some) = serde_json::from_slice::<Vec<Member>>(&answer.payload) {
                    members.extend(some);
                }
            }
            members.sort_by(|a, b| a.session.cmp(&b.session));
            members.dedup_by(|a, b| a.session == b.session);
            Ok(members)
        })
    }

    fn clustered(&self) -> bool {
        true
    }

    fn locate(&self, id: &str) -> ClusterFuture<Option<String>> {
        let client = self.client.clone();
        let subject = format!("{}.where.{}", self.prefix, hex(id));
        let window = self.config.presence_timeout;
        let own = self.config.advertise.clone();
        Box::pin(async move {
            let answer = tokio::time::timeout(window, client.request(subject, Bytes::new()))
                .await
                .ok()?
                .ok()?;
            let url = String::from_utf8(answer.payload.to_vec()).ok()?;
            (Some(&url) != own.as_ref()).then_some(url)
        })
    }

    fn stop(&self) {
        self.stop.cancel();
    }
}

//! The NATS baseline: a `nats-server` the bench starts on a loopback port (when Debian's is
//! installed, `/usr/sbin/nats-server`), reached with a minimal client of the NATS text protocol written here (`CONNECT`,
//! `PING`/`PONG`, `SUB`, `PUB`, `MSG`, plain TCP).
//!
//! Why not the async-nats crate: with async-nats 0.51 the throughput measurement stalled in
//! about one run in five (the server had sent every message and reported no slow consumer,
//! the publisher's flush had completed, and the subscription stopped yielding messages), and a
//! bench must not hang. The protocol subset needed here is small.
//!
//! Two measurements: 64-byte publish -> subscribe throughput (core NATS: at most once, no
//! acknowledgements) and 64-byte request/reply round trips.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{histogram, record_ns, MESSAGE_LEN, PAYLOAD};

/// The "baseline is" text of the throughput row measured against NATS.
pub(crate) const PUBSUB: &str = "NATS pub -> sub (no acks)";
/// The "baseline is" text of the request/reply rows.
pub(crate) const REQUEST_REPLY: &str = "NATS request/reply";
/// Shown instead of a ratio when `nats-server` is not on `PATH`.
pub(crate) const NOT_INSTALLED: &str = "NATS not installed: skipped";

/// Messages the publisher may be ahead of the subscriber. Core NATS has no flow control: a
/// publisher that runs ahead fills the server's buffer for the subscriber's connection, and
/// the server then drops it as a slow consumer (at 64 MiB pending). This window, kept through
/// a counter shared in the process, plays the part of ferry's send window.
const WINDOW: u64 = 32 * 1024;
/// The subscriber reports its count to the publisher after this many messages.
const REPORT_EVERY: u64 = 512;
/// How long the server may take to start listening, and a connection to say hello.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Subjects of the two measurements.
const THROUGHPUT_SUBJECT: &str = "bench.throughput";
const ECHO_SUBJECT: &str = "bench.echo";
const REPLY_SUBJECT: &str = "_INBOX.bench";

/// A `nats-server` on a loopback port ([`ferry_testkit::nats`], with JetStream on, unused
/// here), its store in a temporary directory; killed when dropped.
pub(crate) struct NatsServer {
    server: ferry_testkit::nats::NatsServer,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts `nats-server` on a free loopback port, or returns `None` if it is not installed.
    pub(crate) async fn start() -> Result<Option<Self>> {
        if !ferry_testkit::nats::NatsServer::installed() {
            return Ok(None);
        }
        let dir = tempfile::tempdir()?;
        let server =
            tokio::task::block_in_place(|| ferry_testkit::nats::NatsServer::start(dir.path()));
        Ok(Some(Self { server, _dir: dir }))
    }

    /// The server's client address.
    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.server.port))
    }

    /// Kills the server and waits for it to exit.
    pub(crate) async fn stop(mut self) {
        tokio::task::block_in_place(|| self.server.stop());
    }
}

/// One message delivered by the server (`MSG`).
struct Msg {
    reply: Option<String>,
    payload: Bytes,
}

/// A client connection: `CONNECT` done, the server's `PING`s answered while reading.
struct Connection {
    reader: OwnedReadHalf,
    buf: BytesMut,
    writer: BufWriter<OwnedWriteHalf>,
}

impl Connection {
    /// Connects, reads the server's `INFO`, sends `CONNECT` (not verbose: no `+OK` per
    /// command) and waits until a `PING` is answered.
    async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to nats-server at {addr}"))?;
        stream.set_nodelay(true)?;
        let (reader, writer) = stream.into_split();
        let mut connection = Self {
            reader,
            buf: BytesMut::with_capacity(64 * 1024),
            writer: BufWriter::with_capacity(64 * 1024, writer),
        };
        let info = tokio::time::timeout(START_TIMEOUT, connection.line())
            .await
            .map_err(|_| anyhow!("no INFO from nats-server"))??;
        ensure!(
            info.starts_with(b"INFO "),
            "expected INFO, got {:?}",
            text(&info)
        );
        connection
            .writer
            .write_all(
                b"CONNECT {\"verbose\":false,\"pedantic\":false,\"lang\":\"ferry-bench\",\
                  \"version\":\"0\",\"protocol\":1,\"echo\":false}\r\n",
            )
            .await?;
        connection.ping().await?;
        Ok(connection)
    }

    /// `SUB subject sid`, confirmed by a `PING` round trip (the server handles a
    /// connection's commands in order).
    async fn subscribe(&mut self, subject: &str) -> Result<()> {
        self.writer
            .write_all(format!("SUB {subject} 1\r\n").as_bytes())
            .await?;
        self.ping().await
    }

    /// Sends `PING` and reads until its `PONG` (nothing else may arrive before it).
    async fn ping(&mut self) -> Result<()> {
        self.writer.write_all(b"PING\r\n").await?;
        self.writer.flush().await?;
        loop {
            let line = self.line().await?;
            match &line[..] {
                b"PONG" => return Ok(()),
                b"+OK" => {}
                line if line.starts_with(b"INFO ") => {}
                line => bail!("expected PONG, got {:?}", text(line)),
            }
        }
    }

    /// Reads more bytes from the server into the buffer.
    async fn fill(&mut self) -> Result<()> {
        self.buf.reserve(32 * 1024);
        if self.reader.read_buf(&mut self.buf).await? == 0 {
            bail!("nats-server closed the connection");
        }
        Ok(())
    }

    /// The next protocol line, without its `\r\n`.
    async fn line(&mut self) -> Result<Bytes> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|pair| pair == b"\r\n") {
                let line = self.buf.split_to(end).freeze();
                self.buf.advance(2);
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    /// The next `MSG`, answering `PING`s and skipping `PONG`, `+OK` and `INFO` on the way.
    async fn next_msg(&mut self) -> Result<Msg> {
        loop {
            let line = self.line().await?;
            if let Some(header) = line.strip_prefix(b"MSG ") {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let header = std::str::from_utf8(header)?;
                let fields: Vec<&str> = header.split_ascii_whitespace().collect();
                let (reply, len) = match fields[..] {
                    [_, _, len] => (None, len),
                    [_, _, reply, len] => (Some(reply.to_owned()), len),
                    _ => bail!("bad MSG header {header:?}"),
                };
                let len: usize = len.parse()?;
                while self.buf.len() < len + 2 {
                    self.fill().await?;
                }
                let payload = self.buf.split_to(len).freeze();
                ensure!(
                    &self.buf[..2] == b"\r\n",
                    "MSG payload not followed by CRLF"
                );
                self.buf.advance(2);
                return Ok(Msg { reply, payload });
            }
            match &line[..] {
                b"PING" => {
                    self.writer.write_all(b"PONG\r\n").await?;
                    self.writer.flush().await?;
                }
                b"PONG" | b"+OK" => {}
                line if line.starts_with(b"INFO ") => {}
                line => bail!("nats-server: {:?}", text(line)),
            }
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Messages per second of `n` 64-byte messages published on one connection and received by a
/// subscriber on another, after `warmup` unmeasured ones; the clock runs from the first
/// publish until the subscriber counted the last message.
pub(crate) async fn throughput(addr: SocketAddr, n: u64, warmup: u64) -> Result<f64> {
    let mut subscriber = Connection::connect(addr).await?;
    let mut publisher = Connection::connect(addr).await?;
    subscriber.subscribe(THROUGHPUT_SUBJECT).await?;

    let total = warmup + n;
    let (progress_tx, mut progress) = watch::channel(0u64);
    let counter = tokio::spawn(async move {
        let mut count = 0u64;
        while count < total {
            let message = subscriber.next_msg().await?;
            ensure!(message.payload.len() == MESSAGE_LEN, "bad message length");
            count += 1;
            if count.is_multiple_of(REPORT_EVERY) || count == warmup || count == total {
                progress_tx.send_replace(count);
            }
        }
        anyhow::Ok(Instant::now())
    });

    // The whole PUB command, written as is for every message.
    let mut command = format!("PUB {THROUGHPUT_SUBJECT} {MESSAGE_LEN}\r\n").into_bytes();
    command.extend_from_slice(&PAYLOAD);
    command.extend_from_slice(b"\r\n");
    let mut sent = 0u64;
    let mut start = Instant::now();
    for (phase, goal) in [(0, warmup), (1, total)] {
        if phase == 1 {
            progress
                .wait_for(|count| *count >= warmup)
                .await
                .map_err(|_| anyhow!("subscriber ended during warm-up"))?;
            start = Instant::now();
        }
        while sent < goal {
            if sent.is_multiple_of(REPORT_EVERY) && sent - *progress.borrow() >= WINDOW {
                publisher.writer.flush().await?;
                progress
                    .wait_for(|count| sent - count < WINDOW / 2)
                    .await
                    .map_err(|_| anyhow!("subscriber ended"))?;
            }
            publisher.writer.write_all(&command).await?;
            sent += 1;
        }
        publisher.writer.flush().await?;
    }
    let counted = tokio::time::timeout(Duration::from_secs(60), counter)
        .await
        .map_err(|_| anyhow!("the subscriber did not receive every message"))?
        .context("subscriber panicked")??;
    Ok(n as f64 / (counted - start).as_secs_f64())
}

/// Sequential request/reply round trips of 64 bytes: a responder connection subscribed to the
/// echo subject publishes each request's payload to its reply subject; the requester (another
/// connection, subscribed to its reply subject) publishes a request with that reply subject
/// and waits for the answer.
pub(crate) async fn request_rounds(
    addr: SocketAddr,
    rounds: u64,
    warmup: u64,
) -> Result<Histogram<u64>> {
    let mut responder = Connection::connect(addr).await?;
    let mut requester = Connection::connect(addr).await?;
    responder.subscribe(ECHO_SUBJECT).await?;
    requester.subscribe(REPLY_SUBJECT).await?;
    let echo = tokio::spawn(echo_requests(responder));

    let mut command = format!("PUB {ECHO_SUBJECT} {REPLY_SUBJECT} {MESSAGE_LEN}\r\n").into_bytes();
    command.extend_from_slice(&PAYLOAD);
    command.extend_from_slice(b"\r\n");
    let mut histogram = histogram()?;
    let result = async {
        for round in 0..warmup + rounds {
            let start = Instant::now();
            requester.writer.write_all(&command).await?;
            requester.writer.flush().await?;
            let reply = requester.next_msg().await?;
            let elapsed = start.elapsed();
            ensure!(reply.payload.len() == MESSAGE_LEN, "bad reply length");
            if round >= warmup {
                record_ns(&mut histogram, elapsed)?;
            }
        }
        anyhow::Ok(())
    }
    .await;
    echo.abort();
    result?;
    Ok(histogram)
}

/// The responder: publishes each request's payload to the request's reply subject.
async fn echo_requests(mut responder: Connection) -> Result<()> {
    loop {
        let request = responder.next_msg().await?;
        let reply = request
            .reply
            .ok_or_else(|| anyhow!("a request without reply subject"))?;
        let header = format!("PUB {reply} {}\r\n", request.payload.len());
        responder.writer.write_all(header.as_bytes()).await?;
        responder.writer.write_all(&request.payload).await?;
        responder.writer.write_all(b"\r\n").await?;
        responder.writer.flush().await?;
    }
}

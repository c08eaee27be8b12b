//! The jobs measured on bare QUIC streams, written once against [`QuicConnection`]: the raw
//! quinn baselines of the throughput, round trip, call and dial figures run them on quinn, and
//! `bench-peers` (BENCHMARKS.md, "Peers") runs the very same code on iroh's connections, so
//! both are measured alike. Each job has a client half (timed) and a server half (spawned by
//! the caller, or run by a protocol handler).

use std::future::Future;
use std::time::Instant;

use anyhow::{anyhow, ensure, Result};
use bytes::{Buf, Bytes, BytesMut};
use hdrhistogram::Histogram;

use super::dial::PACE;
use super::{histogram, record_ns, MESSAGE_LEN, PAYLOAD};

/// Messages the client writes per `write_all` (about 64 KiB, like ferry's batches).
pub(crate) const BATCH: usize = 1000;

/// A QUIC connection with quinn's stream API.
pub(crate) trait QuicConnection: Clone + Send + Sync + 'static {
    /// Sending half of a stream.
    type Send: QuicSend;
    /// Receiving half of a stream.
    type Recv: QuicRecv;
    /// Opens a bidirectional stream.
    fn open_bi(&self) -> impl Future<Output = Result<(Self::Send, Self::Recv)>> + Send;
    /// Accepts the peer's next bidirectional stream; fails once the connection is closed.
    fn accept_bi(&self) -> impl Future<Output = Result<(Self::Send, Self::Recv)>> + Send;
    /// Resolves once the connection is closed (by either side).
    fn closed(&self) -> impl Future<Output = ()> + Send;
}

/// The sending half of a QUIC stream.
pub(crate) trait QuicSend: Send + 'static {
    /// Writes all of `buf`.
    fn write_all(&mut self, buf: &[u8]) -> impl Future<Output = Result<()>> + Send;
    /// Ends the stream.
    fn finish(&mut self) -> Result<()>;
}

/// The receiving half of a QUIC stream.
pub(crate) trait QuicRecv: Send + 'static {
    /// The next bytes in order, at most `max`; `None` at the end of the stream.
    fn read_chunk(&mut self, max: usize) -> impl Future<Output = Result<Option<Bytes>>> + Send;
    /// Fills `buf`; `false` if the stream ended before its first byte.
    fn read_exact_or_end(&mut self, buf: &mut [u8]) -> impl Future<Output = Result<bool>> + Send;
    /// Everything up to the end of the stream, at most `limit` bytes.
    fn read_to_end(&mut self, limit: usize) -> impl Future<Output = Result<Vec<u8>>> + Send;
}

// ---------------------------------------------------------------------------------------------
// Acknowledged messages on one stream.

/// Client half: on one bidirectional stream, writes `warmup`, then `n` length-prefixed 64-byte
/// messages in batches of [`BATCH`] while reading the server's cumulative counts (u64), and
/// returns messages/s of the `n` from the first write until the count reached the total.
pub(crate) async fn send_counted<C: QuicConnection>(
    connection: &C,
    n: u64,
    warmup: u64,
) -> Result<f64> {
    let (mut send, mut recv) = connection.open_bi().await?;
    let mut batch = Vec::with_capacity(BATCH * (2 + MESSAGE_LEN));
    let mut acked = 0u64;
    let mut ack_buf = Vec::with_capacity(64);
    let mut sent = 0u64;
    let mut start = Instant::now();
    for (phase, goal) in [(0, warmup), (1, warmup + n)] {
        if phase == 1 {
            start = Instant::now();
        }
        let writer = async {
            while sent < goal {
                let k = (goal - sent).min(BATCH as u64);
                batch.clear();
                for _ in 0..k {
                    batch.extend_from_slice(&(MESSAGE_LEN as u16).to_be_bytes());
                    batch.extend_from_slice(&PAYLOAD);
                }
                send.write_all(&batch).await?;
                sent += k;
            }
            anyhow::Ok(())
        };
        let reader = async {
            while acked < goal {
                let chunk = recv
                    .read_chunk(4096)
                    .await?
                    .ok_or_else(|| anyhow!("server finished early"))?;
                ack_buf.extend_from_slice(&chunk);
                let whole = ack_buf.len() / 8 * 8;
                if whole > 0 {
                    let last = &ack_buf[whole - 8..whole];
                    acked = u64::from_be_bytes(last.try_into()?);
                    ack_buf.drain(..whole);
                }
            }
            anyhow::Ok(())
        };
        tokio::try_join!(writer, reader)?;
    }
    let elapsed = start.elapsed();
    send.finish()?;
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Server half: accepts one stream, parses the messages and answers the cumulative count after
/// each read; returns the count once the client finished the stream.
pub(crate) async fn serve_counted<C: QuicConnection>(connection: C) -> Result<u64> {
    let (mut send, mut recv) = connection.accept_bi().await?;
    let mut buf = BytesMut::with_capacity(128 * 1024);
    let mut count = 0u64;
    while let Some(chunk) = recv.read_chunk(64 * 1024).await? {
        buf.extend_from_slice(&chunk);
        while buf.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
            if buf.len() < 2 + len {
                break;
            }
            buf.advance(2);
            let message = buf.split_to(len);
            ensure!(message.len() == MESSAGE_LEN, "bad message length");
            count += 1;
        }
        send.write_all(&count.to_be_bytes()).await?;
    }
    Ok(count)
}

// ---------------------------------------------------------------------------------------------
// Echo on an open stream.

/// Client half: on one open bidirectional stream, `warmup + rounds` times writes 64 bytes and
/// reads the 64-byte echo; the histogram holds the last `rounds`.
pub(crate) async fn echo_rounds<C: QuicConnection>(
    connection: &C,
    rounds: u64,
    warmup: u64,
) -> Result<Histogram<u64>> {
    let (mut send, mut recv) = connection.open_bi().await?;
    let mut histogram = histogram()?;
    let mut buf = [0u8; MESSAGE_LEN];
    for round in 0..warmup + rounds {
        let start = Instant::now();
        send.write_all(&PAYLOAD).await?;
        ensure!(recv.read_exact_or_end(&mut buf).await?, "echo ended early");
        let elapsed = start.elapsed();
        if round >= warmup {
            record_ns(&mut histogram, elapsed)?;
        }
    }
    send.finish()?;
    Ok(histogram)
}

/// Server half: accepts one stream and echoes it 64 bytes at a time until the client finishes.
pub(crate) async fn serve_echo<C: QuicConnection>(connection: C) -> Result<()> {
    let (mut send, mut recv) = connection.accept_bi().await?;
    let mut buf = [0u8; MESSAGE_LEN];
    while recv.read_exact_or_end(&mut buf).await? {
        send.write_all(&buf).await?;
    }
    Ok(())
}

/// Room of the channels between the tasks of the handed-off echo.
const HAND_OFF_ROOM: usize = 16;

/// Client half of the echo with a ferry node's hand-offs and none of its work: the stream's
/// sending half is written by a task of its own (ferry: the conversation's task) and its
/// receiving half read by another (ferry: the mailbox stream's task); the timed task hands
/// each message to the first and takes each echo from the second over bounded channels.
pub(crate) async fn echo_rounds_handed_off<C: QuicConnection>(
    connection: &C,
    rounds: u64,
    warmup: u64,
) -> Result<Histogram<u64>> {
    let (send, recv) = connection.open_bi().await?;
    let (to_writer, writer) = write_from_channel(send);
    let (reader, mut from_reader) = read_into_channel(recv);
    let mut histogram = histogram()?;
    for round in 0..warmup + rounds {
        let start = Instant::now();
        if to_writer.send(PAYLOAD).await.is_err() {
            return Err(why_ended(writer, "the writer").await);
        }
        if from_reader.recv().await.is_none() {
            return Err(why_ended(reader, "the echo").await);
        }
        let elapsed = start.elapsed();
        if round >= warmup {
            record_ns(&mut histogram, elapsed)?;
        }
    }
    drop(to_writer);
    writer.await??;
    drop(from_reader);
    reader.await??;
    Ok(histogram)
}

/// Server half of [`echo_rounds_handed_off`]: a task reads the stream (ferry: the mailbox
/// stream's task), the echoing task takes each message from it and hands it to a task that
/// writes it back (ferry: the application's task and its reply's conversation task).
pub(crate) async fn serve_echo_handed_off<C: QuicConnection>(connection: C) -> Result<()> {
    let (send, recv) = connection.accept_bi().await?;
    let (to_writer, writer) = write_from_channel(send);
    let (reader, mut from_reader) = read_into_channel(recv);
    while let Some(message) = from_reader.recv().await {
        if to_writer.send(message).await.is_err() {
            return Err(why_ended(writer, "the writer").await);
        }
    }
    drop(to_writer);
    writer.await??;
    reader.await?
}

type Message = [u8; MESSAGE_LEN];

/// The error of a task of the handed-off echo whose channel closed early: its own, if it
/// failed.
async fn why_ended(task: tokio::task::JoinHandle<Result<()>>, what: &str) -> anyhow::Error {
    match task.await {
        Ok(Err(error)) => error.context(format!("{what} failed")),
        Ok(Ok(())) => anyhow!("{what} ended early"),
        Err(error) => anyhow!("{what} panicked: {error}"),
    }
}

/// A task writing what the channel brings to `send`, finishing it when the channel closes.
fn write_from_channel<S: QuicSend>(
    mut send: S,
) -> (
    tokio::sync::mpsc::Sender<Message>,
    tokio::task::JoinHandle<Result<()>>,
) {
    let (to_writer, mut messages) = tokio::sync::mpsc::channel::<Message>(HAND_OFF_ROOM);
    let writer = tokio::spawn(async move {
        while let Some(message) = messages.recv().await {
            send.write_all(&message).await?;
        }
        send.finish()
    });
    (to_writer, writer)
}

/// A task reading 64-byte messages from `recv` into a channel until the stream or the channel
/// ends.
fn read_into_channel<R: QuicRecv>(
    mut recv: R,
) -> (
    tokio::task::JoinHandle<Result<()>>,
    tokio::sync::mpsc::Receiver<Message>,
) {
    let (to_reader, messages) = tokio::sync::mpsc::channel::<Message>(HAND_OFF_ROOM);
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; MESSAGE_LEN];
        while recv.read_exact_or_end(&mut buf).await? {
            if to_reader.send(buf).await.is_err() {
                break;
            }
        }
        anyhow::Ok(())
    });
    (reader, messages)
}

// ---------------------------------------------------------------------------------------------
// A request on a new stream.

/// Client half: `warmup + rounds` times opens a bidirectional stream, writes 64 bytes and
/// finishes, and reads the reply to its end; the histogram holds the last `rounds`.
pub(crate) async fn call_rounds<C: QuicConnection>(
    connection: &C,
    rounds: u64,
    warmup: u64,
) -> Result<Histogram<u64>> {
    let mut histogram = histogram()?;
    for round in 0..warmup + rounds {
        let start = Instant::now();
        let (mut send, mut recv) = connection.open_bi().await?;
        send.write_all(&PAYLOAD).await?;
        send.finish()?;
        let reply = recv.read_to_end(2 * MESSAGE_LEN).await?;
        let elapsed = start.elapsed();
        ensure!(reply.len() == MESSAGE_LEN, "bad reply length");
        if round >= warmup {
            record_ns(&mut histogram, elapsed)?;
        }
    }
    Ok(histogram)
}

/// Server half: a task per stream (like a ferry service handler) reads the request to its
/// end, writes it back and finishes; returns when the connection is closed.
pub(crate) async fn serve_calls<C: QuicConnection>(connection: C) {
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        tokio::spawn(async move {
            let request = recv.read_to_end(2 * MESSAGE_LEN).await?;
            send.write_all(&request).await?;
            send.finish()?;
            anyhow::Ok(())
        });
    }
}

// ---------------------------------------------------------------------------------------------
// A fresh connection and its first echo.

/// How a dial-figure client reaches the server: a fresh connection per round.
pub(crate) trait Dialer: Send {
    /// The connection it makes.
    type Connection: QuicConnection;
    /// Untimed preparation of a round (e.g. binding a fresh endpoint).
    fn prepare(&mut self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }
    /// Connects (timed).
    fn connect(&mut self) -> impl Future<Output = Result<Self::Connection>> + Send;
    /// Closes the connection after its round (untimed).
    fn release(&mut self, connection: Self::Connection) -> impl Future<Output = ()> + Send;
}

/// Client half: each round (at most one per [`PACE`]) times a new connection, a
/// bidirectional stream on it, 64 bytes written and the 64-byte echo read.
pub(crate) async fn dial_rounds<D: Dialer>(
    dialer: &mut D,
    rounds: u64,
    warmup: u64,
) -> Result<Histogram<u64>> {
    let mut histogram = histogram()?;
    for round in 0..warmup + rounds {
        let next = tokio::time::Instant::now() + PACE;
        dialer.prepare().await?;
        let start = Instant::now();
        let connection = dialer.connect().await?;
        let (mut send, mut recv) = connection.open_bi().await?;
        send.write_all(&PAYLOAD).await?;
        let mut buf = [0u8; MESSAGE_LEN];
        ensure!(recv.read_exact_or_end(&mut buf).await?, "echo ended early");
        let elapsed = start.elapsed();
        if round >= warmup {
            record_ns(&mut histogram, elapsed)?;
        }
        dialer.release(connection).await;
        tokio::time::sleep_until(next).await;
    }
    Ok(histogram)
}

/// Server half: echoes the first stream's 64 bytes, finishes it and waits for the close.
pub(crate) async fn serve_dial<C: QuicConnection>(connection: C) -> Result<()> {
    let (mut send, mut recv) = connection.accept_bi().await?;
    let mut buf = [0u8; MESSAGE_LEN];
    ensure!(recv.read_exact_or_end(&mut buf).await?, "no message");
    send.write_all(&buf).await?;
    send.finish()?;
    connection.closed().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// quinn.

impl QuicConnection for quinn::Connection {
    type Send = quinn::SendStream;
    type Recv = quinn::RecvStream;

    async fn open_bi(&self) -> Result<(Self::Send, Self::Recv)> {
        Ok(quinn::Connection::open_bi(self).await?)
    }

    async fn accept_bi(&self) -> Result<(Self::Send, Self::Recv)> {
        Ok(quinn::Connection::accept_bi(self).await?)
    }

    async fn closed(&self) {
        quinn::Connection::closed(self).await;
    }
}

impl QuicSend for quinn::SendStream {
    async fn write_all(&mut self, buf: &[u8]) -> Result<()> {
        Ok(quinn::SendStream::write_all(self, buf).await?)
    }

    fn finish(&mut self) -> Result<()> {
        Ok(quinn::SendStream::finish(self)?)
    }
}

impl QuicRecv for quinn::RecvStream {
    async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>> {
        Ok(quinn::RecvStream::read_chunk(self, max, true)
            .await?
            .map(|chunk| chunk.bytes))
    }

    async fn read_exact_or_end(&mut self, buf: &mut [u8]) -> Result<bool> {
        match quinn::RecvStream::read_exact(self, buf).await {
            Ok(()) => Ok(true),
            Err(quinn::ReadExactError::FinishedEarly(0)) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    async fn read_to_end(&mut self, limit: usize) -> Result<Vec<u8>> {
        Ok(quinn::RecvStream::read_to_end(self, limit).await?)
    }
}

/// Dials the raw quinn server from one client endpoint, a new connection per round.
pub(crate) struct QuinnDialer {
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) server: std::net::SocketAddr,
}

impl Dialer for QuinnDialer {
    type Connection = quinn::Connection;

    async fn connect(&mut self) -> Result<quinn::Connection> {
        Ok(self.endpoint.connect(self.server, "localhost")?.await?)
    }

    async fn release(&mut self, connection: quinn::Connection) {
        connection.close(0u32.into(), b"done");
    }
}

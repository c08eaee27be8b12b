//! Streams as QUIC exposes them to ferry. Each direction of a stream is a pipe of chunks that
//! arrive reliably and in order, each after its own delay (base, jitter, spikes), so the
//! streams of one connection interleave and a retransmission on a new stream can overtake the
//! old stream's data. FIN arrives after the data before it. A reset keeps a random prefix of
//! the data in flight and loses the rest; the reader sees the reset after that prefix. A
//! reader that stops reading (STOP_SENDING) makes the writer's later writes fail, once the
//! writer has heard of it. A partition holds chunks until it heals; a connection that dies
//! loses everything not yet arrived. A reader that is not reading (a mailbox stream waiting
//! for room) leaves the chunks in its pipe, which is QUIC's receive buffer: its size is checked
//! against the send window.
//!
//! Loss, reordering and duplication of packets are QUIC's business below this level; what
//! reaches ferry is delay, reordering across streams, lost connections, and whole runs sent
//! again on new streams — which is what this network produces.

use std::collections::VecDeque;
use std::time::Duration;

use crate::outbound::SimError;
use crate::world::{Event, World};

/// The largest chunk a reader takes at once (the runtime's `read_chunk(64 * 1024)`).
pub(crate) const MAX_CHUNK: usize = 64 * 1024;

/// A connection's index.
pub(crate) type ConnId = usize;
/// A stream's index.
pub(crate) type StreamId = usize;

/// A direction of a stream, seen from its opener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Dir {
    /// Opener to acceptor.
    Out = 0,
    /// Acceptor to opener.
    In = 1,
}

/// A QUIC connection between two nodes.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Dialer, acceptor.
    pub(crate) nodes: [usize; 2],
    /// Each end's incarnation when it was dialed.
    pub(crate) incarnations: [u64; 2],
    /// Whether its packets go through a relay.
    pub(crate) relayed: bool,
    /// Whether each end knows it (its handshake completed there).
    pub(crate) known: [bool; 2],
    /// When each end came to know it.
    pub(crate) known_at: [Duration; 2],
    /// Whether each end noticed it is gone.
    pub(crate) lost: [bool; 2],
    /// From when nothing crosses it.
    pub(crate) dead_at: Option<Duration>,
    /// When stream data last crossed it.
    pub(crate) last_data: Duration,
    /// When something last arrived at each end.
    pub(crate) last_rx: [Duration; 2],
    /// Its streams.
    pub(crate) streams: Vec<StreamId>,
}

impl Conn {
    /// A connection dialed now.
    pub(crate) fn new(
        nodes: [usize; 2],
        incarnations: [u64; 2],
        relayed: bool,
        now: Duration,
    ) -> Self {
        Self {
            nodes,
            incarnations,
            relayed,
            known: [false; 2],
            known_at: [now; 2],
            lost: [false; 2],
            dead_at: None,
            last_data: now,
            last_rx: [now; 2],
            streams: Vec::new(),
        }
    }

    /// The end `node` is.
    pub(crate) fn side_of(&self, node: usize) -> Option<usize> {
        self.nodes.iter().position(|n| *n == node)
    }

    /// Whether end `side` may open streams on it.
    pub(crate) fn usable(&self, side: usize) -> bool {
        self.known[side] && !self.lost[side]
    }

    /// Whether it broke.
    pub(crate) fn is_dead(&self, now: Duration) -> bool {
        self.dead_at.is_some_and(|at| at <= now)
    }
}

/// What travels in a pipe.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// Stream data.
    Data(Vec<u8>),
    /// The writer finished.
    Fin,
    /// The writer reset the stream.
    Reset,
}

/// One direction of a stream.
#[derive(Debug, Default)]
pub(crate) struct Pipe {
    /// Items in flight or waiting for the reader, with their arrival times, in order.
    pub(crate) items: VecDeque<(Duration, Item)>,
    /// The arrival time of the last item sent (arrivals never go backwards).
    last_arrival: Duration,
    /// The writer finished or reset: nothing more is written.
    pub(crate) closed: bool,
    /// The reader stopped reading; the writer hears of it at this time.
    stopped_at: Option<Duration>,
    /// Data bytes in `items`.
    pub(crate) bytes: usize,
}

/// A bidirectional stream.
#[derive(Debug)]
pub(crate) struct Stream {
    /// Its connection.
    pub(crate) conn: ConnId,
    /// The end of the connection that opened it.
    pub(crate) opener: usize,
    /// Its two directions, indexed by [`Dir`].
    pub(crate) pipes: [Pipe; 2],
}

impl Stream {
    /// The pipe of `dir`.
    pub(crate) fn pipe(&mut self, dir: Dir) -> &mut Pipe {
        &mut self.pipes[dir as usize]
    }
}

impl World {
    /// The one-way delay of a chunk from node `a` to node `b` sent now.
    pub(crate) fn delay(&mut self, a: usize, b: usize) -> Duration {
        self.scenario.links.delay(&mut self.rng, a, b, self.now)
    }

    /// The nodes a pipe goes from and to.
    fn ends(&self, stream: StreamId, dir: Dir) -> (usize, usize) {
        let s = &self.streams[stream];
        let conn = &self.conns[s.conn];
        let opener = conn.nodes[s.opener];
        let acceptor = conn.nodes[1 - s.opener];
        match dir {
            Dir::Out => (opener, acceptor),
            Dir::In => (acceptor, opener),
        }
    }

    /// Opens a stream on `conn` from `node`.
    pub(crate) fn new_stream(&mut self, conn: ConnId, node: usize) -> StreamId {
        let stream = self.streams.len();
        let opener = self.conns[conn].side_of(node).unwrap_or(0);
        self.streams.push(Stream {
            conn,
            opener,
            pipes: [Pipe::default(), Pipe::default()],
        });
        self.conns[conn].streams.push(stream);
        stream
    }

    /// Queues an item on a pipe; it arrives after the link's delay, not before the one before.
    fn send_item(&mut self, stream: StreamId, dir: Dir, item: Item) {
        let (from, to) = self.ends(stream, dir);
        let delay = self.delay(from, to);
        let now = self.now;
        let pipe = self.streams[stream].pipe(dir);
        let arrival = (now + delay).max(pipe.last_arrival);
        pipe.last_arrival = arrival;
        if let Item::Data(data) = &item {
            pipe.bytes += data.len();
        }
        pipe.items.push_back((arrival, item));
        self.schedule(arrival - now, Event::Pipe { stream, dir });
    }

    /// Writes `bytes` to a pipe, split into chunks of random sizes. Fails if the writer's end
    /// knows the connection is gone or heard the reader stop.
    pub(crate) fn write(
        &mut self,
        stream: StreamId,
        dir: Dir,
        bytes: Vec<u8>,
    ) -> Result<(), SimError> {
        let (from, _) = self.ends(stream, dir);
        let s = &self.streams[stream];
        let side = self.conns[s.conn].side_of(from).unwrap_or(0);
        if self.conns[s.conn].lost[side] {
            return Err(SimError::ConnectionLost);
        }
        let pipe = &s.pipes[dir as usize];
        if pipe.stopped_at.is_some_and(|at| at <= self.now) {
            return Err(SimError::Stopped);
        }
        if pipe.closed {
            self.check.fail(
                "a stream was written after its end",
                format!("stream {stream} {dir:?}"),
            );
            return Ok(());
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let conn = self.streams[stream].conn;
        self.conns[conn].last_data = self.now;
        let max_chunk = self.scenario.pace.max_chunk;
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let size = if self.rng.chance(50) {
                rest.len()
            } else {
                self.rng.range(1, max_chunk as u64) as usize
            }
            .min(rest.len())
            .min(MAX_CHUNK);
            let (chunk, after) = rest.split_at(size);
            self.send_item(stream, dir, Item::Data(chunk.to_vec()));
            rest = after;
        }
        if dir == Dir::Out {
            self.check_pipe(stream);
        }
        Ok(())
    }

    /// The writer finishes its direction.
    pub(crate) fn finish(&mut self, stream: StreamId, dir: Dir) {
        if self.streams[stream].pipe(dir).closed {
            return;
        }
        self.send_item(stream, dir, Item::Fin);
        self.streams[stream].pipe(dir).closed = true;
    }

    /// The writer resets its direction: a random prefix of what is in flight still arrives,
    /// the rest is lost, and then the reset.
    pub(crate) fn reset(&mut self, stream: StreamId, dir: Dir) {
        if self.streams[stream].pipe(dir).closed {
            return;
        }
        let now = self.now;
        let in_flight = self.streams[stream]
            .pipe(dir)
            .items
            .iter()
            .filter(|(at, _)| *at > now)
            .count();
        let lost = self.rng.below(in_flight as u64 + 1) as usize;
        let pipe = self.streams[stream].pipe(dir);
        for _ in 0..lost {
            if let Some((_, Item::Data(data))) = pipe.items.pop_back() {
                pipe.bytes -= data.len();
            }
        }
        pipe.last_arrival = pipe.items.back().map_or(Duration::ZERO, |(at, _)| *at);
        self.send_item(stream, dir, Item::Reset);
        self.streams[stream].pipe(dir).closed = true;
    }

    /// The reader of `dir` stops reading: what waits in the pipe is dropped, and the writer
    /// hears of it after a one-way delay.
    pub(crate) fn stop_reading(&mut self, stream: StreamId, dir: Dir) {
        let (from, to) = self.ends(stream, dir);
        let delay = self.delay(to, from);
        let now = self.now;
        let pipe = self.streams[stream].pipe(dir);
        pipe.items.clear();
        pipe.bytes = 0;
        pipe.stopped_at.get_or_insert(now + delay);
    }

    /// Items of a pipe may have arrived: hands them to the reader, unless the connection died
    /// (they are lost), a partition holds them (they arrive after the heal) or the reader is
    /// not reading (they wait).
    pub(crate) fn pipe_arrival(&mut self, stream: StreamId, dir: Dir) {
        let (from, to) = self.ends(stream, dir);
        let conn = self.streams[stream].conn;
        if self.conns[conn].is_dead(self.now) {
            let pipe = self.streams[stream].pipe(dir);
            pipe.items.clear();
            pipe.bytes = 0;
            return;
        }
        if let Some(heal) = self.scenario.faults.partitioned(from, to, self.now) {
            let delay = self.delay(from, to);
            let wait = heal.saturating_sub(self.now) + delay;
            // Held: everything waiting arrives after the heal, in order.
            let at = self.now + wait;
            let pipe = self.streams[stream].pipe(dir);
            for (arrival, _) in pipe.items.iter_mut() {
                *arrival = (*arrival).max(at);
            }
            pipe.last_arrival = pipe.last_arrival.max(at);
            self.schedule(wait, Event::Pipe { stream, dir });
            return;
        }
        let side = self.conns[conn].side_of(to).unwrap_or(0);
        loop {
            let now = self.now;
            if self.conns[conn].is_dead(now) {
                return; // a crash in the middle of this delivery: the next wake drops the rest
            }
            let pipe = self.streams[stream].pipe(dir);
            if pipe.items.front().is_none_or(|(at, _)| *at > now) {
                return;
            }
            // A reader that stopped drops what still comes.
            let stopped = pipe.stopped_at.is_some();
            if !stopped && !self.reading(stream, dir) {
                return;
            }
            let pipe = self.streams[stream].pipe(dir);
            let Some((_, item)) = pipe.items.pop_front() else {
                return;
            };
            if let Item::Data(data) = &item {
                pipe.bytes -= data.len();
            }
            self.conns[conn].last_rx[side] = now;
            if stopped {
                continue;
            }
            if !self.conns[conn].known[side] {
                // The handshake's last flight precedes stream data.
                self.accepted(conn);
            }
            match dir {
                Dir::Out => self.inbound_item(to, stream, item),
                Dir::In => self.outbound_item(to, stream, item),
            }
        }
    }

    /// Whether the reader of a pipe takes items now.
    fn reading(&self, stream: StreamId, dir: Dir) -> bool {
        let (_, to) = self.ends(stream, dir);
        match dir {
            Dir::Out => self.nodes[to]
                .inbound
                .get(&stream)
                .is_none_or(|inbound| inbound.is_reading()),
            Dir::In => true,
        }
    }

    /// An item for the opener of `stream` (node `node`).
    fn outbound_item(&mut self, node: usize, stream: StreamId, item: Item) {
        let source = self.nodes[node]
            .conversations
            .iter()
            .find(|(_, c)| c.stream == Some(stream))
            .map(|(source, _)| *source);
        let Some(source) = source else {
            return; // the run gave the stream up
        };
        match item {
            Item::Data(bytes) => self.sender_received(node, source, &bytes),
            Item::Fin => self.sender_stream_finished(node, source),
            Item::Reset => self.sender_stream_failed(node, source, SimError::Stopped),
        }
    }

    /// Wakes a pipe whose reader takes items again.
    pub(crate) fn resume_reading(&mut self, stream: StreamId, dir: Dir) {
        self.schedule(Duration::ZERO, Event::Pipe { stream, dir });
    }

    /// Bytes waiting in a pipe (in flight, or not read).
    pub(crate) fn pipe_bytes(&self, stream: StreamId, dir: Dir) -> usize {
        self.streams[stream].pipes[dir as usize].bytes
    }
}

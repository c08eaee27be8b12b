//! The NAT matrix (issue 12, point 7): for every ordered pair of NAT kinds, node A behind the
//! first sends to node C behind the second, both reachable through a relay R on the public
//! segment and both listening on a wildcard address. Per pair: connected or not, direct or
//! relayed, time to the first acknowledged message, time until A's connection to C is direct,
//! and what C's application was handed (lost, duplicated, out of order).
//!
//! A pair runs in three phases: one message (`first`: the time to the first acknowledgement)
//! and, sent at the same moment, a stream (`during`: messages in flight while a relayed
//! connection is replaced by a direct one), while A is asked every [`PATH_POLL`] how it
//! reaches C; then a stream once the path is settled (`after`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::agent::{AgentError, LabAgent, PathState};
use super::nat::NatKind;
use super::tally::Tally;
use super::topology::{HostId, Lab};

/// How often A is asked how it reaches C while the path may change.
pub const PATH_POLL: Duration = Duration::from_millis(20);
/// The tags of a pair's three phases.
const TAGS: [&str; 3] = ["first", "during", "after"];
/// The relay's UDP port.
const RELAY_PORT: u16 = 7000;

/// How a matrix run is done.
#[derive(Debug, Clone)]
pub struct MatrixSettings {
    /// The agent binary.
    pub agent: PathBuf,
    /// The kinds on each side (every ordered pair of them runs).
    pub kinds: Vec<NatKind>,
    /// Messages of each of the streams `during` and `after`.
    pub messages: u64,
    /// How long the first message may take to be acknowledged.
    pub connect_timeout: Duration,
    /// How long a pair that can be direct is given to become so.
    pub direct_timeout: Duration,
    /// How long a stream may take to be acknowledged and handed over.
    pub stream_timeout: Duration,
    /// Pairs run at the same time (each in its own lab).
    pub jobs: usize,
    /// Where to keep, for each pair that fails, every agent's log and the routers' rules and
    /// connection tracking tables (`DIR/<A's kind>-<C's kind>/`).
    pub logs: Option<PathBuf>,
}

impl MatrixSettings {
    /// The test command's matrix: few messages per pair, four pairs at a time.
    pub fn quick(agent: PathBuf) -> Self {
        Self {
            agent,
            kinds: NatKind::ALL.to_vec(),
            messages: 200,
            connect_timeout: Duration::from_secs(30),
            direct_timeout: Duration::from_secs(15),
            stream_timeout: Duration::from_secs(60),
            jobs: 4,
            logs: None,
        }
    }

    /// The published matrix: more messages, more patience, one pair at a time.
    pub fn full(agent: PathBuf) -> Self {
        Self {
            messages: 2000,
            direct_timeout: Duration::from_secs(30),
            stream_timeout: Duration::from_secs(120),
            jobs: 1,
            ..Self::quick(agent)
        }
    }
}

/// How A reached C at the end of a pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "path", content = "detail")]
pub enum PathOutcome {
    /// Directly, to this address.
    Direct(SocketAddr),
    /// Through this relay node.
    Relayed(String),
    /// Not connected.
    None,
    /// The agent could not say (the reason).
    Unknown(String),
}

/// One ordered pair's result.
#[derive(Debug, Clone, Serialize)]
pub struct PairOutcome {
    /// A's NAT kind (the sender).
    pub from: NatKind,
    /// C's NAT kind (the receiver).
    pub to: NatKind,
    /// Whether physics allows a direct path between these kinds (the goal's expectation).
    pub direct_possible: bool,
    /// The first message was acknowledged.
    pub connected: bool,
    /// How A reached C once the streams were through.
    pub path: PathOutcome,
    /// From A's first `send` to its acknowledgement.
    #[serde(serialize_with = "millis")]
    pub first_ack: Option<Duration>,
    /// From A's first `send` to the first time A reported a direct path to C.
    #[serde(serialize_with = "millis")]
    pub direct_after: Option<Duration>,
    /// Messages A sent.
    pub sent: u64,
    /// Messages acknowledged to A.
    pub acknowledged: u64,
    /// Acknowledged messages C's application never got.
    pub lost: u64,
    /// Messages C's application got twice.
    pub duplicates: u64,
    /// Messages C's application got after a later one of the same stream.
    pub order_violations: u64,
    /// What went wrong, if anything did.
    pub error: Option<String>,
}

impl PairOutcome {
    fn new(from: NatKind, to: NatKind) -> Self {
        Self {
            from,
            to,
            direct_possible: from.direct_possible(to),
            connected: false,
            path: PathOutcome::Unknown("not measured".to_string()),
            first_ack: None,
            direct_after: None,
            sent: 0,
            acknowledged: 0,
            lost: 0,
            duplicates: 0,
            order_violations: 0,
            error: None,
        }
    }

    /// Why this pair misses the goal (connected, nothing lost, duplicated or reordered, direct
    /// where physics allows, else relayed or direct), or `None` when it meets it.
    pub fn goal_miss(&self) -> Option<String> {
        let mut misses = Vec::new();
        if let Some(error) = &self.error {
            misses.push(error.clone());
        }
        if !self.connected {
            misses.push("not connected".to_string());
        }
        if self.lost + self.duplicates + self.order_violations > 0 {
            misses.push(format!(
                "{} lost, {} duplicated, {} out of order",
                self.lost, self.duplicates, self.order_violations
            ));
        }
        match (&self.path, self.direct_possible) {
            (PathOutcome::Direct(_), _) | (PathOutcome::Relayed(_), false) => {}
            (path, _) => misses.push(format!(
                "path {path:?}, expected {}",
                if self.direct_possible {
                    "direct"
                } else {
                    "relayed (or direct)"
                }
            )),
        }
        (!misses.is_empty()).then(|| format!("{} -> {}: {}", self.from, self.to, misses.join("; ")))
    }
}

fn millis<S: serde::Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(duration) => serializer.serialize_f64(duration.as_secs_f64() * 1000.0),
        None => serializer.serialize_none(),
    }
}

/// Runs every ordered pair of `settings.kinds`, `settings.jobs` at a time; `progress` sees each
/// outcome as it comes. Returns the outcomes in matrix order (A's kind, then C's).
pub fn run(settings: &MatrixSettings, progress: impl Fn(&PairOutcome) + Sync) -> Vec<PairOutcome> {
    let pairs: Vec<(NatKind, NatKind)> = settings
        .kinds
        .iter()
        .flat_map(|from| settings.kinds.iter().map(move |to| (*from, *to)))
        .collect();
    let queue = Arc::new(Mutex::new(pairs.into_iter()));
    let outcomes = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..settings.jobs.max(1) {
            scope.spawn(|| loop {
                let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
                let Some((from, to)) = next else { break };
                let outcome = run_pair(settings, from, to);
                progress(&outcome);
                outcomes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(outcome);
            });
        }
    });
    let mut outcomes = outcomes
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    outcomes.sort_by_key(|outcome| (outcome.from, outcome.to));
    outcomes
}

/// Runs one ordered pair in a lab of its own. Never fails: what went wrong is in the outcome.
pub fn run_pair(settings: &MatrixSettings, from: NatKind, to: NatKind) -> PairOutcome {
    let mut outcome = PairOutcome::new(from, to);
    if let Err(error) = measure_pair(settings, &mut outcome) {
        outcome.error = Some(error);
    }
    outcome
}

/// The matrix's topology: a relay host on the public segment, host A behind one NAT kind,
/// host C behind another. Also the figures' (`lab bench`).
pub struct PairLab {
    /// The lab (declare agents after it, so they are dropped first).
    pub lab: Lab,
    /// The relay's host.
    pub relay_host: HostId,
    /// A's host (the sender).
    pub a_host: HostId,
    /// C's host (the receiver).
    pub c_host: HostId,
    /// The relay as a `--relay` argument: `NODEID@HOST:PORT`.
    pub relay_arg: String,
}

impl PairLab {
    /// Builds the lab and starts the relay agent (returned beside the lab).
    pub fn build(
        agent: &std::path::Path,
        from: NatKind,
        to: NatKind,
    ) -> Result<(Self, LabAgent), String> {
        let mut lab = Lab::new().map_err(|error| error.to_string())?;
        let relay_host = lab.add_public_host("relay").map_err(|e| e.to_string())?;
        let a_host = lab.add_host_behind("a", from).map_err(|e| e.to_string())?;
        let c_host = lab.add_host_behind("c", to).map_err(|e| e.to_string())?;
        let relay_ip = lab.host(relay_host).map_err(|e| e.to_string())?.address();
        let relay = LabAgent::start(
            &lab,
            relay_host,
            "relay",
            agent,
            &[
                "--listen".to_string(),
                format!("{relay_ip}:{RELAY_PORT}"),
                "--relay-any".to_string(),
            ],
        )
        .map_err(|error| error.to_string())?;
        let relay_arg = format!("{}@{relay_ip}:{RELAY_PORT}", relay.node());
        Ok((
            Self {
                lab,
                relay_host,
                a_host,
                c_host,
                relay_arg,
            },
            relay,
        ))
    }

    /// Starts an agent on `host` listening on a wildcard address, reachable through the relay.
    pub fn start_node(
        &self,
        agent: &std::path::Path,
        host: HostId,
        name: &str,
    ) -> Result<LabAgent, AgentError> {
        LabAgent::start(
            &self.lab,
            host,
            name,
            agent,
            &[
                "--listen".to_string(),
                "0.0.0.0:0".to_string(),
                "--relay".to_string(),
                self.relay_arg.clone(),
            ],
        )
    }
}

fn measure_pair(settings: &MatrixSettings, outcome: &mut PairOutcome) -> Result<(), String> {
    let (pair, mut relay) = PairLab::build(&settings.agent, outcome.from, outcome.to)?;
    let text = |error: AgentError| error.to_string();
    let mut c = pair
        .start_node(&settings.agent, pair.c_host, "c")
        .map_err(text)?;
    let mut a = pair
        .start_node(&settings.agent, pair.a_host, "a")
        .map_err(text)?;
    let result = exchange(settings, outcome, &mut a, &mut c);
    if let (Err(_), Some(dir)) = (&result, &settings.logs) {
        let dir = dir.join(format!("{}-{}", outcome.from, outcome.to));
        let saved = save_logs(&dir, &pair.lab, [&mut a, &mut c, &mut relay]);
        if let Err(error) = saved {
            tracing::warn!(%error, dir = %dir.display(), "keeping the failed pair's logs");
        }
    }
    result
}

/// Copies each agent's log and the routers' state into `dir`.
fn save_logs<'a>(
    dir: &std::path::Path,
    lab: &Lab,
    agents: impl IntoIterator<Item = &'a mut LabAgent>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for agent in agents {
        let name = agent.name().to_string();
        std::fs::copy(
            agent.process().stderr_path(),
            dir.join(format!("{name}.log")),
        )?;
    }
    std::fs::write(dir.join("routers.txt"), lab.router_state())
}

/// A's sends to C and C's deliveries, into `outcome`.
fn exchange(
    settings: &MatrixSettings,
    outcome: &mut PairOutcome,
    a: &mut LabAgent,
    c: &mut LabAgent,
) -> Result<(), String> {
    let text = |error: AgentError| error.to_string();
    let target = c.address().clone();
    let c_node = c.node().to_string();

    // The first message and a stream at once: the stream is in flight while the connection
    // may go from relayed to direct.
    let started = Instant::now();
    a.send(&target, 1, "first").map_err(text)?;
    a.send(&target, settings.messages, "during").map_err(text)?;
    outcome.sent = 1 + settings.messages;
    a.wait_sent("first", settings.connect_timeout)
        .map_err(text)?;
    outcome.first_ack = Some(started.elapsed());
    outcome.connected = true;
    outcome.acknowledged = 1;
    let mut path_error = None;
    if outcome.direct_possible {
        match wait_for_direct(a, &c_node, settings.direct_timeout) {
            Ok(true) => outcome.direct_after = Some(started.elapsed()),
            Ok(false) => {}
            Err(error) => path_error = Some(error.to_string()),
        }
    }
    a.wait_sent("during", settings.stream_timeout)
        .map_err(text)?;
    outcome.acknowledged += settings.messages;

    a.send(&target, settings.messages, "after").map_err(text)?;
    outcome.sent += settings.messages;
    a.wait_sent("after", settings.stream_timeout)
        .map_err(text)?;
    outcome.acknowledged += settings.messages;
    outcome.path = match path_error {
        Some(error) => PathOutcome::Unknown(error),
        None => match a.path(&c_node) {
            Ok(PathState::Direct(addr)) => PathOutcome::Direct(addr),
            Ok(PathState::Relayed(relay)) => PathOutcome::Relayed(relay),
            Ok(PathState::None) => PathOutcome::None,
            Err(error) => PathOutcome::Unknown(error.to_string()),
        },
    };
    if outcome.direct_after.is_none() {
        if let PathOutcome::Direct(_) = outcome.path {
            outcome.direct_after = Some(started.elapsed());
        }
    }

    let tally = collect(c, a.node(), settings)?;
    let expected = [
        ("first", 1),
        ("during", settings.messages),
        ("after", settings.messages),
    ];
    outcome.lost = expected
        .iter()
        .map(|(tag, count)| tally.lost(a.node(), tag, *count))
        .sum();
    outcome.duplicates = tally.duplicates;
    outcome.order_violations = tally.order_violations;
    Ok(())
}

/// Asks `a` every [`PATH_POLL`] how it reaches `node` until it says directly (`true`) or
/// `timeout` passes (`false`).
pub fn wait_for_direct(
    a: &mut LabAgent,
    node: &str,
    timeout: Duration,
) -> Result<bool, AgentError> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let PathState::Direct(_) = a.path(node)? {
            return Ok(true);
        }
        std::thread::sleep(PATH_POLL);
    }
    Ok(false)
}

/// Reads C's messages from A until every acknowledged one is there (they are printed just
/// after they are acknowledged) or the stream timeout passes.
fn collect(c: &mut LabAgent, from: &str, settings: &MatrixSettings) -> Result<Tally, String> {
    let mut tally = Tally::default();
    let total = 1 + 2 * settings.messages;
    c.receive_until(&mut tally, settings.stream_timeout, |tally| {
        TAGS.iter()
            .map(|tag| tally.received(from, tag))
            .sum::<u64>()
            >= total
    })
    .map_err(|error| error.to_string())?;
    Ok(tally)
}

/// The outcomes as a table: one line per pair.
pub fn table(outcomes: &[PairOutcome]) -> String {
    let mut text = format!(
        "{:<11} {:<11} {:<9} {:<9} {:>10} {:>10} {:>6} {:>5} {:>5}  {}\n",
        "A behind",
        "C behind",
        "connected",
        "path",
        "first ack",
        "direct at",
        "lost",
        "dup",
        "order",
        "note"
    );
    let ms = |value: Option<Duration>| {
        value.map_or("-".to_string(), |d| {
            format!("{:.0} ms", d.as_secs_f64() * 1000.0)
        })
    };
    for outcome in outcomes {
        let path = match &outcome.path {
            PathOutcome::Direct(_) => "direct",
            PathOutcome::Relayed(_) => "relayed",
            PathOutcome::None => "none",
            PathOutcome::Unknown(_) => "unknown",
        };
        let note = match (&outcome.error, &outcome.path) {
            (Some(error), _) => first_line(error),
            (None, PathOutcome::Unknown(reason)) => first_line(reason),
            _ => String::new(),
        };
        text.push_str(&format!(
            "{:<11} {:<11} {:<9} {:<9} {:>10} {:>10} {:>6} {:>5} {:>5}  {}\n",
            outcome.from.name(),
            outcome.to.name(),
            if outcome.connected { "yes" } else { "no" },
            path,
            ms(outcome.first_ack),
            ms(outcome.direct_after),
            outcome.lost,
            outcome.duplicates,
            outcome.order_violations,
            note
        ));
    }
    let direct = outcomes
        .iter()
        .filter(|outcome| matches!(outcome.path, PathOutcome::Direct(_)))
        .count();
    let possible = outcomes
        .iter()
        .filter(|outcome| outcome.direct_possible)
        .count();
    text.push_str(&format!(
        "{direct} of {} pairs direct ({possible} where physics allows)\n",
        outcomes.len()
    ));
    text
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(120).collect()
}

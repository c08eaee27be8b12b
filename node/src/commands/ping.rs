//! `ferry ping`: round trips to a node, like ping(8).

use std::process::ExitCode;
use std::time::Duration;

use ferry::{Node, NodeConfig, PingError};
use tokio::time::MissedTickBehavior;

use crate::cli::PingArgs;
use crate::daemon::shutdown_signal;
use crate::exit;

/// Round-trip statistics over the rounds that got an echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Summary {
    min: Duration,
    avg: Duration,
    p50: Duration,
    max: Duration,
}

/// `None` when no round got an echo. p50 is the nearest-rank median.
fn summarize(samples: &[Duration]) -> Option<Summary> {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let min = *sorted.first()?;
    let max = *sorted.last()?;
    let total: Duration = sorted.iter().sum();
    let count = u32::try_from(sorted.len()).unwrap_or(u32::MAX);
    let p50 = sorted[sorted.len().div_ceil(2) - 1];
    Some(Summary {
        min,
        avg: total / count,
        p50,
        max,
    })
}

fn millis(duration: Duration) -> String {
    format!("{:.3}", duration.as_secs_f64() * 1000.0)
}

/// Pings until `-c` rounds are done or a signal, then prints the statistics.
pub(super) async fn ping(args: PingArgs) -> ExitCode {
    let key = match super::call::identity(args.key.as_deref()) {
        Ok(key) => key,
        Err(error) => {
            eprintln!("ferry ping: {error}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let config = NodeConfig {
        listen: super::ephemeral_listen([args.peer.addr]),
        dial_timeout: args.timeout,
        call_timeout: args.timeout,
        ..NodeConfig::default()
    };
    let node = match Node::bind(key, config).await {
        Ok(node) => node,
        Err(error) => {
            eprintln!("ferry ping: starting node: {error}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let code = ping_rounds(&node, &args).await;
    node.shutdown(Duration::from_millis(200)).await;
    code
}

async fn ping_rounds(node: &Node, args: &PingArgs) -> ExitCode {
    let peer = &args.peer;
    // Connect first: a node that cannot be reached fails at once, and no round counts the dial.
    if let Err(error) = node.connect(peer.id, Some(peer.addr)).await {
        let error = PingError::Unreachable(error);
        eprintln!("ferry ping: {peer}: {error}");
        return ExitCode::from(exit::ping(&error));
    }
    println!("PING {} ({})", peer.id, peer.addr);
    let short = peer.id.short();
    let hints = [peer.addr];
    let signal = shutdown_signal();
    tokio::pin!(signal);
    // tokio refuses a zero period: `-i 0` means rounds back to back, at least 1 ms apart.
    let mut ticker = tokio::time::interval(args.interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sent = 0u64;
    let mut samples = Vec::new();
    let mut last_error = None;
    while args.count.is_none_or(|count| sent < count) {
        tokio::select! {
            _ = &mut signal => break,
            _ = ticker.tick() => {}
        }
        sent += 1;
        let result = tokio::select! {
            _ = &mut signal => break,
            result = node.ping(peer.id, &hints) => result,
        };
        match result {
            Ok(rtt) => {
                println!("reply from {short}: seq={sent} time={} ms", millis(rtt));
                samples.push(rtt);
            }
            Err(PingError::Unsupported) => {
                eprintln!("ferry ping: {peer}: {}", PingError::Unsupported);
                return ExitCode::from(exit::ping(&PingError::Unsupported));
            }
            Err(error) => {
                println!("no reply from {short}: seq={sent}: {error}");
                last_error = Some(error);
            }
        }
    }
    let received = samples.len() as u64;
    let loss = if sent == 0 {
        0.0
    } else {
        100.0 * (sent - received) as f64 / sent as f64
    };
    println!("--- {short} ping statistics ---");
    println!("{sent} sent, {received} received, {loss:.1}% loss");
    if let Some(summary) = summarize(&samples) {
        println!(
            "rtt min/avg/p50/max = {}/{}/{}/{} ms",
            millis(summary.min),
            millis(summary.avg),
            millis(summary.p50),
            millis(summary.max)
        );
    }
    match last_error {
        Some(error) if received == 0 => {
            eprintln!("ferry ping: {peer}: no echo in {sent} rounds: {error}");
            ExitCode::from(exit::ping(&error))
        }
        _ => ExitCode::SUCCESS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn statistics() {
        assert_eq!(summarize(&[]), None);
        let one = summarize(&ms(&[5])).unwrap();
        assert_eq!(
            (one.min, one.avg, one.p50, one.max),
            (ms(&[5])[0], ms(&[5])[0], ms(&[5])[0], ms(&[5])[0])
        );
        let summary = summarize(&ms(&[4, 1, 3, 2])).unwrap();
        assert_eq!(
            [summary.min, summary.avg, summary.p50, summary.max],
            [
                Duration::from_millis(1),
                Duration::from_micros(2500),
                Duration::from_millis(2),
                Duration::from_millis(4)
            ]
        );
        assert_eq!(
            summarize(&ms(&[9, 1, 5])).unwrap().p50,
            Duration::from_millis(5)
        );
    }

    #[test]
    fn milliseconds_with_three_decimals() {
        assert_eq!(millis(Duration::from_micros(1234)), "1.234");
        assert_eq!(millis(Duration::from_millis(20)), "20.000");
    }
}

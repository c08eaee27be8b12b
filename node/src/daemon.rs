//! What `run` and `listen` add to the library's [`ferry_node::server`]: the signals that stop
//! them, how they print what arrives, and `ferry listen --commands`' commands.

use ferry::address::GrantId;
use ferry::Message;
use ferry_node::server::Grants;

/// Resolves on SIGINT or SIGTERM. On unix the handlers are installed by this call, not when the
/// future is first polled: a command calls it before it says it is ready (prints an address), so
/// that a signal from then on stops it cleanly instead of killing it. (Elsewhere tokio installs
/// its Ctrl-C handler at the first poll.) Without handlers (they could not be installed) it never
/// resolves, and a signal acts as it would on any process.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                    one.recv().await;
                }
                (Err(_), Err(_)) => std::future::pending().await,
            }
        }
    }
    #[cfg(not(unix))]
    {
        let interrupt = tokio::signal::ctrl_c();
        async move {
            if interrupt.await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Prints the messages, one line each, and flushes: only then may they be acknowledged.
pub(crate) fn print_batch(batch: &[Message], json: bool) -> std::io::Result<()> {
    use std::io::Write as _;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for message in batch {
        let text = String::from_utf8_lossy(message.payload());
        if json {
            let mut line = serde_json::json!({
                "from": message.from().to_string(),
                "payload": text,
            });
            if let Some(id) = message.id() {
                line["id"] = id.into();
            }
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{text}")?;
        }
    }
    out.flush()
}

/// Reads `ferry listen --commands`' commands from standard input until it ends, one per line
/// (`grant [DURATION]`, `revoke GRANT`), and answers each on standard output; a wrong one is
/// reported on standard error and skipped.
///
/// Standard input is read on a thread of its own, not with `tokio::io::stdin`: a read of that
/// cannot be cancelled, and the runtime would wait for it at exit, so that a signal would not
/// stop the process until a line or the end of input came. The thread dies with the process.
pub(crate) async fn read_commands(grants: &Grants) {
    let (lines, mut next) = tokio::sync::mpsc::channel::<String>(16);
    let reader = std::thread::Builder::new()
        .name("ferry-commands".into())
        .spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { return };
                if lines.blocking_send(line).is_err() {
                    return;
                }
            }
        });
    if let Err(error) = reader {
        eprintln!("ferry: cannot read commands: {error}");
        return;
    }
    while let Some(line) = next.recv().await {
        if let Err(error) = command(grants, &line).await {
            eprintln!("ferry: {error:#}");
        }
    }
}

/// One command: `grant [DURATION]` prints `grant GRANT ADDRESS`, `revoke GRANT` prints
/// `revoked GRANT` once the revocation is stored.
async fn command(grants: &Grants, line: &str) -> anyhow::Result<()> {
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (None, _, _) => Ok(()),
        (Some("grant"), after, None) => {
            let expires = match after {
                Some(after) => {
                    let after = ferry::duration::parse_duration(after)
                        .map_err(|error| anyhow::anyhow!("grant: {error}"))?;
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |elapsed| elapsed.as_secs());
                    Some(now.saturating_add(after.as_secs().max(1)))
                }
                None => None,
            };
            let address = grants.grant(expires)?;
            print_line(&format!("grant {} {address}", address.grant()))
        }
        (Some("revoke"), Some(grant), None) => {
            let grant: GrantId = grant
                .parse()
                .map_err(|error| anyhow::anyhow!("revoke: a grant is 16 hex digits: {error}"))?;
            grants.revoke(grant).await?;
            print_line(&format!("revoked {grant}"))
        }
        _ => anyhow::bail!("unknown command {line:?} (grant [DURATION] | revoke GRANT)"),
    }
}

fn print_line(line: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

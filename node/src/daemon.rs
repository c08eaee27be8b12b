//! What `run` and `listen` add to the library's [`ferry_node::server`]: the signals that stop
//! them, and how they print what arrives.

use ferry::Message;

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
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

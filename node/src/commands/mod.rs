//! One module per command group; [`run`] dispatches.

mod call;
mod keys;
mod ping;
mod run;
mod send;

use std::io::Read as _;
use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::config::ConfigFileError;
use crate::exit;

/// Runs the command and returns the process exit code.
pub(crate) async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Keygen { out } => keys::keygen(out),
        Command::Id { key } => keys::id(key),
        Command::Run { node } => run::run(node).await,
        Command::Listen { node, json } => run::listen(node, json).await,
        Command::Send {
            address,
            message,
            timeout,
            via,
        } => return send::send(&address, message, timeout, via).await,
        Command::Call(args) => return call::call(args).await,
        Command::Ping(args) => return ping::ping(args).await,
        Command::ConfigExample => {
            print!("{}", crate::config::example());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ferry: {error:#}");
            if error.downcast_ref::<ConfigFileError>().is_some() {
                ExitCode::from(exit::INPUT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The message of `send` and `call`: the argument, or standard input for `-` or none.
fn read_message(message: Option<String>) -> std::io::Result<Vec<u8>> {
    match message.as_deref() {
        Some("-") | None => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            Ok(buf)
        }
        Some(text) => Ok(text.as_bytes().to_vec()),
    }
}

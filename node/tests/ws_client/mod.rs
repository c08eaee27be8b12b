//! A browser's side of the gateway's WebSocket protocol, for the gateway and cluster tests:
//! connect with a query, read the next frame (heartbeats skipped), send a frame, ask and wait
//! for the answer.
#![allow(dead_code, clippy::unwrap_used)] // shared by several test binaries; tests unwrap

use std::net::SocketAddr;
use std::time::Duration;

use ferry_node::gateway::protocol::{self, Encoded, Received};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for a frame.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// A client's WebSocket to the gateway.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects with `query` and returns the socket and the welcome.
pub(crate) async fn connect(addr: SocketAddr, query: &str) -> (Ws, Value) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?{query}"))
        .await
        .unwrap();
    let welcome = next(&mut ws).await;
    assert_eq!(welcome.kind(), "welcome", "{welcome:?}");
    (ws, welcome.header)
}

/// The next protocol frame (heartbeats skipped).
pub(crate) async fn next(ws: &mut Ws) -> Received {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("the connection is open")
            .unwrap();
        let encoded = match message {
            Message::Text(text) => Encoded::Text(text.as_str().to_owned()),
            Message::Binary(bytes) => Encoded::Binary(bytes.to_vec()),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => continue,
        };
        let received = protocol::read_server_frame(&encoded).unwrap();
        if received.kind() != "heartbeat" {
            return received;
        }
    }
}

/// Sends `frame` as a text frame.
pub(crate) async fn put(ws: &mut Ws, frame: Value) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
}

/// Sends a request and returns its answer (other frames arriving meanwhile are returned too).
pub(crate) async fn ask(ws: &mut Ws, frame: Value) -> (Received, Vec<Received>) {
    let reference = frame["ref"].as_u64().unwrap();
    put(ws, frame).await;
    let mut others = Vec::new();
    loop {
        let received = next(ws).await;
        if received.header["ref"].as_u64() == Some(reference) {
            return (received, others);
        }
        others.push(received);
    }
}

/// The payload of a received message, as JSON.
pub(crate) fn data_json(received: &Received) -> Value {
    serde_json::from_slice(received.data.as_ref().unwrap()).unwrap()
}

//! The gateway figure's clients over WebTransport (for the browser figure's memory and fan-out
//! rows): web-transport-quinn sessions standing in for browsers, each with its control stream,
//! joined to the channel, reading every delivery stream and acknowledging as ferry.js does
//! (docs/GATEWAY.md §13). One QUIC endpoint (one UDP socket) carries all of them.

use anyhow::{anyhow, bail, Context, Result};
use ferry_node::gateway::webtransport::{FRAME_TEXT, STREAM_CONTROL, STREAM_DELIVERIES};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use web_transport_quinn::{Client, RecvStream, SendStream, Session};

use super::gateway::{
    address_and_user, connect_in_batches, Acks, Incoming, Received, CHANNEL, CONNECT_WAIT,
};

/// Sessions connecting at once: the gateway drops a QUIC connection whose handshakes, CONNECT
/// and control stream take more than 10 s (`gateway_webtransport_handshake_timeout`), and
/// hundreds of TLS handshakes at once on two loaded cores take longer than that (500 at once
/// failed so).
const CONNECT_BATCH: usize = 100;

/// Connects `n` WebTransport sessions to the gateway whose WebSocket URL is `url`, each joined
/// to the channel and reading its messages into `events`; the addresses and users of the first
/// sessions (as many as the gateway figure sends to).
pub(crate) async fn connect(
    url: &str,
    n: usize,
    events: mpsc::UnboundedSender<Received>,
) -> Result<Vec<(String, String)>> {
    let http = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.strip_suffix("/ws"))
        .ok_or_else(|| anyhow!("not a ws://HOST:PORT/ws URL: {url}"))?;
    let info = endpoint_info(http).await?;
    let session_url = info["url"]
        .as_str()
        .ok_or_else(|| anyhow!("no url in {info}"))?
        .to_owned();
    let hashes = info["hashes"]
        .as_array()
        .ok_or_else(|| anyhow!("no hashes in {info}"))?
        .iter()
        .map(|hash| {
            let value = hash["value"].as_str().unwrap_or_default();
            data_encoding::BASE64
                .decode(value.as_bytes())
                .map_err(|e| anyhow!("hash {value}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    connect_in_batches(n, CONNECT_BATCH, || {
        let (hashes, events) = (hashes.clone(), events.clone());
        let url = session_url.clone();
        async move {
            // A client (a QUIC endpoint, a UDP socket) per session, as every browser has its
            // own: one shared by all sessions put every packet of every session through one
            // endpoint task, a queue no browser has (the fan-out tail measured that queue).
            let client = web_transport_quinn::ClientBuilder::new()
                .with_server_certificate_hashes(hashes)
                .context("the WebTransport client")?;
            let (session, control, welcome) = join(&client, &url).await?;
            tokio::spawn(read_messages(session, control, events));
            anyhow::Ok(address_and_user(&welcome))
        }
    })
    .await
}

/// `GET /webtransport` on the gateway's HTTP address.
async fn endpoint_info(http: &str) -> Result<Value> {
    let mut stream = tokio::net::TcpStream::connect(http).await?;
    let request =
        format!("GET /webtransport HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(CONNECT_WAIT, stream.read_to_string(&mut response)).await??;
    if !response.starts_with("HTTP/1.1 200") {
        bail!("GET /webtransport answered {response}");
    }
    let (_, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no body in {response}"))?;
    Ok(serde_json::from_str(body)?)
}

/// A session with its control stream, welcomed and joined to the channel; the welcome.
async fn join(client: &Client, url: &str) -> Result<(Session, SendStream, Value)> {
    let session = client.connect(url::Url::parse(url)?).await?;
    let (mut send, mut recv) = session.open_bi().await?;
    send.write_all(&[STREAM_CONTROL]).await?;
    let welcome = next_frame(&mut recv).await?;
    if welcome["type"] != "welcome" {
        bail!("the first frame was {welcome}");
    }
    write_frame(
        &mut send,
        &json!({"type": "join", "ref": 1, "channel": CHANNEL}),
    )
    .await?;
    let joined = next_frame(&mut recv).await?;
    if joined["type"] != "ok" {
        bail!("join answered {joined}");
    }
    // The control stream's later frames (heartbeats) are read and dropped.
    tokio::spawn(async move { while read_frame(&mut recv).await.is_ok() {} });
    Ok((session, send, welcome))
}

async fn write_frame(send: &mut SendStream, value: &Value) -> Result<()> {
    let text = value.to_string();
    let mut frame = vec![FRAME_TEXT];
    frame.extend_from_slice(&u32::try_from(text.len())?.to_be_bytes());
    frame.extend_from_slice(text.as_bytes());
    send.write_all(&frame).await?;
    Ok(())
}

/// The next frame's body (text frames only: the gateway sends these clients nothing else).
async fn read_frame(recv: &mut RecvStream) -> Result<Vec<u8>> {
    let mut head = [0u8; 5];
    recv.read_exact(&mut head).await?;
    let [kind, length @ ..] = head;
    if kind != FRAME_TEXT {
        bail!("frame kind {kind}");
    }
    let mut body = vec![0u8; u32::from_be_bytes(length) as usize];
    recv.read_exact(&mut body).await?;
    Ok(body)
}

/// The next frame but heartbeats, as JSON.
async fn next_frame(recv: &mut RecvStream) -> Result<Value> {
    loop {
        let frame: Value = serde_json::from_slice(&read_frame(recv).await?)?;
        if frame["type"] != "heartbeat" {
            return Ok(frame);
        }
    }
}

/// One session's reading: every delivery stream's messages are timed as they are parsed, and
/// the highest id is acknowledged on the control stream (`Acks`) 50 ms after the first
/// unacknowledged one, as ferry.js does (the highest, not the contiguous cursor of §13.6: these
/// clients never resume, and each figure's messages come from one source).
async fn read_messages(
    session: Session,
    mut control: SendStream,
    events: mpsc::UnboundedSender<Received>,
) {
    let (ids, mut received_ids) = mpsc::unbounded_channel::<u64>();
    let accepting = session.clone();
    tokio::spawn(async move {
        while let Ok(mut recv) = accepting.accept_uni().await {
            let (events, ids) = (events.clone(), ids.clone());
            tokio::spawn(async move {
                let mut kind = [0u8; 1];
                if recv.read_exact(&mut kind).await.is_err() || kind[0] != STREAM_DELIVERIES {
                    return;
                }
                while let Ok(body) = read_frame(&mut recv).await {
                    let Ok(frame) = serde_json::from_slice::<Incoming>(&body) else {
                        continue;
                    };
                    if let Some(id) = frame.report(&events) {
                        let _ = ids.send(id);
                    }
                }
            });
        }
    });
    let mut acks = Acks::default();
    loop {
        tokio::select! {
            id = received_ids.recv() => {
                let Some(id) = id else { return };
                acks.saw(id);
            }
            id = acks.due() => {
                if write_frame(&mut control, &json!({"type": "ack", "id": id})).await.is_err() {
                    return;
                }
            }
        }
    }
}

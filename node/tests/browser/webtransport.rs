//! The JS client over WebTransport in Chromium with QUIC enabled (docs/GATEWAY.md §13): the
//! page's client picks WebTransport when the gateway offers it, talks with a Rust peer both
//! ways and calls its service; without the endpoint it uses WebSocket.
//!
//! Nothing special is needed in Chromium beyond not passing `--disable-quic`: the test page is
//! served from `http://127.0.0.1:PORT`, a secure context (so `WebTransport` exists), and the
//! gateway's self-made certificate is pinned with `serverCertificateHashes` from
//! `GET /webtransport`.

use bytes::Bytes;
use serde_json::json;

use super::scene::{numbers, Scene};
use super::{service, shout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_talks_to_a_rust_peer_over_webtransport() {
    let scene = Scene::with_quic(true, |config, sink| {
        config.client_config["shout"] = json!(service(sink, "shout"));
    })
    .await;
    let _shout = shout(&scene.sink);

    let connected = scene
        .run(
            "window.client = await member()
             return {transport: client.transport, address: client.address,
                     info: await (await fetch('/webtransport')).json()}",
        )
        .await;
    assert_eq!(connected["transport"], "webtransport", "{connected}");
    let info = &connected["info"];
    assert_eq!(info["protocol"], "ferry-gateway/1+webtransport", "{info}");
    assert_eq!(info["hashes"].as_array().unwrap().len(), 2, "{info}");
    assert!(
        info["url"]
            .as_str()
            .unwrap()
            .starts_with("https://127.0.0.1:"),
        "{info}"
    );

    // The page → the Rust peer, unawaited, in order; then a call to its service.
    let reply = scene
        .run(
            "const sends = []
             for (let n = 0; n < 50; n++) sends.push(client.send(client.config.sink, {n}))
             await Promise.all(sends)
             await client.send(client.config.sink, {end: true})
             return await client.call(client.config.shout, 'hi', {timeout: 5000})",
        )
        .await;
    assert_eq!(reply, json!("HI"));
    let received = numbers(&scene.received_until(br#"{"end":true}"#).await);
    assert_eq!(received, (0..50).collect::<Vec<u64>>());

    // The Rust peer → the page, on the gateway's delivery streams.
    let address: ferry::Address = connected["address"].as_str().unwrap().parse().unwrap();
    for n in 0..20u64 {
        scene
            .sink
            .send_bytes(&address, Bytes::from(format!(r#"{{"n":{n}}}"#)))
            .await
            .unwrap();
    }
    let got = scene
        .run(
            "if (!await until(() => client.got.length >= 20)) throw new Error('missing messages')
             return {numbers: client.got.map(m => m.data.n), transport: client.transport,
                     closes: client.closes}",
        )
        .await;
    assert_eq!(
        got,
        json!({"numbers": (0..20).collect::<Vec<u64>>(), "transport": "webtransport", "closes": []})
    );
    scene.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_endpoint_the_page_uses_websocket() {
    // The browser has WebTransport; the gateway serves none (`--webtransport off`):
    // `GET /webtransport` is 404, and the client goes straight to WebSocket.
    let scene = Scene::with_quic(false, |_, _| {}).await;
    let connected = scene
        .run(
            "const started = Date.now()
             window.client = await member()
             const fast = Date.now() - started < 3000 // not after the WebTransport timeout
             await client.send(client.config.sink, {n: 1})
             await client.send(client.config.sink, {end: true})
             return {transport: client.transport, hasWebTransport: typeof WebTransport,
                     status: (await fetch('/webtransport')).status,
                     fast}",
        )
        .await;
    assert_eq!(
        connected,
        json!({"transport": "websocket", "hasWebTransport": "function", "status": 404, "fast": true})
    );
    assert_eq!(
        numbers(&scene.received_until(br#"{"end":true}"#).await),
        [1]
    );
    scene.finish().await;
}

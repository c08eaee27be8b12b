//! The JS client over WebTransport in Chromium with QUIC enabled (docs/GATEWAY.md §13): the
//! page's client picks WebTransport when the gateway offers it, talks with a Rust peer both
//! ways and calls its service; without the endpoint it uses WebSocket.
//!
//! Nothing special is needed in Chromium beyond not passing `--disable-quic`: the test page is
//! served from `http://127.0.0.1:PORT`, a secure context (so `WebTransport` exists), and the
//! gateway's self-made certificate is pinned with `serverCertificateHashes` from
//! `GET /webtransport`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_node::gateway::webtransport;
use ferry_testkit::{files, wait};
use serde_json::{json, Value};

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

/// A scene whose sink serves `files` (ferry_testkit::files, behind `gate`), at
/// `client.config.files`.
async fn files_scene(gate: Option<Arc<files::Gate>>) -> (Scene, ferry::ServiceHandle) {
    let scene = Scene::with_quic(true, |config, sink| {
        config.client_config["files"] = json!(service(sink, "files"));
    })
    .await;
    let service = files::serve(&scene.sink, "files", gate);
    (scene, service)
}

/// Issue 14.5: a page uploads 8 MB to a Rust service on a data stream of its own (a Blob, read
/// as fast as the network takes it) and downloads 8 MB back into a `ReadableStream`; the
/// service hashes what it got, the page hashes what it got, and both sides' progress events
/// come in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_uploads_and_downloads_8_mb_on_data_streams() {
    let (scene, _files) = files_scene(None).await;
    let size = 8 << 20;
    let got = scene
        .run(
            "window.client = await member()
             const size = 8 << 20
             const bytes = new Uint8Array(size)
             for (let i = 0; i < size; i++) bytes[i] = i % 251
             const hex = async data => [...new Uint8Array(await crypto.subtle.digest('SHA-256', data))]
               .map(b => b.toString(16).padStart(2, '0')).join('')
             const ordered = list => list.every((v, i) => i === 0 || v >= list[i - 1])
             const sent = []
             let started = performance.now()
             const up = await client.sendData(client.config.files, new Blob([bytes]),
               {request: {op: 'upload'}, onProgress: p => sent.push(p.sent)})
             const upMs = performance.now() - started
             const received = []
             started = performance.now()
             const {readable, done} = client.recvData(client.config.files,
               {request: {op: 'download', bytes: size}, onProgress: p => received.push(p.received)})
             const got = new Uint8Array(size)
             let at = 0
             for (const reader = readable.getReader(); ;) {
               const {value, done: end} = await reader.read()
               if (end) break
               if (at + value.length > size) throw new Error('more than asked for')
               got.set(value, at)
               at += value.length
             }
             const down = await done
             const downMs = performance.now() - started
             let same = at === size
             for (let i = 0; same && i < size; i++) same = got[i] === i % 251
             return {transport: client.transport, expected: await hex(bytes),
                     up: up.reply, upSent: up.sent, upEvents: sent.length, upLast: sent.at(-1),
                     upOrdered: ordered(sent), down: down.reply, downReceived: down.received,
                     downHash: await hex(got), same, downEvents: received.length,
                     downLast: received.at(-1), downOrdered: ordered(received), upMs, downMs}",
        )
        .await;
    let expected = files::sha256_hex(&files::pattern(0, size));
    assert_eq!(got["transport"], "webtransport", "{got}");
    assert_eq!(got["expected"], expected.as_str());
    assert_eq!(
        got["up"],
        json!({"bytes": size, "sha256": expected}),
        "{got}"
    );
    assert_eq!(got["upSent"], size);
    assert_eq!(got["upLast"], size);
    assert_eq!(got["upOrdered"], true);
    assert!(got["upEvents"].as_u64().unwrap() > 8, "{got}");
    assert_eq!(
        got["down"],
        json!({"bytes": size, "sha256": expected}),
        "{got}"
    );
    assert_eq!(got["downReceived"], size);
    assert_eq!(got["downHash"], expected.as_str());
    assert_eq!(got["same"], true);
    assert_eq!(got["downLast"], size);
    assert_eq!(got["downOrdered"], true);
    assert!(got["downEvents"].as_u64().unwrap() > 8, "{got}");
    let rate = |ms: &Value| size as f64 / 1e6 / (ms.as_f64().unwrap() / 1000.0);
    eprintln!(
        "8 MB over data streams: upload {:.1} MB/s, download {:.1} MB/s",
        rate(&got["upMs"]),
        rate(&got["downMs"])
    );
    let stats = scene.site.handle.stats();
    assert_eq!(stats.webtransport_data_streams, 2);
    assert!(
        stats.webtransport_data_buffered_peak <= 64 * 1024,
        "{stats:?}"
    );
    scene.finish().await;
}

/// Backpressure from a slow Rust service to the page: the service stops reading after 1 MiB;
/// the gateway passes on only what the service's stream takes (its QUIC window) and holds at
/// most one piece, and the page's upload stops short of its end until the service reads on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_service_holds_the_pages_upload_back() {
    let gate = files::Gate::pausing_after(1 << 20);
    let (scene, _files) = files_scene(Some(gate.clone())).await;
    let size: u64 = 24 << 20;
    scene
        .run(
            "window.client = await member()
             const size = 24 << 20
             const bytes = new Uint8Array(size)
             for (let i = 0; i < size; i++) bytes[i] = i % 251
             window.sent = 0
             window.upload = client.sendData(client.config.files, new Blob([bytes]),
               {request: {op: 'upload'}, onProgress: p => { window.sent = p.sent }})
               .then(answer => answer.reply, error => ({error: error.code}))",
        )
        .await;
    // The service's stream window (4 MiB, the node's default) fills behind what it read.
    let stats = || scene.site.handle.stats();
    wait::wait_for_within("the upload to stall", Duration::from_secs(60), || {
        let s = stats();
        s.webtransport_data_buffered > 0
            && s.webtransport_data_bytes_in >= gate.read.load(Ordering::Relaxed) + (3 << 20)
    })
    .await;
    let read = gate.read.load(Ordering::Relaxed);
    let s = stats();
    // The service's stream window, and a piece its conversation may have read ahead.
    assert!(
        s.webtransport_data_bytes_in <= read + (4 << 20) + 2 * 64 * 1024,
        "the gateway passed on {} bytes to a service that read {read}",
        s.webtransport_data_bytes_in
    );
    assert!(s.webtransport_data_buffered_peak <= 64 * 1024, "{s:?}");
    let sent = scene.run("return window.sent").await.as_u64().unwrap();
    eprintln!(
        "stalled: the service read {read} B, the gateway passed on {} B, the page's upload \
         is at {sent} B of {size}",
        s.webtransport_data_bytes_in
    );
    assert!(
        sent < size,
        "the page wrote everything: nothing held it back"
    );
    gate.resume();
    let reply = scene.run("return await window.upload").await;
    assert_eq!(
        reply,
        json!({"bytes": size, "sha256": files::sha256_hex(&files::pattern(0, size as usize))})
    );
    scene.finish().await;
}

/// The example page (node/examples/playground/files.html) against the files service: a
/// download and an upload, each checked by its hash, with their progress bars full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_files_example_page_downloads_and_uploads() {
    let (scene, _files) = files_scene(None).await;
    let url = format!("{}files.html", scene.site.url());
    scene.with(move |browser| browser.open(&url)).await;
    let page = scene
        .run(
            "const log = () => document.querySelector('#log').textContent
             const wait = async text => {
               const end = Date.now() + 60000
               while (!log().includes(text)) {
                 if (Date.now() > end) throw new Error(`no ${text} in ${log()}`)
                 await new Promise(resolve => setTimeout(resolve, 20))
               }
             }
             await wait('connected over')
             document.querySelector('#size').value = '3'
             document.querySelector('#download').click()
             await wait('downloaded')
             document.querySelector('#upload').click() // no file chosen: 4 MiB of zeros
             await wait('uploaded')
             return {log: log(), down: document.querySelector('#down').value,
                     up: document.querySelector('#up').value}",
        )
        .await;
    let log = page["log"].as_str().unwrap();
    assert!(log.contains("connected over webtransport"), "{log}");
    assert_eq!(log.matches("the hash matches").count(), 2, "{log}");
    assert_eq!(page["down"], 1.0, "{page}");
    assert_eq!(page["up"], 1.0, "{page}");
    scene.finish().await;
}

/// A Rust peer sends 8 MB to a page's session (`send_to_session`): the page's `onData`
/// handler reads them from a `ReadableStream`, hashes them, and its answer is the peer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_peer_sends_8_mb_into_a_page() {
    let scene = Scene::with_quic(true, |_, _| {}).await;
    let address = scene
        .run(
            "window.client = await member()
             window.incoming = []
             client.onData(async (meta, readable) => {
               const pieces = []
               let bytes = 0
               for (const reader = readable.getReader(); ;) {
                 const {value, done} = await reader.read()
                 if (done) break
                 pieces.push(value)
                 bytes += value.length
               }
               const digest = await crypto.subtle.digest('SHA-256', await new Blob(pieces).arrayBuffer())
               const sha256 = [...new Uint8Array(digest)].map(b => b.toString(16).padStart(2, '0')).join('')
               window.incoming.push({meta: meta.data, from: meta.from, bytes})
               return {bytes, sha256}
             })
             return client.address",
        )
        .await;
    let address: ferry::Address = address.as_str().unwrap().parse().unwrap();
    let data = files::pattern(0, 8 << 20);
    let started = std::time::Instant::now();
    let answer =
        webtransport::send_to_session(&scene.sink, &address, br#"{"name":"big.bin"}"#, &data[..])
            .await
            .unwrap();
    eprintln!(
        "8 MB from a Rust peer into the page: {:.1} MB/s",
        8.388608 / started.elapsed().as_secs_f64()
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&answer).unwrap(),
        json!({"bytes": 8 << 20, "sha256": files::sha256_hex(&data)})
    );
    let seen = scene.run("return window.incoming").await;
    assert_eq!(
        seen,
        json!([{"meta": {"name": "big.bin"}, "from": scene.sink.id().to_string(), "bytes": 8 << 20}])
    );
    scene.finish().await;
}

//! The JS client in a real browser: headless Debian Chromium driven by chromedriver over
//! WebDriver (`ferry_testkit::webdriver`), loading pages served by the gateway (`scene.rs`). Sessions
//! exchange messages with each other, Rust peers and the CLI; each promise of
//! docs/GATEWAY.md §11 is tried where it broke: unawaited sends across rate-limit closes, an
//! oversized send, unawaited channel publishes, a connection that goes silent (`proxy.rs`),
//! the browser going offline, refused connections, and the values that cross the boundary.
//!
//! Chromium and chromedriver must be installed (`scripts/test.sh` installs Debian's
//! `chromium` and `chromium-driver` when missing). Without them these tests FAIL: they never
//! pass by skipping.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod proxy;
mod scene;
mod webtransport;

use std::time::Duration;

use bytes::Bytes;
use ferry::{Node, ServiceOptions};
use ferry_node::gateway::{self, AuthConfig, GatewayConfig, StaticToken};
use serde_json::{json, Value};

use proxy::Proxies;
use scene::{numbers, Scene, Site, Transport};

/// Serves the README's service on `node`: `ferry call NODE/shout hello` answers HELLO.
fn shout(node: &Node) -> ferry::ServiceHandle {
    node.serve(
        "shout",
        ServiceOptions::default(),
        |mut conversation| async move {
            if let Ok(text) = conversation.recv_obj::<String>().await {
                let _ = conversation.reply(&text.to_uppercase()).await;
            }
        },
    )
    .unwrap()
}

fn service(node: &Node, name: &str) -> String {
    format!("{}@{}/{name}", node.id(), node.local_addr())
}

async fn browsers_talk_through_the_gateway(transport: Transport) {
    let scene = Scene::over(transport, |config, sink| {
        config.client_config["peer"] = json!(sink.inbox().address().to_string());
        config.client_config["shout"] = json!(service(sink, "shout"));
        config.client_config["silent"] = json!(service(sink, "silent"));
    })
    .await;
    let _shout = shout(&scene.sink);
    let _silent = scene
        .sink
        .serve(
            "silent",
            ServiceOptions::default(),
            |conversation| async move {
                // Never answers: holds the conversation until the node stops.
                std::future::pending::<()>().await;
                drop(conversation);
            },
        )
        .unwrap();

    // Two tabs, two sessions.
    let url = scene.page_url(scene.site.addr);
    let tabs = scene
        .with(move |b| {
            let tab_a = b.window();
            let a = b.run("window.client = await member(); return client.address");
            let tab_b = b.new_window();
            b.switch(&tab_b);
            b.open(&url);
            let bb = b.run("window.client = await member(); return client.address");
            [
                tab_a,
                tab_b,
                a.as_str().unwrap().to_owned(),
                bb.as_str().unwrap().to_owned(),
            ]
        })
        .await;
    let [tab_a, tab_b, address_a, address_b] = tabs;
    assert_ne!(address_a, address_b);

    // A → B, and B answers to the message's `from`.
    let got = {
        let (tab_a, tab_b, address_b) = (tab_a.clone(), tab_b.clone(), address_b.clone());
        scene
            .with(move |b| {
                b.switch(&tab_a);
                b.run(&format!(
                    "await client.send({address_b:?}, {{hello: 'from A'}}); return true"
                ));
                b.switch(&tab_b);
                let got = b.run(
                    "await until(() => client.got.length >= 1);
                     await client.send(client.got[0].from, {reply: 'from B'});
                     return client.got.map(m => m.data)",
                );
                b.switch(&tab_a);
                let back = b.run(
                    "await until(() => client.got.length >= 1); return client.got.map(m => m.data)",
                );
                json!([got, back])
            })
            .await
    };
    assert_eq!(got[0][0], json!({"hello": "from A"}));
    assert_eq!(got[1][0], json!({"reply": "from B"}));

    // A calls the Rust service as `ferry call` does; a call to a silent one times out.
    let calls = {
        let tab_a = tab_a.clone();
        scene
            .with(move |b| {
                b.switch(&tab_a);
                let reply =
                    b.run("return await client.call(client.config.shout, 'hi', {timeout: 5000})");
                let timeout = b.fails("await client.call(client.config.silent, 1, {timeout: 500})");
                let exclusive = b.fails("await client.mailbox.receive({timeout: 10})");
                json!([reply, timeout, exclusive])
            })
            .await
    };
    assert_eq!(calls, json!(["HI", "timeout", "mailbox_has_handler"]));

    // The Rust peer → B, and B → the peer.
    let b_address: ferry::Address = address_b.parse().unwrap();
    scene
        .sink
        .send_bytes(&b_address, Bytes::from_static(br#"{"from":"rust"}"#))
        .await
        .unwrap();
    let got = {
        let tab_b = tab_b.clone();
        scene
            .with(move |b| {
                b.switch(&tab_b);
                b.run(
                    "await until(() => client.got.length >= 2);
                     await client.send(client.config.peer, {to: 'rust'});
                     return client.got.map(m => m.data)",
                )
            })
            .await
    };
    assert_eq!(got[1], json!({"from": "rust"}));
    let inbox = scene.sink.inbox();
    let message = inbox.recv_timeout(Duration::from_secs(10)).await.unwrap();
    assert_eq!(message.payload().as_ref(), br#"{"to":"rust"}"#);

    // B drops its connection. Meanwhile A sends three messages to B, and B sends one to the
    // peer (queued in the tab). B reconnects: it gets the three in order, once, and its send
    // goes out; the session (and address) is the same and recovery is complete.
    let offline = {
        let (tab_a, tab_b, address_b) = (tab_a.clone(), tab_b.clone(), address_b.clone());
        scene
            .with(move |b| {
                b.switch(&tab_b);
                b.run("client.disconnect(); return client.state");
                b.switch(&tab_a);
                b.run(&format!(
                    "for (let n = 0; n < 3; n++) await client.send({address_b:?}, {{offline: n}});
                     return true"
                ));
                b.switch(&tab_b);
                let queued = b.run(
                    "window.sent = client.send(client.config.peer, {queued: 'while offline'});
                     return client.state",
                );
                b.run("await client.reconnect(); await window.sent; return true");
                let got = b.run(
                    "await until(() => client.got.length >= 5);
                     return client.got.map(m => ({id: m.id, data: m.data}))",
                );
                let status = b.run(
                    "return {address: client.address, resumed: client.resumed, recovered: client.recovered, state: client.state}",
                );
                json!([queued, got, status])
            })
            .await
    };
    assert_eq!(offline[0], "offline");
    let got = offline[1].as_array().unwrap();
    assert_eq!(got.len(), 5, "{got:?}");
    let data: Vec<&Value> = got[2..].iter().map(|m| &m["data"]).collect();
    assert_eq!(
        data,
        [
            &json!({"offline": 0}),
            &json!({"offline": 1}),
            &json!({"offline": 2})
        ]
    );
    let ids: Vec<u64> = got.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(offline[2]["address"], address_b.as_str());
    assert_eq!(offline[2]["resumed"], true);
    assert_eq!(offline[2]["recovered"], true);
    assert_eq!(offline[2]["state"], "open");
    let message = inbox.recv_timeout(Duration::from_secs(10)).await.unwrap();
    assert_eq!(message.payload().as_ref(), br#"{"queued":"while offline"}"#);

    // Channels are refused by default.
    let join = scene
        .with(move |b| {
            b.switch(&tab_a);
            b.fails("await client.join('lobby')")
        })
        .await;
    assert_eq!(join, "forbidden");
    scene.finish().await;
}

/// 400 sends made without awaiting each, while the gateway closes the connection for its rate
/// limit: every one reaches the peer once, in the order made.
async fn unawaited_sends_across_rate_limit_closes_arrive_once_in_order(transport: Transport) {
    let scene = Scene::over(transport, |config, _| {
        config.limits.rate_limit = 100;
        config.limits.rate_window = Duration::from_secs(1);
    })
    .await;
    let outcome = scene
        .run(
            "const client = await member()
             const sends = []
             for (let n = 0; n < 400; n++) {
               sends.push(client.send(client.config.sink, {n}))
               // A burst past the rate limit on the client's own socket: the gateway closes
               // the connection (4029) with sends in flight.
               if (n === 200) for (let k = 0; k < 150; k++) client._ws.send('{\"type\":\"ack\",\"id\":0}')
             }
             const results = await Promise.all(sends.map(send => settled(send, 60000)))
             await client.send(client.config.sink, {end: true})
             return {closes: client.closes,
                     unsettled: results.filter(r => r === 'pending' || 'error' in r).length}",
        )
        .await;
    let received = numbers(&scene.received_until(br#"{"end":true}"#).await);
    assert_eq!(received, (0..400).collect::<Vec<u64>>());
    assert_eq!(outcome["unsettled"], 0, "{outcome}");
    assert!(
        outcome["closes"].as_array().unwrap().contains(&json!(4029)),
        "the burst did not get the connection closed: {outcome}"
    );
    scene.finish().await;
}

/// A send larger than the gateway takes is refused at once, without closing the connection,
/// and the next send goes out.
async fn an_oversized_send_is_refused_and_the_next_one_goes_out(transport: Transport) {
    let scene = Scene::over(transport, |config, _| config.limits.max_message_size = 8192).await;
    let outcome = scene
        .run(
            "const client = await member()
             const big = settled(client.send(client.config.sink, {big: 'x'.repeat(20000)}), 5000)
             const small = settled(client.send(client.config.sink, {n: 1}), 5000)
             const outcome = {big: await big, small: await small, closes: [...client.closes]}
             await settled(client.send(client.config.sink, {end: true}), 5000)
             return outcome",
        )
        .await;
    assert_eq!(outcome["big"], json!({"error": "too_large"}), "{outcome}");
    assert_eq!(outcome["small"], json!({"ok": null}), "{outcome}");
    assert_eq!(outcome["closes"], json!([]), "{outcome}");
    let received = numbers(&scene.received_until(br#"{"end":true}"#).await);
    assert_eq!(received, [1]);
    scene.finish().await;
}

/// 100 publishes to a channel made without awaiting each: every member gets them in the
/// order made.
async fn unawaited_channel_publishes_arrive_in_order_at_every_member(transport: Transport) {
    let scene = Scene::over(transport, |config, _| {
        config.permissions.join = vec!["room".into()];
        config.permissions.publish = vec!["room".into()];
    })
    .await;
    let got = scene
        .run(
            "const members = []
             for (let i = 0; i < 4; i++) members.push(await member())
             for (const member of members) await member.join('room')
             const sends = []
             for (let n = 0; n < 100; n++) sends.push(members[0].send({channel: 'room'}, {n}))
             await Promise.all(sends)
             await until(() => members.every(member => member.got.length >= 100))
             return members.map(member => member.got.map(message => message.data.n))",
        )
        .await;
    let expected: Vec<u64> = (0..100).collect();
    for member in got.as_array().unwrap() {
        let numbers: Vec<u64> = member
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .collect();
        assert_eq!(numbers, expected);
    }
    scene.finish().await;
}

/// The connection goes silent without closing (a proxy stops forwarding): the client notices
/// within its heartbeat timeout, connects again and resumes; what was sent to it meanwhile
/// arrives, and its own send goes out once.
async fn a_silent_connection_is_noticed_and_resumed(transport: Transport) {
    let scene = Scene::over(transport, |config, _| {
        config.limits.ping_interval = Duration::from_millis(250)
    })
    .await;
    let proxy = Proxies::start(scene.site.addr, transport == Transport::WebTransport).await;
    let url = scene.page_url(proxy.addr);
    scene.with(move |b| b.open(&url)).await;
    let address = scene
        .run("window.client = await member(undefined, {heartbeatTimeout: 1500, fetch: samePort}); return client.address")
        .await;
    proxy.freeze();
    scene
        .run("window.sent = client.send(client.config.sink, {n: 7}); return true")
        .await;
    let address: ferry::Address = address.as_str().unwrap().parse().unwrap();
    for n in 0..3 {
        scene
            .sink
            .send_bytes(&address, gateway::json_payload(&json!({ "n": n })))
            .await
            .unwrap();
    }
    let outcome = scene
        .run(
            "const resumed = await until(() => client.got.length >= 3, 15000)
             const sent = await settled(window.sent, 5000)
             if (resumed) await client.send(client.config.sink, {end: true})
             return {resumed, sent, got: client.got.map(m => m.data.n), states: client.states,
                     state: client.state, same: client.resumed && client.recovered}",
        )
        .await;
    assert_eq!(outcome["resumed"], true, "{outcome}");
    assert_eq!(outcome["got"], json!([0, 1, 2]), "{outcome}");
    assert_eq!(outcome["sent"], json!({"ok": null}), "{outcome}");
    assert_eq!(outcome["state"], "open", "{outcome}");
    assert_eq!(outcome["same"], true, "{outcome}");
    assert!(
        outcome["states"]
            .as_array()
            .unwrap()
            .contains(&json!("connecting")),
        "{outcome}"
    );
    let received = numbers(&scene.received_until(br#"{"end":true}"#).await);
    assert_eq!(received, [7]);
    scene.finish().await;
}

/// The browser goes offline (DevTools' network emulation): the client says so at once, and
/// once the browser is back online it resumes and gets what was sent to it meanwhile.
async fn the_browser_going_offline_and_online_is_followed(transport: Transport) {
    let scene = Scene::over(transport, |_, _| {}).await;
    let address = scene
        .run("window.client = await member(); return client.address")
        .await;
    let network = |offline: bool| json!({"offline": offline, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1});
    scene
        .with(move |b| b.cdp("Network.emulateNetworkConditions", network(true)))
        .await;
    let offline = scene
        .run("return {offline: await until(() => client.state === 'offline', 5000), state: client.state}")
        .await;
    assert_eq!(offline["offline"], true, "{offline}");
    let address: ferry::Address = address.as_str().unwrap().parse().unwrap();
    scene
        .sink
        .send_bytes(&address, gateway::json_payload(&json!({"n": 1})))
        .await
        .unwrap();
    scene
        .with(move |b| b.cdp("Network.emulateNetworkConditions", network(false)))
        .await;
    let back = scene
        .run(
            "const back = await until(() => client.state === 'open' && client.got.length >= 1, 15000)
             return {back, got: client.got.map(m => m.data.n), resumed: client.resumed}",
        )
        .await;
    assert_eq!(back, json!({"back": true, "got": [1], "resumed": true}));
    scene.finish().await;
}

/// A bad token is `unauthorized` (and not tried again, unless `getToken` supplies another), a
/// page of another origin `forbidden`, a gateway that is down `unavailable`.
async fn connect_failures_are_typed(transport: Transport) {
    const REFUSALS: usize = 12;
    let scene = Scene::over(transport, |_, _| {}).await;
    let secured = Site::start_over(
        transport,
        &scene.node,
        GatewayConfig {
            auth: AuthConfig {
                tokens: vec![StaticToken {
                    user: "alice".into(),
                    token: "alice-token".into(),
                }],
                ..AuthConfig::default()
            },
            origins: vec!["*".into()],
            ..GatewayConfig::default()
        },
    )
    .await;
    let elsewhere = Site::start_over(
        transport,
        &scene.node,
        GatewayConfig {
            origins: vec!["http://elsewhere.example".into()],
            ..GatewayConfig::default()
        },
    )
    .await;
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // Several times: over WebTransport the refused session's control stream is stopped before
    // its close code is read, which must not pass for a failed transport (no fallback).
    let refused = scene
        .run(format!(
            "const errors = []
             for (let i = 0; i < {REFUSALS}; i++) {{
               errors.push((await settled(Ferry.connect('http://{}', {{token: 'wrong'}}))).error)
             }}
             return errors",
            secured.addr
        ))
        .await;
    assert_eq!(refused, json!(vec!["unauthorized"; REFUSALS]));
    let outcome = scene
        .run(format!(
            "const refreshed = await Ferry.connect('http://{}', {{token: 'wrong', getToken: () => 'alice-token'}})
             const user = refreshed.user
             refreshed.close()
             return {{
               user,
               forbidden: await settled(Ferry.connect('http://{}')),
               down: await settled(Ferry.connect('http://{down}', {{connectTimeout: 1500}}))
             }}",
            secured.addr, elsewhere.addr
        ))
        .await;
    assert_eq!(
        outcome,
        json!({"user": "alice", "forbidden": {"error": "forbidden"}, "down": {"error": "unavailable"}})
    );
    // One refusal per wrong token, one for the first try before `getToken`: none again.
    // Over WebTransport all were on it (a refusal is no reason to fall back).
    let stats = secured.handle.stats();
    assert_eq!(stats.refused_upgrades, REFUSALS as u64 + 1, "{stats:?}");
    let over_webtransport = if transport == Transport::WebTransport {
        REFUSALS as u64 + 1
    } else {
        0
    };
    assert_eq!(stats.webtransport_refused, over_webtransport, "{stats:?}");
    secured.stop().await;
    elsewhere.stop().await;
    scene.finish().await;
}

/// What the CLI sends arrives in a page as the documented value (valid UTF-8 text as a
/// string, JSON as its value), a page's string reaches a peer as its UTF-8 bytes, a page
/// calls a service as `ferry call` does, and `Ferry.sameAddress` tells a sender's `from`
/// from its address.
async fn values_cross_the_boundary_as_documented(transport: Transport) {
    let scene = Scene::over(transport, |config, sink| {
        config.client_config["shout"] = json!(service(sink, "shout"));
    })
    .await;
    let _shout = shout(&scene.sink);
    let address = scene
        .run("window.a = await member(); window.b = await member(); return b.address")
        .await;
    let address = address.as_str().unwrap().to_owned();
    for message in ["hello", r#"{"a":1}"#] {
        let address = address.clone();
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
                .args(["send", &address, message])
                .env("RUST_LOG", "warn")
                .status()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(status.success(), "ferry send {message}: {status}");
    }
    let got = scene
        .run(
            "await until(() => b.got.length >= 2)
             return b.got.map(m => ({data: m.data, encoding: m.encoding}))",
        )
        .await;
    assert_eq!(
        got,
        json!([{"data": "hello", "encoding": "text"}, {"data": {"a": 1}, "encoding": "json"}])
    );
    let outcome = scene
        .run(
            "await a.send(b.address, {n: 1})
             await until(() => b.got.length >= 3)
             const from = b.got[2].from
             await a.send(a.config.sink, 'hi there')
             await a.send(a.config.sink, {end: true})
             return {
               same: Ferry.sameAddress(from, a.address),
               other: Ferry.sameAddress(from, b.address),
               equal: from === a.address,
               reply: await a.call(a.config.shout, 'hello', {timeout: 5000})
             }",
        )
        .await;
    assert_eq!(
        outcome,
        json!({"same": true, "other": false, "equal": false, "reply": "HELLO"})
    );
    let received = scene.received_until(br#"{"end":true}"#).await;
    assert_eq!(received, [Bytes::from_static(b"hi there")]);
    scene.finish().await;
}

/// Each scenario as two tests, `NAME::over_websocket` and `NAME::over_webtransport`.
macro_rules! over_both {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn over_websocket() {
                super::$scenario(super::Transport::WebSocket).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn over_webtransport() {
                super::$scenario(super::Transport::WebTransport).await
            }
        }
    )*};
}

over_both!(
    browsers_talk_through_the_gateway,
    unawaited_sends_across_rate_limit_closes_arrive_once_in_order,
    an_oversized_send_is_refused_and_the_next_one_goes_out,
    unawaited_channel_publishes_arrive_in_order_at_every_member,
    a_silent_connection_is_noticed_and_resumed,
    the_browser_going_offline_and_online_is_followed,
    connect_failures_are_typed,
    values_cross_the_boundary_as_documented
);

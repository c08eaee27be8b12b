//! Conversations, calls and named services between nodes on loopback.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::HashSet;
use std::future::IntoFuture;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ferry::{
    CallError, Conversation, ConversationError, ErrorCode, Node, NodeConfig, OpenError, ServeError,
    ServiceOptions, Target,
};
use ferry_testkit::wait::{wait_for, wait_for_async};
use futures::StreamExt;

mod common;

use common::{node, node_with, WAIT};

/// `server` offers `name`; returns the target for `client`, with dial hints.
fn target(server: &Node, name: &str) -> Target {
    Target::service(server.id(), name).with_hints(vec![server.local_addr()])
}

async fn echo(mut conversation: Conversation) {
    while let Ok(text) = conversation.recv_obj::<String>().await {
        if conversation.send_obj(&text).await.is_err() {
            return;
        }
    }
    let _ = conversation.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_and_data_both_ways_in_one_conversation() {
    let server = node().await;
    let client = node().await;
    let _service = server
        .serve(
            "files",
            ServiceOptions::default(),
            |mut conversation| async move {
                // HBI's download: [size, note] as an object, the bytes as data, then a checksum.
                let wanted: u64 = conversation.recv_obj().await.unwrap();
                let bytes: Vec<u8> = (0..wanted).map(|i| (i % 251) as u8).collect();
                conversation
                    .send_obj(&(wanted, "generated".to_string()))
                    .await
                    .unwrap();
                conversation.send_data(&bytes[..]).await.unwrap();
                conversation.send_obj(&checksum(&bytes)).await.unwrap();
                // Then an upload the other way, received as a stream of chunks.
                let mut received = Vec::new();
                let mut chunks = conversation.data_stream();
                while let Some(chunk) = chunks.next().await {
                    received.extend_from_slice(&chunk.unwrap());
                }
                drop(chunks);
                conversation.reply(&checksum(&received)).await.unwrap();
            },
        )
        .unwrap();

    let mut conversation = client.open(target(&server, "files")).await.unwrap();
    assert_eq!(conversation.peer(), server.id());
    let size = 3 * 1024 * 1024 + 7;
    conversation.send_obj(&(size as u64)).await.unwrap();
    let (announced, note): (u64, String) = conversation.recv_obj().await.unwrap();
    assert_eq!((announced, note.as_str()), (size as u64, "generated"));
    let mut downloaded = Vec::new();
    assert_eq!(
        conversation.recv_data(&mut downloaded).await.unwrap(),
        size as u64
    );
    let sum: u64 = conversation.recv_obj().await.unwrap();
    assert_eq!(sum, checksum(&downloaded));

    let upload: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 100_000]).collect();
    let sent = conversation
        .send_data_stream(futures::stream::iter(upload.iter()))
        .await
        .unwrap();
    assert_eq!(sent, 5_000_000);
    let expected = checksum(&upload.concat());
    assert_eq!(conversation.recv_obj::<u64>().await.unwrap(), expected);
    // The service finished: the next receive is a clean end.
    assert_eq!(
        conversation.recv_obj::<u64>().await,
        Err(ConversationError::Ended)
    );
    assert_eq!(
        conversation.recv_data(Vec::new()).await,
        Err(ConversationError::Ended)
    );
    client.shutdown(Duration::from_secs(1)).await;
    server.shutdown(Duration::from_secs(1)).await;
}

/// A sink that counts the bytes written to it.
struct Counting(Arc<AtomicU64>);

impl tokio::io::AsyncWrite for Counting {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_complete_out_of_order() {
    let server = node().await;
    let client = node().await;
    let _service = server
        .serve(
            "slow-echo",
            ServiceOptions::default(),
            |mut conversation| async move {
                let delay_ms: u64 = conversation.recv_obj().await.unwrap();
                // Real time is under test: a slow handler, so that answers come out of order.
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                conversation.reply(&delay_ms).await.unwrap();
            },
        )
        .unwrap();
    let (finished_tx, mut finished_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut calls = Vec::new();
    for delay in [600u64, 300, 10] {
        let client = client.clone();
        let to = target(&server, "slow-echo");
        let finished = finished_tx.clone();
        calls.push(tokio::spawn(async move {
            let answer: u64 = client.call(to, &delay).await.unwrap();
            assert_eq!(answer, delay, "each call gets its own response");
            finished.send(answer).unwrap();
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    let order: Vec<u64> = std::iter::from_fn(|| finished_rx.try_recv().ok()).collect();
    assert_eq!(order, vec![10, 300, 600], "replies complete in any order");
    client.shutdown(Duration::from_secs(1)).await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_opened_while_both_nodes_dial_each_other_complete() {
    // Each node opens a conversation to the other at the same moment: two connections come
    // up, one loses the one-connection rule, and a conversation may have started on it.
    simultaneous_conversations(NodeConfig::default(), 20, 3, Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_on_the_connection_that_lost_a_simultaneous_dial_outlast_the_grace() {
    // As above, but each conversation goes on for about four times `duplicate_grace` (30
    // messages 50 ms apart): the losing connection is closed only once it has been quiet for
    // a whole grace.
    let config = NodeConfig {
        duplicate_grace: Duration::from_millis(400),
        ..NodeConfig::default()
    };
    simultaneous_conversations(config, 10, 30, Duration::from_millis(50)).await;
}

/// `rounds` times, two new nodes open an echo conversation to each other at the same moment
/// and exchange `messages` messages on it, `pause` apart; every one must come back.
async fn simultaneous_conversations(
    config: NodeConfig,
    rounds: usize,
    messages: usize,
    pause: Duration,
) {
    for round in 0..rounds {
        let a = node_with(config.clone()).await;
        let b = node_with(config.clone()).await;
        let _echo_a = a.serve("echo", ServiceOptions::default(), echo).unwrap();
        let _echo_b = b.serve("echo", ServiceOptions::default(), echo).unwrap();
        let talk = |from: &Node, to: &Node| {
            let (from, target) = (from.clone(), target(to, "echo"));
            async move {
                let mut conversation = from.open(target).await?;
                for n in 0..messages {
                    let text = format!("round {round} message {n}");
                    conversation.send_obj(&text).await?;
                    let back: String = conversation.recv_obj().await?;
                    assert_eq!(back, text);
                    // Real time is under test: conversations that stay open for a while
                    // (`pause` between messages) while the other direction opens its own.
                    tokio::time::sleep(pause).await;
                }
                conversation.finish()?;
                anyhow::Ok(())
            }
        };
        let (ab, ba) = tokio::join!(talk(&a, &b), talk(&b, &a));
        ab.unwrap();
        ba.unwrap();
        a.shutdown(Duration::from_secs(1)).await;
        b.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_conversations_on_one_connection() {
    let server = node().await;
    let client = node().await;
    let _service = server
        .serve("echo", ServiceOptions::default(), echo)
        .unwrap();
    // Open all of them first and hold them open, then talk on each.
    let mut conversations = Vec::new();
    for _ in 0..1000 {
        conversations.push(client.open(target(&server, "echo")).await.unwrap());
    }
    let results = futures::future::join_all(conversations.into_iter().enumerate().map(
        |(n, mut conversation)| async move {
            let text = format!("conversation {n}");
            conversation.send_obj(&text).await.unwrap();
            let back: String = conversation.recv_obj().await.unwrap();
            conversation.finish().unwrap();
            back == text
        },
    ))
    .await;
    assert!(results.into_iter().all(|ok| ok));
    assert_eq!(client.stats().open_connections, 1);
    client.shutdown(Duration::from_secs(1)).await;
    server.shutdown(Duration::from_secs(1)).await;
}

/// A call has one deadline: `open_timeout` bounds its opening only, not the wait for the
/// response of a callee that accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_later_than_the_open_timeout_is_awaited_until_the_calls_deadline() {
    let server = node().await;
    let open_timeout = Duration::from_millis(200);
    let client = node_with(NodeConfig {
        open_timeout,
        ..NodeConfig::default()
    })
    .await;
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Notify::new());
    let _service = server
        .serve("slow", ServiceOptions::default(), {
            let release = release.clone();
            move |mut conversation| {
                let (started, release) = (started_tx.clone(), release.clone());
                async move {
                    let request: String = conversation.recv_obj().await.unwrap();
                    started.send(()).unwrap();
                    release.notified().await;
                    let _ = conversation.reply(&request).await;
                }
            }
        })
        .unwrap();
    let call = client
        .call::<_, String>(target(&server, "slow"), "work")
        .timeout(WAIT);
    let pending = tokio::spawn(call.into_future());
    tokio::time::timeout(WAIT, started_rx.recv())
        .await
        .unwrap()
        .unwrap();
    // The response comes well after the opening's own timeout would have ended.
    tokio::time::sleep(open_timeout * 3).await;
    release.notify_one();
    let response = tokio::time::timeout(WAIT, pending).await.unwrap().unwrap();
    assert_eq!(response, Ok("work".to_owned()));
    client.shutdown(Duration::from_secs(1)).await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_call_stops_the_callee() {
    let server = node().await;
    let client = node().await;
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let (stopped_tx, mut stopped_rx) = tokio::sync::mpsc::unbounded_channel();
    let _service = server
        .serve(
            "long",
            ServiceOptions::default(),
            move |mut conversation| {
                let (started, stopped) = (started_tx.clone(), stopped_tx.clone());
                async move {
                    let _request: String = conversation.recv_obj().await.unwrap();
                    started.send(()).unwrap();
                    // Work that never ends by itself: only the cancellation stops it.
                    let code = conversation.cancelled().await;
                    stopped.send(code).unwrap();
                }
            },
        )
        .unwrap();
    let started = Instant::now();
    let result: Result<String, CallError> = client
        .call(target(&server, "long"), "work")
        .timeout(Duration::from_millis(300))
        .await;
    assert_eq!(result, Err(CallError::Timeout));
    assert!(started.elapsed() < Duration::from_secs(5));
    // The callee learns of the cancellation and stops its work.
    let code = tokio::time::timeout(WAIT, stopped_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, Ok(ErrorCode::CANCELLED.0));
    started_rx.recv().await.unwrap();

    // Dropping the call future cancels too (once the callee is at work).
    let call = client.call::<_, String>(target(&server, "long"), "work");
    let pending = tokio::spawn(call.into_future());
    tokio::time::timeout(WAIT, started_rx.recv())
        .await
        .unwrap()
        .unwrap();
    pending.abort();
    let code = tokio::time::timeout(WAIT, stopped_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, Ok(ErrorCode::CANCELLED.0));
    client.shutdown(Duration::from_secs(1)).await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_come_back_typed() {
    let server = node().await;
    let client = node().await;
    let _failing = server
        .serve(
            "failing",
            ServiceOptions::default(),
            |conversation| async move {
                conversation.fail("no such record").await.unwrap();
            },
        )
        .unwrap();
    let _silent = server
        .serve(
            "silent",
            ServiceOptions::default(),
            |conversation| async move {
                drop(conversation); // the handler ends without answering
            },
        )
        .unwrap();

    // An unknown name is refused at once, never a hang.
    let started = Instant::now();
    let unknown: Result<String, _> = client.call(target(&server, "nope"), "x").await;
    assert_eq!(
        unknown,
        Err(CallError::Open(OpenError::NoSuchService("nope".into())))
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        client
            .open(target(&server, "not a name!"))
            .await
            .unwrap_err(),
        OpenError::InvalidName("not a name!".into())
    );

    let failed: Result<String, _> = client.call(target(&server, "failing"), "x").await;
    assert_eq!(
        failed,
        Err(CallError::Failed {
            code: ErrorCode::HANDLER_FAILED.0,
            reason: "no such record".into()
        })
    );
    let silent: Result<String, _> = client.call(target(&server, "silent"), "x").await;
    assert!(
        matches!(silent, Err(CallError::Failed { code, .. }) if code == ErrorCode::HANDLER_FAILED.0),
        "{silent:?}"
    );
    // A response of the wrong type is a decode error, not a panic.
    let _echo = server
        .serve("echo", ServiceOptions::default(), echo)
        .unwrap();
    let wrong: Result<u64, _> = client.call(target(&server, "echo"), "text").await;
    assert!(matches!(wrong, Err(CallError::Decode(_))), "{wrong:?}");

    assert_eq!(
        server
            .serve("echo", ServiceOptions::default(), echo)
            .unwrap_err(),
        ServeError::AlreadyRegistered("echo".into())
    );
    client.shutdown(Duration::from_secs(1)).await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_and_lookup() {
    let server = node().await;
    let friend = node().await;
    let stranger = node().await;
    let allow: HashSet<_> = [friend.id()].into_iter().collect();
    let logger = server
        .serve(
            "logger",
            ServiceOptions {
                allow: Some(allow),
                ..ServiceOptions::default()
            },
            echo,
        )
        .unwrap();

    let answer: String = friend
        .call(target(&server, "logger"), "hello")
        .await
        .unwrap();
    assert_eq!(answer, "hello");
    let refused: Result<String, _> = stranger.call(target(&server, "logger"), "hello").await;
    assert_eq!(refused, Err(CallError::Open(OpenError::NotAllowed)));
    assert_eq!(
        stranger
            .lookup(server.id(), "logger", &[server.local_addr()])
            .await,
        Err(OpenError::NotAllowed)
    );

    // Lookup hands out the service's capability address (fabric's remote_whereis)...
    let address = friend
        .lookup(server.id(), "logger", &[server.local_addr()])
        .await
        .unwrap();
    assert_eq!(address.without_hints(), logger.address().without_hints());
    assert_eq!(
        friend.lookup(server.id(), "nothing", &[]).await,
        Err(OpenError::NoSuchService("nothing".into()))
    );
    // ...which is a capability of its own: whoever holds it may converse.
    let via_address: String = stranger.call(&address, "by address").await.unwrap();
    assert_eq!(via_address, "by address");
    // Stopping the service revokes it.
    drop(logger);
    wait_for_async("the service to stop", || async {
        friend
            .lookup(server.id(), "logger", &[server.local_addr()])
            .await
            == Err(OpenError::NoSuchService("logger".into()))
    })
    .await;
    let revoked: Result<String, _> = stranger.call(&address, "x").await;
    assert_eq!(revoked, Err(CallError::Open(OpenError::NoSuchMailbox)));
    for node in [server, friend, stranger] {
        node.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_transfer_does_not_stall_another_conversation() {
    let server = node().await;
    let client = node().await;
    let received = Arc::new(AtomicU64::new(0));
    let _bulk = server
        .serve("bulk", ServiceOptions::default(), {
            let received = received.clone();
            move |mut conversation| {
                let received = received.clone();
                async move {
                    let _ = conversation.recv_data(Counting(received)).await;
                    let _ = conversation.reply(&()).await;
                }
            }
        })
        .unwrap();
    let _echo = server
        .serve("echo", ServiceOptions::default(), echo)
        .unwrap();

    let mut bulk = client.open(target(&server, "bulk")).await.unwrap();
    let transfer = tokio::spawn(async move {
        // 200 MB from a generator: constant memory on both sides.
        let chunk = vec![7u8; 64 * 1024];
        let chunks = futures::stream::iter(std::iter::repeat_n(chunk, 3200));
        bulk.send_data_stream(chunks).await.unwrap();
        bulk.recv_obj::<()>().await.unwrap();
    });
    // The transfer is under way before the small conversation starts.
    wait_for("the bulk transfer to be under way", || {
        received.load(Ordering::Relaxed) >= 1 << 20
    })
    .await;
    let mut echo_conversation = client.open(target(&server, "echo")).await.unwrap();
    let mut answered_during_transfer = 0;
    for n in 0..50 {
        let text = format!("ping {n}");
        echo_conversation.send_obj(&text).await.unwrap();
        let back: String =
            tokio::time::timeout(Duration::from_secs(2), echo_conversation.recv_obj())
                .await
                .expect("the small conversation must keep answering")
                .unwrap();
        assert_eq!(back, text);
        if !transfer.is_finished() {
            answered_during_transfer += 1;
        }
    }
    assert!(
        answered_during_transfer > 10,
        "only {answered_during_transfer} answers while the bulk transfer ran"
    );
    transfer.await.unwrap();
    client.shutdown(Duration::from_secs(1)).await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connection_and_peer_reset_are_distinct_errors() {
    let server = node().await;
    let client = node().await;
    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut service = server.service("hold", ServiceOptions::default()).unwrap();
    tokio::spawn(async move {
        while let Some(conversation) = service.accept().await {
            accepted_tx.send(conversation).unwrap();
        }
    });
    // The opener drops its conversation: the service sees a reset with CANCELLED.
    let opened = client.open(target(&server, "hold")).await.unwrap();
    let mut held = accepted_rx.recv().await.unwrap();
    drop(opened);
    assert_eq!(
        held.recv_obj::<String>().await,
        Err(ConversationError::Reset(ErrorCode::CANCELLED.0))
    );
    // The service's node goes away: the opener's conversation reports the lost connection.
    let mut opened = client.open(target(&server, "hold")).await.unwrap();
    let _held = accepted_rx.recv().await.unwrap();
    server.shutdown(Duration::from_millis(100)).await;
    let error = tokio::time::timeout(WAIT, opened.recv_obj::<String>())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(error, ConversationError::ConnectionLost(_)),
        "{error:?}"
    );
    client.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_calls_lookups_and_monitors_of_the_own_node() {
    let node = node().await;
    let _echo = node.serve("echo", ServiceOptions::default(), echo).unwrap();
    let own = Target::service(node.id(), "echo");
    let answer: String = node.call(own.clone(), "to myself").await.unwrap();
    assert_eq!(answer, "to myself");
    let mut conversation = node.open(own.clone()).await.unwrap();
    conversation.send_obj("first").await.unwrap();
    assert_eq!(conversation.recv_obj::<String>().await.unwrap(), "first");
    conversation.finish().unwrap();
    assert_eq!(
        conversation.recv_obj::<String>().await,
        Err(ConversationError::Ended)
    );
    let address = node.lookup(node.id(), "echo", &[]).await.unwrap();
    let by_address: String = node.call(&address, "by address").await.unwrap();
    assert_eq!(by_address, "by address");
    // Many at once, on the one loopback path.
    let calls = (0..50).map(|n| {
        let node = node.clone();
        let own = own.clone();
        async move { node.call::<_, String>(own, &n.to_string()).await }
    });
    let results = futures::future::join_all(calls).await;
    assert_eq!(
        results.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        (0..50).map(|n| n.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(
        node.lookup(node.id(), "nothing", &[]).await,
        Err(OpenError::NoSuchService("nothing".into()))
    );
    // Watching the own node: up until it shuts down.
    let mut own_monitor = node.monitor_peer(node.id(), &[]);
    let mut service_monitor = node.monitor(&address).unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut own_monitor)
            .await
            .is_err()
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(10), &mut service_monitor)
            .await
            .is_err()
    );
    node.shutdown(Duration::from_secs(1)).await;
    assert_eq!(
        tokio::time::timeout(WAIT, own_monitor).await.unwrap(),
        ferry::DownReason::LocalShutdown
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_beyond_the_peers_announced_limit_are_refused_locally() {
    let small = NodeConfig {
        max_message_size: 1024,
        ..NodeConfig::default()
    };
    let server = node_with(small.clone()).await;
    let client = node().await;
    let (reply_tx, mut reply_rx) = tokio::sync::mpsc::unbounded_channel();
    let _service = server
        .serve(
            "sink",
            ServiceOptions::default(),
            move |mut conversation| {
                let replies = reply_tx.clone();
                async move {
                    let _ = conversation.recv_obj::<String>().await;
                    let _ = conversation.send_obj(&"small answer").await;
                    let _ = conversation.finish();
                    let _ = replies.send(());
                }
            },
        )
        .unwrap();
    // The server announced 1024 bytes: a larger object never leaves the client.
    let mut conversation = client.open(target(&server, "sink")).await.unwrap();
    let big = "x".repeat(2000);
    assert_eq!(
        conversation.send_obj(&big).await,
        Err(ConversationError::TooLarge {
            size: 2002,
            max: 1024
        })
    );
    // The conversation is still usable.
    conversation.send_obj("fits").await.unwrap();
    assert_eq!(
        conversation.recv_obj::<String>().await.unwrap(),
        "small answer"
    );
    reply_rx.recv().await.unwrap();
    let call: Result<String, _> = client.call(target(&server, "sink"), &big).await;
    assert_eq!(
        call,
        Err(CallError::TooLarge {
            size: 2002,
            max: 1024
        })
    );

    // The other way round: the opener announces its own limit to the service.
    let small_client = node_with(small).await;
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel();
    let _big_answers = client
        .serve("big", ServiceOptions::default(), move |mut conversation| {
            let sent = sent_tx.clone();
            async move {
                let result = conversation.send_obj(&"y".repeat(2000)).await;
                let _ = conversation.reply(&"fits").await;
                sent.send(result).unwrap();
            }
        })
        .unwrap();
    let mut conversation = small_client.open(target(&client, "big")).await.unwrap();
    assert_eq!(
        sent_rx.recv().await.unwrap(),
        Err(ConversationError::TooLarge {
            size: 2002,
            max: 1024
        })
    );
    assert_eq!(conversation.recv_obj::<String>().await.unwrap(), "fits");
    for node in [client, server, small_client] {
        node.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_reports_only_a_real_cancellation() {
    let server = node().await;
    let client = node().await;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let (read_tx, mut read_rx) = tokio::sync::mpsc::unbounded_channel();
    let _service = server
        .serve(
            "watch",
            ServiceOptions::default(),
            move |mut conversation| {
                let seen = seen_tx.clone();
                let read = read_tx.clone();
                async move {
                    let finish: bool = conversation.recv_obj().await.unwrap();
                    read.send(()).unwrap();
                    if finish {
                        conversation.send_obj("done").await.unwrap();
                        conversation.finish().unwrap();
                    }
                    seen.send(conversation.cancelled().await).unwrap();
                }
            },
        )
        .unwrap();
    // The service finished and the client read everything: nobody cancelled.
    let mut conversation = client.open(target(&server, "watch")).await.unwrap();
    conversation.send_obj(&true).await.unwrap();
    conversation.finish().unwrap();
    assert_eq!(conversation.recv_obj::<String>().await.unwrap(), "done");
    assert_eq!(
        conversation.recv_obj::<String>().await,
        Err(ConversationError::Ended)
    );
    let seen = tokio::time::timeout(WAIT, seen_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, Err(ConversationError::Finished));
    drop(conversation);
    read_rx.recv().await.unwrap();

    // The client drops the conversation (once the request was read): a real cancellation.
    let mut conversation = client.open(target(&server, "watch")).await.unwrap();
    conversation.send_obj(&false).await.unwrap();
    read_rx.recv().await.unwrap();
    drop(conversation);
    let seen = tokio::time::timeout(WAIT, seen_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, Ok(ErrorCode::CANCELLED.0));

    // The client's node goes away: the connection is lost, nobody cancelled.
    let mut conversation = client.open(target(&server, "watch")).await.unwrap();
    conversation.send_obj(&false).await.unwrap();
    conversation.finish().unwrap();
    read_rx.recv().await.unwrap();
    client.shutdown(Duration::from_millis(100)).await;
    let seen = tokio::time::timeout(WAIT, seen_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(seen, Err(ConversationError::ConnectionLost(_))),
        "{seen:?}"
    );
    drop(conversation);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_messages_to_a_service_address_are_refused() {
    let server = node().await;
    let client = node().await;
    let service = server
        .serve("svc", ServiceOptions::default(), echo)
        .unwrap();
    assert_eq!(
        client.send(service.address(), "hello").await,
        Err(ferry::SendError::NoSuchMailbox)
    );
    assert_eq!(
        server.send(service.address(), "hello").await,
        Err(ferry::SendError::NoSuchMailbox)
    );
    // Conversations by the same address still work.
    let answer: String = client.call(service.address(), "hi").await.unwrap();
    assert_eq!(answer, "hi");
    client.shutdown(Duration::from_secs(1)).await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_during_shutdown_are_answered_shutting_down() {
    let server = node().await;
    let client = node().await;
    let service = server
        .serve("echo", ServiceOptions::default(), echo)
        .unwrap();
    // A message for a node that is gone keeps the server's shutdown in its first phase
    // (waiting for acknowledgements) for the whole grace period.
    let gone = node().await;
    let unreachable = gone.mailbox().address().clone();
    gone.shutdown(Duration::from_millis(100)).await;
    let pending = server
        .sender(&unreachable)
        .enqueue("never acknowledged")
        .await
        .unwrap();
    let stopping = tokio::spawn({
        let server = server.clone();
        async move { server.shutdown(Duration::from_secs(3)).await }
    });
    // Wait for the shutdown to begin: then the server refuses its own opens at once.
    while server
        .open(Target::service(server.id(), "echo"))
        .await
        .err()
        != Some(OpenError::NodeClosed)
    {
        tokio::task::yield_now().await;
    }
    let call: Result<String, _> = client.call(target(&server, "echo"), "late").await;
    assert_eq!(call, Err(CallError::Open(OpenError::PeerShuttingDown)));
    assert_eq!(
        client.open(service.address()).await.unwrap_err(),
        OpenError::PeerShuttingDown
    );
    assert_eq!(
        client
            .lookup(server.id(), "echo", &[server.local_addr()])
            .await,
        Err(OpenError::PeerShuttingDown)
    );
    tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
    assert!(pending.await.is_err());
    client.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_within_its_grace_despite_a_stuck_handler() {
    let server = node().await;
    let client = node().await;
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let _stuck = server
        .serve("stuck", ServiceOptions::default(), move |conversation| {
            let started = started_tx.clone();
            async move {
                started.send(()).unwrap();
                let _held = conversation;
                std::future::pending::<()>().await;
            }
        })
        .unwrap();
    let mut conversation = client.open(target(&server, "stuck")).await.unwrap();
    started_rx.recv().await.unwrap();
    let started = Instant::now();
    tokio::time::timeout(WAIT, server.shutdown(Duration::from_millis(300)))
        .await
        .expect("shutdown must not wait for a handler that never returns");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The opener learns that its conversation is over.
    let error = tokio::time::timeout(WAIT, conversation.recv_obj::<String>())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            error,
            ConversationError::ConnectionLost(_) | ConversationError::Reset(15)
        ),
        "{error:?}"
    );
    client.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_accept_returns_none_at_shutdown() {
    let server = node().await;
    let mut service = server.service("svc", ServiceOptions::default()).unwrap();
    let accepting = tokio::spawn(async move { service.accept().await.is_none() });
    server.shutdown(Duration::from_millis(200)).await;
    assert!(tokio::time::timeout(WAIT, accepting)
        .await
        .unwrap()
        .unwrap());
}

//! The lab leaves nothing behind: not after a panic, not after a signal to the lab binary, and
//! a run killed too hard to clean up is cleaned up by the next; without root it fails, saying
//! why.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_interop::lab::{Lab, NatKind};
use ferry_testkit::harness::Process;

/// Held by each test: a lab made by one test removes the namespaces of dead runs, which
/// includes the one another test plants as a dead run's (while `ip netns add` is making it).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn namespaces() -> Vec<String> {
    let output = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Waits until process `pid` runs inside namespace `name`: `ip netns exec` joins it only after
/// it has started, and a teardown before that would miss it.
fn wait_inside(name: &str, pid: u32) {
    ferry_testkit::wait::wait_for_blocking(&format!("pid {pid} inside {name}"), || {
        let output = Command::new("ip")
            .args(["netns", "pids", name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .any(|inside| inside == pid.to_string())
    });
}

fn with_prefix(prefix: &str) -> Vec<String> {
    namespaces()
        .into_iter()
        .filter(|name| name.starts_with(prefix))
        .collect()
}

#[test]
fn a_panic_removes_the_labs_namespaces_and_what_ran_in_them() {
    let _serial = one_at_a_time();
    let (sender, built) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let mut lab = Lab::new().unwrap();
        let host = lab.add_host_behind("host", NatKind::TwoLayers).unwrap();
        let namespace = lab.host(host).unwrap().namespace();
        let child = namespace.command("sleep").arg("600").spawn().unwrap();
        wait_inside(namespace.name(), child.id());
        sender
            .send((lab.prefix().to_string(), with_prefix(lab.prefix()), child))
            .unwrap();
        panic!("a test failing with a lab built");
    })
    .join();
    assert!(result.is_err());
    let (prefix, during, mut child) = built.recv().unwrap();
    // public, the host, its router and the carrier NAT.
    assert_eq!(during.len(), 4, "{during:?}");
    assert_eq!(with_prefix(&prefix), Vec::<String>::new());
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the sleep in the lab was killed: {status}"
    );
}

#[test]
fn namespaces_of_a_run_that_died_are_removed_by_the_next() {
    let _serial = one_at_a_time();
    // A pid that no longer runs.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    // The random part keeps a reused pid from meeting a namespace of an earlier run.
    let name = format!(
        "ferrylab-{}-{:06x}-host",
        gone.id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
            & 0xff_ffff
    );
    let created = Command::new("ip")
        .args(["netns", "add", &name])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "ip netns add {name}: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    let mut inside = Command::new("ip")
        .args(["netns", "exec", &name, "sleep", "600"])
        .spawn()
        .unwrap();
    wait_inside(&name, inside.id());
    let _lab = Lab::new().unwrap();
    assert!(!namespaces().contains(&name));
    assert!(!inside.wait().unwrap().success(), "its process was killed");
}

#[test]
fn the_lab_binary_removes_its_namespaces_on_sigterm() {
    let _serial = one_at_a_time();
    let mut command = Command::new(env!("CARGO_BIN_EXE_lab"));
    command.args(["up", "--kinds", "home,symmetric"]);
    let mut lab = Process::start("lab up", command).unwrap();
    let prefix = lab
        .wait_for_prefix("ready ", Duration::from_secs(60))
        .unwrap();
    // public segment, public host, two hosts and their routers.
    assert_eq!(with_prefix(&prefix).len(), 6, "{:?}", with_prefix(&prefix));
    let status = lab.terminate(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(143), "{}", lab.stderr_tail());
    assert_eq!(with_prefix(&prefix), Vec::<String>::new());
}

#[test]
fn without_root_the_lab_fails_and_says_why() {
    let _serial = one_at_a_time();
    // As nobody, from a copy nobody may run.
    let dir = tempfile::tempdir().unwrap();
    let lab = dir.path().join("lab");
    std::fs::copy(env!("CARGO_BIN_EXE_lab"), &lab).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&lab)
        .arg("nat-check")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("the lab needs root"), "{stderr}");
}

//! The hostile peer process: [`ferry_testkit::hostile_peer`].

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    ferry_testkit::hostile_peer::main(&args)
}

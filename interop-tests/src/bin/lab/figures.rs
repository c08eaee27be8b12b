pub(crate) fn run(_: &BenchArgs, _: &super::Binaries) -> anyhow::Result<()> {
    Ok(())
}
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {}

//! `qsid`, the site daemon.

#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    anyhow::bail!("qsid is not built yet in this version")
}

//! An arm64 device under qemu emulation: its engine runs and says aarch64.

use anyhow::{Context, Result};
use fogswarm_e2e::Lab;

#[test]
fn arm64_device_engine_reports_aarch64() -> Result<()> {
    let mut lab = Lab::up(
        "e2e-arm",
        "10.213.204.0/24",
        &["--devices", "2", "--arm64", "1", "--bare"],
    )?;
    let status = lab.status()?;
    let by_name = |n: &str| {
        status
            .devices
            .iter()
            .find(|d| d.name == n)
            .context("device")
    };
    let amd = by_name("dev1")?;
    let arm = by_name("dev2")?;
    assert_eq!(amd.platform, "amd64");
    assert_eq!(arm.platform, "arm64");
    assert_eq!(
        amd.engine.as_ref().context("dev1 engine")?.architecture,
        "x86_64"
    );
    let arm_engine = arm.engine.as_ref().context("dev2 engine")?;
    assert_eq!(arm_engine.architecture, "aarch64");
    assert_eq!(arm_engine.hostname, "dev2");
    // The userland itself is arm64, not just the engine's claim.
    let uname = lab.fogswarm(
        &["lab", "exec", "--name", "e2e-arm", "dev2", "--"],
        &["uname", "-m"],
    );
    assert_eq!(uname.code, 0, "{}", uname.stderr);
    assert_eq!(uname.stdout.trim(), "aarch64");
    let down = lab.down();
    assert_eq!(down.code, 0, "{}", down.stderr);
    Ok(())
}

//! The device image: a debootstrapped Debian root fs with Docker Engine,
//! imported as a local image and cached.
//!
//! Building it costs about half a minute for amd64 and several minutes for
//! arm64 (under emulation), so it is built only when missing. The tag carries
//! a hash of the recipe, so changing the recipe builds a new image instead of
//! silently reusing a stale one.

use super::progress::Step;
use super::tools::require_tool;
use crate::engine::Engine;
use anyhow::{bail, Context, Result};
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;
use hyper::body::Bytes;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const SUITE: &str = "bookworm";
pub const PACKAGES: &str = "docker.io,iproute2,ca-certificates,procps";
/// Label on device images, so they can be listed and pruned.
pub const IMAGE_LABEL: &str = "io.fogswarm.lab.device-image";

/// A device platform the lab can build: Docker's name and debootstrap's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevicePlatform {
    Amd64,
    Arm64,
}

impl DevicePlatform {
    pub fn docker_name(self) -> &'static str {
        match self {
            DevicePlatform::Amd64 => "amd64",
            DevicePlatform::Arm64 => "arm64",
        }
    }

    /// What `uname -m` (and an engine's /info) says on such a device.
    pub fn machine(self) -> &'static str {
        match self {
            DevicePlatform::Amd64 => "x86_64",
            DevicePlatform::Arm64 => "aarch64",
        }
    }

    /// Whether this platform needs qemu emulation on this host.
    pub fn emulated(self) -> bool {
        std::env::consts::ARCH != self.machine()
    }
}

/// The image reference for a platform: `$FOGSWARM_LAB_DEVICE_IMAGE` (with
/// `{arch}` replaced) when set, else a tag derived from the recipe.
pub fn image_ref(platform: DevicePlatform) -> String {
    if let Ok(custom) = std::env::var("FOGSWARM_LAB_DEVICE_IMAGE") {
        if !custom.is_empty() {
            return custom.replace("{arch}", platform.docker_name());
        }
    }
    let recipe = format!("{SUITE}|minbase|{PACKAGES}|{}", platform.docker_name());
    let hash = recipe.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!(
        "fogswarm-lab/device:{SUITE}-{}-{:08x}",
        platform.docker_name(),
        hash as u32
    )
}

/// Whether the image exists locally.
pub async fn exists(engine: &Engine, image: &str) -> Result<bool> {
    match engine.docker.inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("inspecting image {image}")),
    }
}

/// Checks, before anything is created, that a missing image could be built.
pub fn check_build_prerequisites(platform: DevicePlatform) -> Result<()> {
    require_tool("debootstrap", "debootstrap")?;
    require_tool("tar", "tar")?;
    if platform.emulated() {
        super::binfmt::check_available(platform)?;
    }
    Ok(())
}

/// Builds the image from nothing: debootstrap into a work dir under
/// `cache_dir`, stream it into the engine as an import, remove the work dir.
pub async fn build(
    engine: &Engine,
    platform: DevicePlatform,
    image: &str,
    cache_dir: &Path,
) -> Result<()> {
    if platform.emulated() {
        super::binfmt::ensure_registered(platform)?;
    }
    let root = cache_dir.join(format!("rootfs-{}", platform.docker_name()));
    remove_rootfs(&root)?; // a leftover from an interrupted build
    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("creating {}", cache_dir.display()))?;
    let result = async {
        debootstrap(platform, &root).await?;
        import(engine, platform, &root, image).await
    }
    .await;
    let cleanup = remove_rootfs(&root);
    result?;
    cleanup
}

async fn debootstrap(platform: DevicePlatform, root: &Path) -> Result<()> {
    let mirror = mirror();
    let step = Step::spinner(format!(
        "building {} device root fs with debootstrap ({SUITE}, {mirror})",
        platform.docker_name()
    ));
    let mut child = tokio::process::Command::new("debootstrap")
        .arg(format!("--arch={}", platform.docker_name()))
        .arg("--variant=minbase")
        .arg(format!("--include={PACKAGES}"))
        .arg(SUITE)
        .arg(root)
        .arg(&mirror)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting debootstrap")?;
    let stdout = child.stdout.take().context("debootstrap stdout")?;
    let stderr = child.stderr.take().context("debootstrap stderr")?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let err_task = tokio::spawn(async move {
        let mut buf = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(
            &mut tokio::io::BufReader::new(stderr),
            &mut buf,
        )
        .await;
        buf
    });
    let mut tail: Vec<String> = Vec::new();
    while let Some(line) = lines
        .next_line()
        .await
        .context("reading debootstrap output")?
    {
        step.message(line.trim_start_matches("I: "));
        tail.push(line);
        if tail.len() > 15 {
            tail.remove(0);
        }
    }
    let status = child.wait().await.context("waiting for debootstrap")?;
    let stderr = err_task.await.unwrap_or_default();
    if !status.success() {
        step.fail();
        bail!(
            "debootstrap failed ({status}); its last lines:\n{}\n{}",
            tail.join("\n"),
            stderr.trim()
        );
    }
    step.done();
    Ok(())
}

/// Streams `tar -c` of the root fs into `POST /images/create?fromSrc=-`.
async fn import(engine: &Engine, platform: DevicePlatform, root: &Path, image: &str) -> Result<()> {
    let step = Step::bytes(format!("importing {image}"));
    let mut tar = Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "-C"])
        .arg(root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting tar")?;
    let mut stdout = tar.stdout.take().context("tar stdout")?;
    // A bounded channel: tar never runs ahead of the engine by more than a
    // few MiB.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let counter = step.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    counter.advance(n as u64);
                    if tx
                        .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    let (repo, tag) = image.rsplit_once(':').unwrap_or((image, "latest"));
    let options = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(repo)
        .tag(tag)
        .changes(vec![format!(
            "LABEL {IMAGE_LABEL}={}",
            platform.docker_name()
        )])
        .build();
    let mut progress = engine.docker.create_image(
        Some(options),
        Some(bollard::body_try_stream(futures_util::stream::unfold(
            rx,
            |mut rx| async { rx.recv().await.map(|chunk| (chunk, rx)) },
        ))),
        None,
    );
    let mut import_error = None;
    while let Some(item) = progress.next().await {
        if let Err(e) = item {
            import_error = Some(e);
            break;
        }
    }
    drop(progress);
    let _ = reader.join();
    let tar_status = tar.wait_with_output().context("waiting for tar")?;
    if let Some(e) = import_error {
        step.fail();
        return Err(e).with_context(|| format!("importing {image}"));
    }
    if !tar_status.status.success() {
        step.fail();
        bail!(
            "tar of {} failed: {}",
            root.display(),
            String::from_utf8_lossy(&tar_status.stderr).trim()
        );
    }
    step.done();
    Ok(())
}

/// Removes a root fs work dir, first unmounting whatever debootstrap left
/// mounted inside it (/proc, /sys, /dev/pts): deleting through a live /proc
/// or /sys mount would reach the host's.
fn remove_rootfs(root: &Path) -> Result<()> {
    if !root.exists() {
        return Ok(());
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let prefix = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let mut inside: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    inside.sort();
    for mount in inside.iter().rev() {
        let status = Command::new("umount").arg("-l").arg(mount).status();
        if !matches!(status, Ok(s) if s.success()) {
            bail!(
                "cannot unmount {} left by debootstrap; unmount it by hand before retrying",
                mount.display()
            );
        }
    }
    std::fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))
}

/// The Debian mirror: `$FOGSWARM_LAB_MIRROR`, else the first one the host's
/// apt sources name, else deb.debian.org.
pub fn mirror() -> String {
    if let Ok(m) = std::env::var("FOGSWARM_LAB_MIRROR") {
        if !m.is_empty() {
            return m;
        }
    }
    mirror_from_sources(
        &std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default(),
        &std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default(),
    )
    .unwrap_or_else(|| "http://deb.debian.org/debian".to_string())
}

/// Finds a main-archive mirror (not the security one) in deb822 or
/// one-line apt sources.
fn mirror_from_sources(deb822: &str, one_line: &str) -> Option<String> {
    let plain = |u: &&str| u.starts_with("http") && !u.contains("security");
    deb822
        .lines()
        .filter_map(|l| l.trim().strip_prefix("URIs:"))
        .flat_map(str::split_whitespace)
        .find(plain)
        .or_else(|| {
            one_line
                .lines()
                .filter(|l| l.trim_start().starts_with("deb "))
                .flat_map(|l| l.split_whitespace().skip(1))
                .find(|w| !w.starts_with('[') && plain(w))
        })
        .map(|u| u.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_from_deb822_skips_security() {
        let sources = "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n\nTypes: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n";
        assert_eq!(
            mirror_from_sources(sources, "").as_deref(),
            Some("http://mirror.example/debian")
        );
    }

    #[test]
    fn mirror_from_one_line_sources() {
        let list = "# comment\ndeb [arch=amd64] http://ftp.example/debian bookworm main\n";
        assert_eq!(
            mirror_from_sources("", list).as_deref(),
            Some("http://ftp.example/debian")
        );
        assert_eq!(mirror_from_sources("", ""), None);
    }

    #[test]
    fn image_ref_depends_on_platform() {
        assert_ne!(
            image_ref(DevicePlatform::Amd64),
            image_ref(DevicePlatform::Arm64)
        );
        assert!(image_ref(DevicePlatform::Arm64).contains("-arm64-"));
    }
}

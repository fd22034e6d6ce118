//! `fogswarm image build` against real registries and independent clients:
//! skopeo, umoci, the host's Docker Engine, and a lab swarm with an arm64
//! device.

use anyhow::{ensure, Context, Result};
use fogswarm_e2e::registry::LocalRegistry;
use fogswarm_e2e::{docker, eventually, fogswarm, http_get, serial, static_binary, Lab, Run};
use std::path::{Path, PathBuf};
use std::process::Command;

const PLATFORMS: [(&str, &str); 5] = [
    ("linux/amd64", "x86_64-unknown-linux-musl"),
    ("linux/arm64", "aarch64-unknown-linux-musl"),
    ("linux/arm/v7", "armv7-unknown-linux-gnueabihf"),
    ("linux/386", "i686-unknown-linux-musl"),
    ("linux/riscv64", "riscv64gc-unknown-linux-gnu"),
];

fn binaries(platforms: &[(&str, &str)]) -> Vec<String> {
    platforms
        .iter()
        .flat_map(|(p, t)| {
            [
                "--binary".to_string(),
                format!("{p}={}", static_binary("fog-hello", t).display()),
            ]
        })
        .collect()
}

fn image(args: &[String], env: &[(&str, &Path)]) -> Run {
    let mut cmd = Command::new(fogswarm());
    cmd.args(["image", "build"]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("fogswarm image build").into()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn skopeo_raw(reference: &str) -> Result<serde_json::Value> {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()?;
    ensure!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Runs an image on the host engine for a platform and asks it its arch.
async fn arch_served(reference: &str, platform: &str) -> Result<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let id = docker(&[
        "run",
        "-d",
        "--rm",
        "--platform",
        platform,
        "-p",
        &format!("127.0.0.1:{port}:8080"),
        reference,
    ])?;
    let id = id.trim().to_string();
    let answer = eventually(30, || async {
        http_get(&format!("127.0.0.1:{port}"), "/").map(|(_, b)| b)
    })
    .await;
    let _ = docker(&["rm", "-f", &id]);
    let body: serde_json::Value = serde_json::from_str(&answer?)?;
    Ok(body["arch"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_platforms_pushed_pulled_and_run_under_emulation() -> Result<()> {
    let _serial = serial().await;
    let registry = LocalRegistry::start(None)?;
    let reference = format!("{}/fog-hello:five", registry.addr);
    let mut args = s(&[
        "--tag",
        &reference,
        "--push",
        "--insecure",
        "--json",
        "--expose",
        "8080/tcp",
    ]);
    args.extend(binaries(&PLATFORMS));
    let run = image(&args, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary: serde_json::Value = serde_json::from_str(&run.stdout)?;

    let index = skopeo_raw(&reference)?;
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let manifests = index["manifests"].as_array().context("manifests")?;
    assert_eq!(manifests.len(), 5);
    let platforms: Vec<String> = manifests
        .iter()
        .map(|m| {
            let p = &m["platform"];
            match p["variant"].as_str() {
                Some(v) => format!(
                    "{}/{}/{v}",
                    p["os"].as_str().unwrap_or(""),
                    p["architecture"].as_str().unwrap_or("")
                ),
                None => format!(
                    "{}/{}",
                    p["os"].as_str().unwrap_or(""),
                    p["architecture"].as_str().unwrap_or("")
                ),
            }
        })
        .collect();
    assert_eq!(
        platforms,
        PLATFORMS
            .iter()
            .map(|(p, _)| p.to_string())
            .collect::<Vec<_>>()
    );
    // Each platform's config says the same platform as its index entry.
    for m in manifests {
        let digest = m["digest"].as_str().context("digest")?;
        let manifest = skopeo_raw(&format!("{}/fog-hello@{digest}", registry.addr))?;
        assert_eq!(
            manifest["layers"][0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let out = Command::new("skopeo")
            .args(["inspect", "--config", "--tls-verify=false"])
            .arg(format!("docker://{}/fog-hello@{digest}", registry.addr))
            .output()?;
        let config: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(config["architecture"], m["platform"]["architecture"]);
        assert_eq!(config["variant"], m["platform"]["variant"]);
    }
    // The registry holds the exact bytes pushed: their hash is the digest.
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()?;
    assert_eq!(
        summary["index_digest"].as_str(),
        Some(format!("sha256:{}", sha256_hex(&raw.stdout)).as_str())
    );

    // The host engine pulls the tag; under binfmt, arm64 and arm/v7 run.
    docker(&["pull", &reference])?;
    fogswarm_lab::binfmt::ensure_handler("qemu-aarch64")?;
    fogswarm_lab::binfmt::ensure_handler("qemu-arm")?;
    assert_eq!(arch_served(&reference, "linux/amd64").await?, "x86_64");
    assert_eq!(arch_served(&reference, "linux/arm64").await?, "aarch64");
    assert_eq!(arch_served(&reference, "linux/arm/v7").await?, "arm");
    let _ = docker(&["rmi", "-f", &reference]);

    // inspect reads it back.
    let out = Command::new(fogswarm())
        .args(["image", "inspect", "--insecure", "--json", &reference])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(inspected["digest"], summary["index_digest"]);
    assert_eq!(inspected["manifests"].as_array().map(Vec::len), Some(5));
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_layouts_archives_and_reproducible_pushes() -> Result<()> {
    let _serial = serial().await;
    let registry = LocalRegistry::start(None)?;
    let two = &PLATFORMS[..2];
    let dir = tempfile::tempdir()?;

    // Docker format: a manifest list the engine and skopeo accept.
    let docker_ref = format!("{}/fog-hello:docker", registry.addr);
    let mut args = s(&[
        "--tag",
        &docker_ref,
        "--push",
        "--insecure",
        "--format",
        "docker",
    ]);
    args.extend(binaries(two));
    let run = image(&args, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let list = skopeo_raw(&docker_ref)?;
    assert_eq!(
        list["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    assert!(list.get("annotations").is_none());
    docker(&["pull", &docker_ref])?;
    assert_eq!(arch_served(&docker_ref, "linux/amd64").await?, "x86_64");
    let _ = docker(&["rmi", "-f", &docker_ref]);

    // OCI layout: umoci lists the tag; skopeo copies it to the registry.
    let layout = dir.path().join("layout");
    let mut args = s(&[
        "--tag",
        &format!("{}/fog-hello:layout", registry.addr),
        "--oci-layout",
        layout.to_str().unwrap_or_default(),
    ]);
    args.extend(binaries(two));
    let run = image(&args, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let umoci = Command::new("umoci")
        .args(["ls", "--layout"])
        .arg(&layout)
        .output()?;
    assert!(
        umoci.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&umoci.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&umoci.stdout).trim(), "layout");
    let copied = Command::new("skopeo")
        .args(["copy", "--quiet", "--all", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:layout", layout.display()))
        .arg(format!("docker://{}/fog-hello:from-layout", registry.addr))
        .output()?;
    assert!(
        copied.status.success(),
        "skopeo copy oci: {}",
        String::from_utf8_lossy(&copied.stderr)
    );

    // Docker archive: docker load takes it, and it runs.
    let archive = dir.path().join("fog-hello.tar");
    let archive_ref = format!("{}/fog-hello:archive", registry.addr);
    let mut args = s(&[
        "--tag",
        &archive_ref,
        "--docker-archive",
        archive.to_str().unwrap_or_default(),
    ]);
    args.extend(binaries(two));
    let run = image(&args, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let loaded = docker(&["load", "-i", archive.to_str().unwrap_or_default()])?;
    assert!(loaded.contains(&archive_ref), "{loaded}");
    assert_eq!(arch_served(&archive_ref, "linux/amd64").await?, "x86_64");
    let _ = docker(&["rmi", "-f", &archive_ref]);

    // Reproducible: the same inputs, the same digest; the second push
    // uploads nothing.
    let repro = format!("{}/fog-hello:repro", registry.addr);
    let mut args = s(&[
        "--tag",
        &repro,
        "--push",
        "--insecure",
        "--json",
        "--label",
        "org.example.team=fog",
        "--annotation",
        "org.example.note=x",
    ]);
    args.extend(binaries(two));
    let first: serde_json::Value = serde_json::from_str(&image(&args, &[]).stdout)?;
    let second: serde_json::Value = serde_json::from_str(&image(&args, &[]).stdout)?;
    assert_eq!(first["index_digest"], second["index_digest"]);
    assert!(first["uploaded_bytes"].as_u64().unwrap_or(0) > 0);
    assert_eq!(
        second["uploaded_bytes"], 0,
        "the second push uploads no blob bytes"
    );
    // Everything the first push uploaded or found (the layers are shared
    // with the Docker-format push above: same bytes, same digests) is
    // skipped the second time.
    let total = |v: &serde_json::Value| {
        v["uploaded_bytes"].as_u64().unwrap_or(0) + v["skipped_bytes"].as_u64().unwrap_or(0)
    };
    assert_eq!(second["skipped_bytes"].as_u64(), Some(total(&first)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_from_the_docker_config() -> Result<()> {
    let _serial = serial().await;
    let registry = LocalRegistry::start(Some(("fog", "s3cret-pass")))?;
    let reference = format!("{}/fog-hello:auth", registry.addr);
    let mut args = s(&["--tag", &reference, "--push", "--insecure"]);
    args.extend(binaries(&PLATFORMS[..1]));

    let empty = tempfile::tempdir()?;
    let refused = image(&args, &[("DOCKER_CONFIG", empty.path())]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("refused the credentials"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("docker login"),
        "{}",
        refused.stderr
    );

    let config = tempfile::tempdir()?;
    std::fs::write(
        config.path().join("config.json"),
        serde_json::to_vec(
            &serde_json::json!({"auths": {registry.addr.clone(): {"auth": fogswarm_images::registry::encode_basic("fog", "s3cret-pass")}}}),
        )?,
    )?;
    let pushed = image(&args, &[("DOCKER_CONFIG", config.path())]);
    assert_eq!(pushed.code, 0, "{}", pushed.stderr);
    assert!(!pushed.stderr.contains("s3cret") && !pushed.stdout.contains("s3cret"));
    let wrong = tempfile::tempdir()?;
    std::fs::write(
        wrong.path().join("config.json"),
        serde_json::to_vec(
            &serde_json::json!({"auths": {registry.addr.clone(): {"auth": fogswarm_images::registry::encode_basic("fog", "wrong")}}}),
        )?,
    )?;
    let refused = image(&args, &[("DOCKER_CONFIG", wrong.path())]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("refused the credentials"),
        "{}",
        refused.stderr
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_chunked_uploads_and_mounts() -> Result<()> {
    let _serial = serial().await;
    let registry = LocalRegistry::start(None)?;
    // --package: cargo builds fog-hello for each platform.
    let dir = tempfile::tempdir()?;
    let layout = dir.path().join("pkg");
    let manifest = fogswarm_e2e::workspace_root().join("Cargo.toml");
    let run = image(
        &s(&[
            "--tag",
            &format!("{}/fog-hello:pkg", registry.addr),
            "--package",
            "fog-hello",
            "--manifest-path",
            manifest.to_str().unwrap_or_default(),
            "--profile",
            "release-small",
            "--platform",
            "linux/amd64,linux/arm64",
            "--oci-layout",
            layout.to_str().unwrap_or_default(),
            "--json",
        ]),
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary: serde_json::Value = serde_json::from_str(&run.stdout)?;
    assert_eq!(summary["platforms"].as_array().map(Vec::len), Some(2));
    assert_eq!(summary["platforms"][1]["platform"], "linux/arm64");

    // A layer over the chunk size goes up in PATCH chunks, and comes back whole.
    let big = dir.path().join("big.bin");
    // Random bytes, so gzip cannot shrink them under the chunk size.
    let mut data = vec![0u8; 6_000_000];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut data)?;
    std::fs::write(&big, &data)?;
    let chunked = format!("{}/fog-hello:chunked", registry.addr);
    let mut args = s(&[
        "--tag",
        &chunked,
        "--push",
        "--insecure",
        "--json",
        "--file",
        &format!("{}:/data/big.bin", big.display()),
    ]);
    args.extend(binaries(&PLATFORMS[..1]));
    let run = image(&args, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let pushed: serde_json::Value = serde_json::from_str(&run.stdout)?;
    assert!(
        pushed["platforms"][0]["layer_bytes"].as_u64().unwrap_or(0)
            > fogswarm_images::registry::CHUNK as u64
    );
    docker(&["pull", &chunked])?;
    let _ = docker(&["rmi", "-f", &chunked]);

    // Mount: another repository of the same registry takes the blobs
    // without their bytes.
    let mounted = format!("{}/other/fog-hello:chunked", registry.addr);
    let mut args = s(&[
        "--tag",
        &mounted,
        "--push",
        "--insecure",
        "--json",
        "--mount-from",
        "fog-hello",
        "--file",
        &format!("{}:/data/big.bin", big.display()),
    ]);
    args.extend(binaries(&PLATFORMS[..1]));
    let run = image(&args, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let again: serde_json::Value = serde_json::from_str(&run.stdout)?;
    assert_eq!(again["uploaded_bytes"], 0, "mounted, not uploaded");
    assert_eq!(again["index_digest"], pushed["index_digest"]);
    skopeo_raw(&mounted)?;
    Ok(())
}

#[test]
fn bad_input_is_refused_and_no_tag_moves() -> Result<()> {
    let registry = LocalRegistry::start(None)?;
    let reference = format!("{}/fog-hello:bad", registry.addr);
    let amd = static_binary("fog-hello", "x86_64-unknown-linux-musl")
        .display()
        .to_string();
    let arm = static_binary("fog-hello", "aarch64-unknown-linux-musl")
        .display()
        .to_string();
    let dynamic: PathBuf = std::env::current_exe()?;
    let script = tempfile::NamedTempFile::new()?;
    std::fs::write(script.path(), "#!/bin/sh\necho hi\n")?;
    let tag = |t: &str| vec!["--tag".to_string(), t.to_string()];
    let cases: Vec<(&str, Vec<String>, i32, String)> = vec![
        (
            "unknown platform",
            [
                tag(&reference),
                s(&[
                    "--push",
                    "--insecure",
                    "--binary",
                    &format!("linux/s390x={amd}"),
                ]),
            ]
            .concat(),
            2,
            "unknown platform \"linux/s390x\"".into(),
        ),
        (
            "duplicate platform",
            [
                tag(&reference),
                s(&[
                    "--push",
                    "--insecure",
                    "--platform",
                    "linux/amd64,linux/amd64",
                    "--binary",
                    &format!("linux/amd64={amd}"),
                ]),
            ]
            .concat(),
            2,
            "platform linux/amd64 is listed twice".into(),
        ),
        (
            "missing binary file",
            [
                tag(&reference),
                s(&[
                    "--push",
                    "--insecure",
                    "--binary",
                    "linux/amd64=/nonexistent/fog-hello",
                ]),
            ]
            .concat(),
            2,
            "/nonexistent/fog-hello does not exist".into(),
        ),
        (
            "platform without a binary",
            [
                tag(&reference),
                s(&[
                    "--push",
                    "--insecure",
                    "--platform",
                    "linux/amd64,linux/arm64",
                    "--binary",
                    &format!("linux/amd64={amd}"),
                ]),
            ]
            .concat(),
            2,
            "no --binary for platform linux/arm64".into(),
        ),
        (
            "binary for another arch",
            [
                tag(&reference),
                s(&[
                    "--push",
                    "--insecure",
                    "--binary",
                    &format!("linux/amd64={arm}"),
                ]),
            ]
            .concat(),
            2,
            "AArch64 (arm64) binary, not one for linux/amd64".into(),
        ),
        (
            "dynamic binary",
            [
                tag(&reference),
                s(&[
                    "--push",
                    "--insecure",
                    "--binary",
                    &format!("linux/amd64={}", dynamic.display()),
                ]),
            ]
            .concat(),
            2,
            "dynamically linked".into(),
        ),
        (
            "not an executable",
            [
                tag(&reference),
                s(&[
                    "--push",
                    "--insecure",
                    "--binary",
                    &format!("linux/amd64={}", script.path().display()),
                ]),
            ]
            .concat(),
            2,
            "not an ELF executable".into(),
        ),
        (
            "no output",
            [
                tag(&reference),
                s(&["--binary", &format!("linux/amd64={amd}")]),
            ]
            .concat(),
            2,
            "say where the image goes".into(),
        ),
        (
            "no source",
            [tag(&reference), s(&["--push"])].concat(),
            2,
            "give --package CRATE or --binary".into(),
        ),
        (
            "bad tag",
            [
                tag("fog-hello:v1"),
                s(&["--push", "--binary", &format!("linux/amd64={amd}")]),
            ]
            .concat(),
            2,
            "has no registry".into(),
        ),
        (
            "bad expose",
            [
                tag(&reference),
                s(&[
                    "--push",
                    "--insecure",
                    "--expose",
                    "http",
                    "--binary",
                    &format!("linux/amd64={amd}"),
                ]),
            ]
            .concat(),
            2,
            "--expose \"http\"".into(),
        ),
        (
            "layout in docker format",
            [
                tag(&reference),
                s(&[
                    "--oci-layout",
                    "/tmp/x",
                    "--format",
                    "docker",
                    "--binary",
                    &format!("linux/amd64={amd}"),
                ]),
            ]
            .concat(),
            2,
            "use --format oci".into(),
        ),
        (
            "registry unreachable",
            [
                tag("127.0.0.1:1/fog-hello:x"),
                s(&[
                    "--push",
                    "--insecure",
                    "--binary",
                    &format!("linux/amd64={amd}"),
                ]),
            ]
            .concat(),
            1,
            "cannot reach the registry 127.0.0.1:1".into(),
        ),
        (
            "TLS to a plain registry",
            [
                tag(&reference),
                s(&["--push", "--binary", &format!("linux/amd64={amd}")]),
            ]
            .concat(),
            1,
            format!("cannot reach the registry {}", registry.addr),
        ),
    ];
    let read_only = LocalRegistry::start_read_only()?;
    let ro_ref = format!("{}/fog-hello:bad", read_only.addr);
    let mut cases = cases;
    cases.push((
        "registry error mid-push",
        [
            tag(&ro_ref),
            s(&[
                "--push",
                "--insecure",
                "--binary",
                &format!("linux/amd64={amd}"),
            ]),
        ]
        .concat(),
        1,
        "the registry answered 405".into(),
    ));
    for (what, args, code, message) in cases {
        let run = image(&args, &[]);
        assert_eq!(run.code, code, "{what}: {}", run.stderr);
        assert!(
            run.stderr.contains(&message),
            "{what}: expected {message:?} in {}",
            run.stderr
        );
        let errors: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{what}: one error line in {}", run.stderr);
        assert!(
            run.stderr
                .trim_end()
                .lines()
                .last()
                .is_some_and(|l| l.starts_with("error:")),
            "{what}: {}",
            run.stderr
        );
        let inspect = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .output()?;
        assert!(
            !inspect.status.success(),
            "{what}: the tag exists after a refused build"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lab_swarm_schedules_every_arch_and_the_arm64_device_pulls_arm64() -> Result<()> {
    let _serial = serial().await;
    let mut lab = Lab::up(
        "e2e-img",
        "10.213.227.0/24",
        &["--devices", "2", "--arm64", "1"],
    )?;
    let registry = lab.status()?.registry.context("registry")?.addr;
    let reference = format!("{registry}/fog-hello:multi");
    let mut args = s(&["--tag", &reference, "--push", "--insecure"]);
    args.extend(binaries(&PLATFORMS[..2]));
    let run = image(&args, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    lab.exec(
        "dev1",
        &[
            "docker", "service", "create", "--detach", "--name", "hello", "--mode", "global",
            &reference,
        ],
    )?;
    let arm = lab.engine("dev2").await?;
    let arch = eventually(240, || async {
        let images = arm
            .docker
            .list_images(None::<bollard::query_parameters::ListImagesOptions>)
            .await?;
        let image = images
            .iter()
            .find(|i| {
                i.repo_digests
                    .iter()
                    .any(|d| d.starts_with(&format!("{registry}/fog-hello")))
            })
            .context("not pulled yet")?;
        let inspected = arm.docker.inspect_image(&image.id).await?;
        inspected.architecture.context("no architecture")
    })
    .await?;
    assert_eq!(arch, "arm64", "the arm64 device pulled the arm64 variant");
    let tasks = lab.exec(
        "dev1",
        &["docker", "service", "ps", "hello", "--format", "{{.Node}}"],
    )?;
    let mut nodes: Vec<&str> = tasks.lines().collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes, ["dev1", "dev2"], "a task on every device");
    lab.down();
    Ok(())
}

//! `fogswarm image build` and `fogswarm image inspect`: multi-arch scratch
//! images without a Docker daemon, for CI.

use crate::lab::BadInput;
use crate::table::Table;
use anyhow::{bail, Context, Result};
use clap::Args;
use fogswarm_images::build::{Blob, ImageSpec};
use fogswarm_images::{elf, platform, Format, Platform, Reference, RegistryClient};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Image reference, like 10.213.7.1:5000/fog-hello:v1.
    #[arg(long)]
    pub tag: String,
    /// Build this Cargo package for every platform.
    #[arg(long, conflicts_with = "binaries")]
    pub package: Option<String>,
    /// Cargo.toml of the package's workspace (also for --sbom-package).
    #[arg(long)]
    pub manifest_path: Option<PathBuf>,
    /// Cargo profile for --package.
    #[arg(long, requires = "package", default_value = "release")]
    pub profile: String,
    /// A prebuilt static executable, PLATFORM=PATH (repeatable).
    #[arg(long = "binary")]
    pub binaries: Vec<String>,
    /// Platforms, comma separated [default: linux/amd64,linux/arm64,linux/arm/v7,
    /// or those of --binary].
    #[arg(long)]
    pub platform: Option<String>,
    /// Push to the registry in the tag.
    #[arg(long, group = "output")]
    pub push: bool,
    /// Write an OCI image layout to this directory.
    #[arg(long, group = "output")]
    pub oci_layout: Option<PathBuf>,
    /// Write an archive `docker load` accepts (this machine's platform).
    #[arg(long, group = "output")]
    pub docker_archive: Option<PathBuf>,
    /// Media types: oci or docker.
    #[arg(long, default_value = "oci")]
    pub format: String,
    /// Entrypoint, as a JSON array or words [default: the binary].
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Default arguments, as a JSON array or words.
    #[arg(long)]
    pub cmd: Option<String>,
    /// Environment, K=V (repeatable).
    #[arg(long)]
    pub env: Vec<String>,
    /// Exposed port, PORT[/tcp|udp] (repeatable).
    #[arg(long)]
    pub expose: Vec<String>,
    /// Image label, K=V (repeatable).
    #[arg(long)]
    pub label: Vec<String>,
    /// OCI annotation on the index and manifests, K=V (repeatable).
    #[arg(long)]
    pub annotation: Vec<String>,
    /// User (uid or uid:gid) the entrypoint runs as.
    #[arg(long)]
    pub user: Option<String>,
    /// An extra file, SRC:DEST (repeatable).
    #[arg(long)]
    pub file: Vec<String>,
    /// Timestamp for everything in the image [default: $SOURCE_DATE_EPOCH, else 0].
    #[arg(long, env = "SOURCE_DATE_EPOCH")]
    pub source_date_epoch: Option<u64>,
    /// Plain HTTP to the registry.
    #[arg(long)]
    pub insecure: bool,
    /// Mount blobs from this repository of the same registry when it has them.
    #[arg(long)]
    pub mount_from: Option<String>,
    #[command(flatten)]
    pub auth: RegistryAuth,
    /// Attach an SPDX 2.3 SBOM per platform to the pushed image (when the
    /// crate is known: --package, or --sbom-package for --binary files);
    /// --sbom=false skips it.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub sbom: bool,
    /// The Cargo package the --binary files were built from, for the SBOM.
    #[arg(long, conflicts_with = "package")]
    pub sbom_package: Option<String>,
    /// Sign the pushed image (its index digest) with this private key, in
    /// the format cosign and containers/image verify.
    #[arg(long)]
    pub sign: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// Registry credentials for CI; without them, the Docker config file's
/// (credHelpers, auths, credsStore) are used, as `docker push` would.
#[derive(Args, Debug, Clone, Default)]
pub struct RegistryAuth {
    /// Registry user, with a token [env: FOGSWARM_REGISTRY_USER].
    #[arg(long)]
    pub registry_user: Option<String>,
    /// File holding the registry password or token [env:
    /// FOGSWARM_REGISTRY_TOKEN_FILE, or the token itself in
    /// FOGSWARM_REGISTRY_TOKEN]. Never a flag's value.
    #[arg(long)]
    pub registry_token_file: Option<PathBuf>,
}

impl RegistryAuth {
    /// A registry client with the credential these settings find.
    pub fn client(&self, registry: &str, insecure: bool) -> Result<RegistryClient> {
        let explicit = fogswarm_images::auth::Explicit {
            user: self.registry_user.clone(),
            token_file: self.registry_token_file.clone(),
        };
        let credential = fogswarm_images::auth::credential_for(registry, &explicit)
            .map_err(|e| bad(e.to_string()))?;
        Ok(RegistryClient::new(registry, insecure, credential)?)
    }
}

fn bad(msg: impl Into<String>) -> anyhow::Error {
    BadInput(msg.into()).into()
}

fn key_value(flag: &str, s: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(bad(format!("{flag} {s:?} is not KEY=VALUE"))),
    }
}

fn words(flag: &str, s: &str) -> Result<Vec<String>> {
    if s.trim_start().starts_with('[') {
        return serde_json::from_str(s)
            .map_err(|e| bad(format!("{flag}: not a JSON array of strings: {e}")));
    }
    Ok(s.split_whitespace().map(str::to_string).collect())
}

fn port(s: &str) -> Result<String> {
    let (number, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let ok = number.parse::<u16>().is_ok_and(|n| n > 0) && matches!(proto, "tcp" | "udp" | "sctp");
    if !ok {
        return Err(bad(format!("--expose {s:?} is not PORT[/tcp|udp|sctp]")));
    }
    Ok(format!("{number}/{proto}"))
}

/// Everything checked before any build or network call.
struct Plan {
    reference: Reference,
    format: Format,
    platforms: Vec<Platform>,
    /// `--binary` files by platform, checked (empty with `--package`).
    binaries: BTreeMap<Platform, PathBuf>,
    spec: ImageSpec,
}

fn plan(args: &BuildArgs) -> Result<Plan> {
    let reference = Reference::parse(&args.tag).map_err(|e| bad(e.to_string()))?;
    let format: Format = args.format.parse().map_err(bad)?;
    if !(args.push || args.oci_layout.is_some() || args.docker_archive.is_some()) {
        return Err(bad(
            "say where the image goes: --push, --oci-layout DIR or --docker-archive FILE",
        ));
    }
    if args.oci_layout.is_some() && format != Format::Oci {
        return Err(bad("an OCI layout holds OCI media types: use --format oci"));
    }
    if args.package.is_none() && args.binaries.is_empty() {
        return Err(bad("give --package CRATE or --binary PLATFORM=PATH"));
    }
    let mut binaries = BTreeMap::new();
    for b in &args.binaries {
        let (p, path) = key_value("--binary", b)?;
        let p: Platform = p.parse().map_err(bad)?;
        if binaries.insert(p, PathBuf::from(path)).is_some() {
            return Err(bad(format!("--binary gives platform {p} twice")));
        }
    }
    let platforms = match &args.platform {
        Some(list) => platform::parse_list(list).map_err(bad)?,
        None if !binaries.is_empty() => binaries.keys().copied().collect(),
        None => platform::DEFAULT.to_vec(),
    };
    if !binaries.is_empty() {
        for p in &platforms {
            if !binaries.contains_key(p) {
                return Err(bad(format!("no --binary for platform {p}")));
            }
        }
        for p in binaries.keys() {
            if !platforms.contains(p) {
                return Err(bad(format!(
                    "--binary for {p}, which --platform does not list"
                )));
            }
        }
    }
    let mut files = Vec::new();
    for f in &args.file {
        let (src, dest) = f
            .split_once(':')
            .ok_or_else(|| bad(format!("--file {f:?} is not SRC:DEST")))?;
        if !dest.starts_with('/') {
            return Err(bad(format!("--file destination {dest:?} must be absolute")));
        }
        if !std::path::Path::new(src).is_file() {
            return Err(bad(format!("--file source {src} is not a file")));
        }
        files.push((PathBuf::from(src), dest.to_string()));
    }
    let name = match (&args.package, binaries.values().next()) {
        (Some(p), _) => p.clone(),
        (None, Some(path)) => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "app".into()),
        (None, None) => "app".into(),
    };
    let spec = ImageSpec {
        binary_path: format!("/{name}"),
        entrypoint: args
            .entrypoint
            .as_deref()
            .map(|e| words("--entrypoint", e))
            .transpose()?,
        cmd: args.cmd.as_deref().map(|c| words("--cmd", c)).transpose()?,
        env: args
            .env
            .iter()
            .map(|e| key_value("--env", e).map(|(k, v)| format!("{k}={v}")))
            .collect::<Result<_>>()?,
        expose: args.expose.iter().map(|p| port(p)).collect::<Result<_>>()?,
        labels: args
            .label
            .iter()
            .map(|l| key_value("--label", l))
            .collect::<Result<_>>()?,
        annotations: args
            .annotation
            .iter()
            .map(|a| key_value("--annotation", a))
            .collect::<Result<_>>()?,
        user: args.user.clone(),
        files,
        source_date_epoch: args.source_date_epoch.unwrap_or(0),
        title: Some(name),
    };
    // Binaries: present and right for their platform.
    for (p, path) in &binaries {
        if !path.is_file() {
            return Err(bad(format!(
                "--binary {p}={} does not exist",
                path.display()
            )));
        }
        elf::check(path, *p).map_err(bad)?;
    }
    Ok(Plan {
        reference,
        format,
        platforms,
        binaries,
        spec,
    })
}

/// `cargo build` of the package for one platform; answers the executable.
fn cargo_build(args: &BuildArgs, package: &str, platform: Platform) -> Result<PathBuf> {
    let target = platform.rust_target();
    let installed = std::process::Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    if let Ok(out) = installed {
        if !String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == target)
        {
            bail!("the Rust target for {platform} is missing: run `rustup target add {target}`");
        }
    }
    if platform == Platform::ArmV7
        && crate::lab::tools::find_on_path("arm-linux-gnueabihf-gcc").is_none()
    {
        bail!(
            "building for {platform} needs a linker: run `apt-get install gcc-arm-linux-gnueabihf`"
        );
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "build",
        "--message-format=json-render-diagnostics",
        "-p",
        package,
        "--profile",
        &args.profile,
        "--target",
        target,
    ]);
    if let Some(m) = &args.manifest_path {
        cmd.arg("--manifest-path").arg(m);
    }
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!("cargo build -p {package} --target {target} failed");
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == package)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo built no executable named {package} for {target}"))
}

pub async fn build(args: BuildArgs) -> Result<()> {
    let started = Instant::now();
    let plan = plan(&args)?;
    if !args.push && args.sign.is_some() {
        return Err(bad(
            "--sign needs --push: a signature is stored beside the image in its registry",
        ));
    }
    // The key is read before anything is built or pushed: a bad key file
    // pushes nothing.
    let signing_key = match &args.sign {
        Some(path) => {
            Some(fogswarm_images::sign::SigningKey::load(path).map_err(|e| bad(e.to_string()))?)
        }
        None => None,
    };
    let mut binaries = Vec::new();
    for p in &plan.platforms {
        let path = match &args.package {
            Some(package) => {
                eprintln!("... cargo build -p {package} for {p}");
                let path = cargo_build(&args, package, *p)?;
                elf::check(&path, *p)
                    .map_err(|e| anyhow::anyhow!("{e}: build it static (musl, or +crt-static)"))?;
                path
            }
            None => plan
                .binaries
                .get(p)
                .cloned()
                .context("binary for platform")?,
        };
        binaries.push((*p, path));
    }
    let image = fogswarm_images::build(&plan.spec, &binaries, plan.format)
        .map_err(|e| anyhow::anyhow!(e))?;
    let mut report = None;
    let mut sboms = Vec::new();
    if args.push {
        eprintln!(
            "... pushing {} to {}",
            plan.reference, plan.reference.registry
        );
        let client = args.auth.client(&plan.reference.registry, args.insecure)?;
        // The dependency graph for the SBOMs (a `cargo metadata` run) is
        // read while the image is pushed.
        let graph = args
            .package
            .clone()
            .or(args.sbom_package.clone())
            .filter(|_| args.sbom)
            .map(|package| {
                let manifest_path = args.manifest_path.clone();
                tokio::task::spawn_blocking(move || {
                    fogswarm_images::sbom::Graph::read(&package, manifest_path.as_deref())
                })
            });
        report = Some(
            client
                .push(&plan.reference, &image, args.mount_from.as_deref())
                .await?,
        );
        if let Some(graph) = graph {
            let graph = graph.await.context("reading the dependency graph")??;
            eprintln!("... attaching an SBOM per platform");
            sboms = crate::supply::attach_sboms(
                &client,
                &plan.reference,
                &image,
                &graph,
                plan.spec.source_date_epoch,
            )
            .await?;
        }
        if let Some(key) = &signing_key {
            eprintln!("... signing {}", image.index.digest);
            crate::supply::sign_digest(&client, &plan.reference, &image.index.digest, key).await?;
        }
    }
    if let Some(dir) = &args.oci_layout {
        fogswarm_images::layout::write_oci_layout(dir, &image, &plan.reference.tag)
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    if let Some(file) = &args.docker_archive {
        let host = match std::env::consts::ARCH {
            "aarch64" => Platform::Arm64,
            "arm" => Platform::ArmV7,
            "x86" => Platform::I386,
            "riscv64" => Platform::Riscv64,
            _ => Platform::Amd64,
        };
        let chosen = if plan.platforms.contains(&host) {
            host
        } else {
            plan.platforms[0]
        };
        fogswarm_images::layout::write_docker_archive(
            file,
            &image,
            &plan.reference.to_string(),
            chosen,
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        if plan.platforms.len() > 1 {
            eprintln!(
                "note: the docker archive holds {chosen} (docker load takes one platform per tag)"
            );
        }
    }
    let summary = serde_json::json!({
        "reference": plan.reference.to_string(),
        "index_digest": image.index.digest,
        "media_type": image.index.media_type,
        "platforms": image.images.iter().map(|i| serde_json::json!({
            "platform": i.platform.to_string(),
            "manifest_digest": i.manifest.digest,
            "layer_bytes": i.layer.size(),
        })).collect::<Vec<_>>(),
        "uploaded_bytes": report.as_ref().map(|r| r.uploaded_bytes),
        "sboms": sboms.iter().map(|(p, d)| serde_json::json!({"platform": p, "digest": d})).collect::<Vec<_>>(),
        "signed_with": signing_key.as_ref().map(|k| k.key_id()),
        "skipped_bytes": report.as_ref().map(|r| r.skipped_bytes + r.mounted_bytes),
        "seconds": started.elapsed().as_secs_f64(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    let mut table = Table::new(&["PLATFORM", "MANIFEST", "LAYER BYTES"]);
    for i in &image.images {
        table.row([
            i.platform.to_string(),
            i.manifest.digest.clone(),
            i.layer.size().to_string(),
        ]);
    }
    table.print();
    println!("{} {}", plan.reference, image.index.digest);
    if let Some(r) = report {
        println!(
            "uploaded {} bytes in {} blobs; skipped {} bytes the registry had ({} mounted)",
            r.uploaded_bytes,
            r.blobs_uploaded,
            r.skipped_bytes + r.mounted_bytes,
            r.mounted_bytes
        );
    }
    Ok(())
}

/// Reads an image back: the index, each platform's manifest digest and
/// layer sizes.
pub async fn inspect(
    reference: &str,
    insecure: bool,
    auth: &RegistryAuth,
    json: bool,
) -> Result<()> {
    let reference = Reference::parse(reference).map_err(|e| bad(e.to_string()))?;
    let client = auth.client(&reference.registry, insecure)?;
    let top = client.get_manifest(&reference.name, &reference.tag).await?;
    let doc: serde_json::Value =
        serde_json::from_slice(&top.bytes).context("the registry's manifest is not JSON")?;
    let mut rows = Vec::new();
    let entries: Vec<serde_json::Value> = doc["manifests"].as_array().cloned().unwrap_or_default();
    let single: Vec<serde_json::Value> = if entries.is_empty() {
        vec![serde_json::json!({"digest": top.digest, "platform": null})]
    } else {
        entries
    };
    for entry in single {
        let digest = entry["digest"].as_str().unwrap_or_default().to_string();
        let manifest: Blob = client.get_manifest(&reference.name, &digest).await?;
        let m: serde_json::Value = serde_json::from_slice(&manifest.bytes).unwrap_or_default();
        let layers: Vec<u64> = m["layers"]
            .as_array()
            .map(|l| l.iter().filter_map(|x| x["size"].as_u64()).collect())
            .unwrap_or_default();
        let p = &entry["platform"];
        let platform = match (
            p["os"].as_str(),
            p["architecture"].as_str(),
            p["variant"].as_str(),
        ) {
            (Some(os), Some(arch), Some(v)) => format!("{os}/{arch}/{v}"),
            (Some(os), Some(arch), None) => format!("{os}/{arch}"),
            _ => "-".into(),
        };
        rows.push(serde_json::json!({"platform": platform, "digest": digest, "media_type": m["mediaType"], "layer_sizes": layers}));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"reference": reference.to_string(), "digest": top.digest, "media_type": top.media_type, "manifests": rows})
            )?
        );
        return Ok(());
    }
    println!("{} {} ({})", reference, top.digest, top.media_type);
    let mut table = Table::new(&["PLATFORM", "MANIFEST", "LAYER BYTES"]);
    for r in rows {
        table.row([
            r["platform"].as_str().unwrap_or("-").to_string(),
            r["digest"].as_str().unwrap_or("").to_string(),
            r["layer_sizes"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default(),
        ]);
    }
    table.print();
    Ok(())
}

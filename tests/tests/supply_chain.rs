//! Signatures and SBOMs, judged by implementations that are not ours:
//! sigstore-rs (the Sigstore project's Rust implementation of `cosign
//! verify --key`, built from `tests/cosign-verify`) verifies fogswarm's
//! signatures from the registry; skopeo reads the signature manifests and
//! OpenSSL verifies the signatures in cosign's layout too; both refuse a
//! tampered one and a wrong key. pyspdxtools validates the SPDX documents,
//! found from the image's digests through the referrers fallback tag. Bad keys, payloads
//! and lying registries get clear errors and change nothing.

use anyhow::{ensure, Context, Result};
use fogswarm_e2e::registry::LocalRegistry;
use fogswarm_e2e::{cosign_verifier, fogswarm, static_binary, workspace_root, Run};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn run(args: &[&str]) -> Run {
    Command::new(fogswarm())
        .args(args)
        .output()
        .expect("fogswarm")
        .into()
}

fn push(reference: &str, extra: &[&str]) -> Run {
    let amd = static_binary("fog-hello", "x86_64-unknown-linux-musl");
    let arm = static_binary("fog-hello", "aarch64-unknown-linux-musl");
    let manifest = workspace_root().join("Cargo.toml");
    let mut args = vec![
        "image".to_string(),
        "build".into(),
        "--tag".into(),
        reference.into(),
        "--push".into(),
        "--insecure".into(),
        "--json".into(),
        "--manifest-path".into(),
        manifest.display().to_string(),
        "--binary".into(),
        format!("linux/amd64={}", amd.display()),
        "--binary".into(),
        format!("linux/arm64={}", arm.display()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Command::new(fogswarm())
        .args(&args)
        .output()
        .expect("fogswarm image build")
        .into()
}

/// Uploads a blob by hand (monolithic upload); answers its digest.
async fn upload_blob(
    http: &reqwest::Client,
    registry: &str,
    repo: &str,
    bytes: &[u8],
) -> Result<String> {
    let digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
    );
    let upload = http
        .post(format!("http://{registry}/v2/{repo}/blobs/uploads/"))
        .send()
        .await?;
    let location = upload
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .context("no upload location")?
        .to_string();
    let location = if location.starts_with("http") {
        location
    } else {
        format!("http://{registry}{location}")
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = http
        .put(format!("{location}{sep}digest={digest}"))
        .body(bytes.to_vec())
        .send()
        .await?;
    ensure!(
        put.status().is_success(),
        "uploading {digest}: {}",
        put.status()
    );
    Ok(digest)
}

async fn get(client: &reqwest::Client, url: &str, accept: &str) -> Result<reqwest::Response> {
    Ok(client.get(url).header("accept", accept).send().await?)
}

/// Whether `digest` of `registry/name` carries a cosign signature by
/// `public_key`, checked without fogswarm: skopeo reads the signature
/// manifest at `sha256-HEX.sig`, the test follows cosign's layout (a
/// simple-signing payload per layer, the signature in an annotation), and
/// OpenSSL verifies the ECDSA signature over the payload.
///
/// (Debian's skopeo is built with sigstore disabled, "Debian-local change:
/// sigstore disabled", so a `sigstoreSigned` policy cannot be used here.)
async fn openssl_verifies(
    dir: &Path,
    http: &reqwest::Client,
    registry: &str,
    name: &str,
    digest: &str,
    public_key: &Path,
) -> Result<bool> {
    let reference = format!(
        "docker://{registry}/{name}:{}.sig",
        digest.replace(':', "-")
    );
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(&reference)
        .output()?;
    if !out.status.success() {
        return Ok(false);
    }
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    for (i, layer) in manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if layer["mediaType"] != "application/vnd.dev.cosign.simplesigning.v1+json" {
            continue;
        }
        let Some(signature) = layer["annotations"]["dev.cosignproject.cosign/signature"].as_str()
        else {
            continue;
        };
        let payload = http
            .get(format!(
                "http://{registry}/v2/{name}/blobs/{}",
                layer["digest"].as_str().unwrap_or("")
            ))
            .send()
            .await?
            .bytes()
            .await?;
        let claims: serde_json::Value = serde_json::from_slice(&payload)?;
        if claims["critical"]["image"]["docker-manifest-digest"] != digest
            || claims["critical"]["identity"]["docker-reference"] != format!("{registry}/{name}")
            || claims["critical"]["type"] != "cosign container image signature"
        {
            continue;
        }
        use base64::Engine as _;
        let Ok(der) = base64::engine::general_purpose::STANDARD.decode(signature) else {
            continue;
        };
        let (payload_file, sig_file) = (
            dir.join(format!("payload{i}")),
            dir.join(format!("sig{i}.der")),
        );
        std::fs::write(&payload_file, &payload)?;
        std::fs::write(&sig_file, der)?;
        let verified = Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(public_key)
            .arg("-signature")
            .arg(&sig_file)
            .arg(&payload_file)
            .output()?;
        if verified.status.success()
            && String::from_utf8_lossy(&verified.stdout).contains("Verified OK")
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether sigstore-rs verifies a signature of `image` (by digest) with
/// `public_key`, reading the registry over plain HTTP. A refusal must be
/// the key check's (signatures read, none verifying), not a failure to
/// read them.
fn cosign_verifies(verifier: &Path, image: &str, public_key: &Path) -> Result<bool> {
    let out = Command::new(verifier)
        .arg(image)
        .arg(public_key)
        .arg("--http")
        .output()?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    ensure!(
        if out.status.success() {
            stdout.starts_with("verified")
        } else {
            stderr.contains("unsatisfied constraint")
        },
        "cosign-verify {image}: {stdout}{stderr}"
    );
    Ok(out.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_verify_without_fogswarm_and_sboms_validate() -> Result<()> {
    let cosign = cosign_verifier();
    let registry = LocalRegistry::start(None)?;
    let dir = tempfile::tempdir()?;
    fogswarm_client::ensure_crypto_provider();
    let http = reqwest::Client::new();

    // Keys: the private one 0600; never over an existing pair.
    let prefix = dir.path().join("ci");
    let out = run(&["image", "keygen", "--out", &prefix.display().to_string()]);
    ensure!(out.code == 0, "keygen: {}", out.stderr);
    let (key, public) = (prefix.with_extension("key"), prefix.with_extension("pub"));
    ensure!(std::fs::metadata(&key)?.permissions().mode() & 0o777 == 0o600);
    let again = run(&["image", "keygen", "--out", &prefix.display().to_string()]);
    ensure!(
        again.code != 0 && again.stderr.contains("never overwrites"),
        "{}",
        again.stderr
    );
    let other = dir.path().join("other");
    ensure!(run(&["image", "keygen", "--out", &other.display().to_string()]).code == 0);
    let other_public = other.with_extension("pub");

    // A signed multi-arch push with an SBOM per platform.
    let reference = format!("{}/fog/hello:v1", registry.addr);
    let pushed = push(
        &reference,
        &[
            "--sign",
            &key.display().to_string(),
            "--sbom-package",
            "fog-hello",
        ],
    );
    ensure!(pushed.code == 0, "signed push: {}", pushed.stderr);
    let pushed: serde_json::Value = serde_json::from_str(&pushed.stdout)?;
    ensure!(pushed["signed_with"].is_string(), "{pushed}");
    ensure!(
        pushed["sboms"].as_array().map(Vec::len) == Some(2),
        "{pushed}"
    );

    // Our verifier, and skopeo's, accept it with the right key only.
    let verified = run(&[
        "image",
        "verify",
        &reference,
        "--insecure",
        "--key",
        &public.display().to_string(),
    ]);
    ensure!(verified.code == 0, "verify: {}", verified.stderr);
    let index_digest = pushed["index_digest"].as_str().context("index digest")?;
    let mut signed: Vec<String> = vec![index_digest.to_string()];
    for p in pushed["platforms"].as_array().context("platforms")? {
        signed.push(p["manifest_digest"].as_str().context("digest")?.to_string());
    }
    for digest in &signed {
        let image = format!("{}/fog/hello@{digest}", registry.addr);
        ensure!(
            cosign_verifies(&cosign, &image, &public)?,
            "sigstore-rs does not verify fogswarm's signature of {digest}"
        );
        ensure!(
            !cosign_verifies(&cosign, &image, &other_public)?,
            "sigstore-rs verified {digest} with another key"
        );
        ensure!(
            openssl_verifies(
                dir.path(),
                &http,
                &registry.addr,
                "fog/hello",
                digest,
                &public
            )
            .await?,
            "OpenSSL does not verify fogswarm's signature of {digest}"
        );
        ensure!(
            !openssl_verifies(
                dir.path(),
                &http,
                &registry.addr,
                "fog/hello",
                digest,
                &other_public
            )
            .await?,
            "OpenSSL verified {digest} with another key"
        );
    }
    let wrong = run(&[
        "image",
        "verify",
        &reference,
        "--insecure",
        "--key",
        &other_public.display().to_string(),
    ]);
    ensure!(
        wrong.code != 0 && wrong.stderr.contains("no signature by key"),
        "{}",
        wrong.stderr
    );

    // Tampered: one character of each signature changed in the registry
    // (the index's, which fogswarm checks, and each platform's, which
    // skopeo checks for the platform it copies).
    for digest in &signed {
        let sig_url = format!(
            "http://{}/v2/fog/hello/manifests/{}.sig",
            registry.addr,
            digest.replace(':', "-")
        );
        let original = get(&http, &sig_url, MANIFEST).await?.bytes().await?;
        let mut doc: serde_json::Value = serde_json::from_slice(&original)?;
        let annotation = &mut doc["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"];
        let mut sig = annotation
            .as_str()
            .context("signature annotation")?
            .to_string();
        // The DER signature's first bytes, flipped to another valid base64
        // character: the signature no longer verifies.
        let flipped = if sig.as_bytes()[8] == b'A' { "B" } else { "A" };
        sig.replace_range(8..9, flipped);
        *annotation = sig.into();
        let put = http
            .put(&sig_url)
            .header("content-type", MANIFEST)
            .body(serde_json::to_vec(&doc)?)
            .send()
            .await?;
        ensure!(
            put.status().is_success(),
            "re-pushing a tampered signature: {}",
            put.status()
        );
    }
    for digest in &signed {
        let image = format!("{}/fog/hello@{digest}", registry.addr);
        ensure!(
            !cosign_verifies(&cosign, &image, &public)?,
            "sigstore-rs verified a tampered signature of {digest}"
        );
        ensure!(
            !openssl_verifies(
                dir.path(),
                &http,
                &registry.addr,
                "fog/hello",
                digest,
                &public
            )
            .await?,
            "OpenSSL verified a tampered signature of {digest}"
        );
    }
    let tampered = run(&[
        "image",
        "verify",
        &reference,
        "--insecure",
        "--key",
        &public.display().to_string(),
    ]);
    ensure!(tampered.code != 0, "fogswarm accepted a tampered signature");
    // Signing again (image sign) repairs it.
    let resigned = run(&[
        "image",
        "sign",
        &reference,
        "--insecure",
        "--key",
        &key.display().to_string(),
    ]);
    ensure!(resigned.code == 0, "sign: {}", resigned.stderr);
    ensure!(
        run(&[
            "image",
            "verify",
            &reference,
            "--insecure",
            "--key",
            &public.display().to_string()
        ])
        .code
            == 0
    );

    // The SBOMs: found from each platform manifest through the referrers
    // fallback tag, valid SPDX 2.3 by pyspdxtools, listing fog-hello's
    // real dependencies at their locked versions.
    let lock = std::fs::read_to_string(workspace_root().join("Cargo.lock"))?;
    let libc_version = lock
        .split("[[package]]")
        .find(|b| b.contains("name = \"libc\""))
        .and_then(|b| b.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_string())
        .context("libc in Cargo.lock")?;
    for platform in pushed["platforms"].as_array().context("platforms")? {
        let digest = platform["manifest_digest"]
            .as_str()
            .context("manifest digest")?;
        let url = format!(
            "http://{}/v2/fog/hello/manifests/{}",
            registry.addr,
            digest.replace(':', "-")
        );
        let referrers: serde_json::Value = get(&http, &url, INDEX).await?.json().await?;
        let artifact = referrers["manifests"]
            .as_array()
            .and_then(|m| {
                m.iter()
                    .find(|d| d["artifactType"] == "application/spdx+json")
            })
            .context("no SPDX referrer listed")?;
        let url = format!(
            "http://{}/v2/fog/hello/manifests/{}",
            registry.addr,
            artifact["digest"].as_str().unwrap_or("")
        );
        let manifest: serde_json::Value = get(&http, &url, MANIFEST).await?.json().await?;
        ensure!(
            manifest["subject"]["digest"] == digest,
            "the SBOM's subject is its platform manifest"
        );
        let layer = manifest["layers"][0]["digest"]
            .as_str()
            .context("SBOM layer")?;
        let sbom = http
            .get(format!(
                "http://{}/v2/fog/hello/blobs/{layer}",
                registry.addr
            ))
            .send()
            .await?
            .bytes()
            .await?;
        let file = dir
            .path()
            .join(format!("sbom-{}.spdx.json", &digest[7..19]));
        std::fs::write(&file, &sbom)?;
        let check = Command::new("pyspdxtools").arg("-i").arg(&file).output()?;
        ensure!(
            check.status.success(),
            "pyspdxtools refused the SBOM: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let doc: serde_json::Value = serde_json::from_slice(&sbom)?;
        ensure!(doc["spdxVersion"] == "SPDX-2.3");
        let packages = doc["packages"].as_array().context("packages")?;
        let has = |name: &str, version: &str| {
            packages
                .iter()
                .any(|p| p["name"] == name && p["versionInfo"] == version)
        };
        ensure!(
            has("fog-hello", env!("CARGO_PKG_VERSION")),
            "fog-hello missing from {file:?}"
        );
        ensure!(
            has("libc", &libc_version),
            "libc {libc_version} missing from {file:?}"
        );
        ensure!(
            packages.iter().all(|p| p["name"] != "tempfile"),
            "a dev-dependency is not in the binary, nor in its SBOM"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_payloads_and_lying_registries_change_nothing() -> Result<()> {
    let registry = LocalRegistry::start(None)?;
    let dir = tempfile::tempdir()?;
    let prefix = dir.path().join("k");
    ensure!(run(&["image", "keygen", "--out", &prefix.display().to_string()]).code == 0);
    let public = prefix.with_extension("pub").display().to_string();
    fogswarm_client::ensure_crypto_provider();
    let http = reqwest::Client::new();

    // An unsigned image, no SBOM: nothing verifies, nothing is listed.
    let plain = format!("{}/fog/plain:v1", registry.addr);
    let pushed = push(&plain, &["--sbom=false"]);
    ensure!(pushed.code == 0, "{}", pushed.stderr);
    let pushed: serde_json::Value = serde_json::from_str(&pushed.stdout)?;
    let unsigned = run(&["image", "verify", &plain, "--insecure", "--key", &public]);
    ensure!(
        unsigned.code != 0 && unsigned.stderr.contains("0 signature(s)"),
        "{}",
        unsigned.stderr
    );
    let digest = pushed["platforms"][0]["manifest_digest"]
        .as_str()
        .context("digest")?;
    let referrers = get(
        &http,
        &format!(
            "http://{}/v2/fog/plain/manifests/{}",
            registry.addr,
            digest.replace(':', "-")
        ),
        INDEX,
    )
    .await?;
    ensure!(referrers.status() == 404, "--sbom=false attached something");

    // A corrupt key: a clear error naming the file, and no signature.
    let corrupt = dir.path().join("corrupt.key");
    std::fs::write(
        &corrupt,
        "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n",
    )?;
    let signed = run(&[
        "image",
        "sign",
        &plain,
        "--insecure",
        "--key",
        &corrupt.display().to_string(),
    ]);
    ensure!(
        signed.code != 0 && signed.stderr.contains("corrupt.key"),
        "{}",
        signed.stderr
    );
    let index = pushed["index_digest"].as_str().context("index")?;
    let sig_url = format!(
        "http://{}/v2/fog/plain/manifests/{}.sig",
        registry.addr,
        index.replace(':', "-")
    );
    ensure!(
        get(&http, &sig_url, MANIFEST).await?.status() == 404,
        "a bad key left a signature"
    );
    let build = push(
        &format!("{}/fog/plain:v2", registry.addr),
        &["--sign", &corrupt.display().to_string()],
    );
    ensure!(
        build.code != 0 && build.stderr.contains("corrupt.key"),
        "{}",
        build.stderr
    );
    let v2 = get(
        &http,
        &format!("http://{}/v2/fog/plain/manifests/v2", registry.addr),
        INDEX,
    )
    .await?;
    ensure!(v2.status() == 404, "a build with a bad key pushed its tag");

    // A signature whose payload is not JSON: refused, said so.
    let payload = b"this is no simple-signing payload".to_vec();
    let payload_digest = upload_blob(&http, &registry.addr, "fog/plain", &payload).await?;
    let config_digest = upload_blob(&http, &registry.addr, "fog/plain", b"{}").await?;
    let sig_manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": 2},
        "layers": [{
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "digest": payload_digest,
            "size": payload.len(),
            "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQ=="},
        }],
    });
    let put = http
        .put(&sig_url)
        .header("content-type", MANIFEST)
        .body(serde_json::to_vec(&sig_manifest)?)
        .send()
        .await?;
    ensure!(put.status().is_success(), "{}", put.status());
    let out = run(&["image", "verify", &plain, "--insecure", "--key", &public]);
    ensure!(
        out.code != 0 && out.stderr.contains("not JSON"),
        "{}",
        out.stderr
    );

    // A registry whose manifest does not match the digest asked for.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let liar = listener.local_addr()?;
    let app = axum::Router::new().fallback(|| async {
        (
            [("content-type", INDEX), ("docker-content-digest", "sha256:0000")],
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
        )
    });
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let asked = format!("{liar}/fog/x@sha256:{}", "1".repeat(64));
    for args in [
        vec![
            "image",
            "verify",
            asked.as_str(),
            "--insecure",
            "--key",
            public.as_str(),
        ],
        vec!["image", "inspect", asked.as_str(), "--insecure"],
    ] {
        let out = run(&args);
        ensure!(
            out.code != 0
                && out.stderr.contains("whose digest is")
                && out.stderr.contains("refusing"),
            "{args:?}: {}",
            out.stderr
        );
    }
    server.abort();
    Ok(())
}

//! CI's supply chain: SBOMs attached to pushed images, cosign-format
//! signatures (`fogswarm image keygen|sign|verify`, `build --sign`), read
//! back the way cosign and containers/image read them.

use crate::image::RegistryAuth;
use crate::lab::BadInput;
use anyhow::{Context, Result};
use fogswarm_images::build::Blob;
use fogswarm_images::sign::{self, repository, verify_with, SigningKey, VerifyingKey};
use fogswarm_images::{sbom, BuiltImage, Reference, RegistryClient};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

fn bad(msg: impl Into<String>) -> anyhow::Error {
    BadInput(msg.into()).into()
}

/// Builds each platform's SBOM from the crate's dependency graph (one
/// `cargo metadata` run, [`sbom::Graph`]) and attaches it to the
/// platform's manifest; answers (platform, SBOM artifact digest).
pub async fn attach_sboms(
    client: &RegistryClient,
    reference: &Reference,
    image: &BuiltImage,
    graph: &sbom::Graph,
    created: u64,
) -> Result<Vec<(String, String)>> {
    // One platform's SBOM at a time would be four sequential rounds of
    // uploads (document, manifest, referrers): they are independent, each
    // attached to its own platform manifest, so they go together.
    let attach = image.images.iter().map(|platform_image| async move {
        let platform = platform_image.platform;
        let bill = graph.bill(platform.rust_target())?;
        let document = sbom::document(
            &bill,
            &platform.to_string(),
            &platform_image.manifest.digest,
            created,
        );
        let artifact = client
            .push_referrer(
                &reference.name,
                &platform_image.manifest,
                sbom::MEDIA_TYPE,
                &Blob::new(sbom::MEDIA_TYPE, document),
            )
            .await
            .with_context(|| format!("attaching the SBOM of {platform}"))?;
        Ok::<_, anyhow::Error>((platform.to_string(), artifact.digest))
    });
    futures_util::future::try_join_all(attach).await
}

/// Signs `digest` of `reference`'s repository and stores the signature;
/// for an index, each platform manifest in it too (cosign's
/// `--recursive`): verifiers that pull one platform, as containers/image
/// does, check that platform's manifest. Answers how many were signed.
pub async fn sign_digest(
    client: &RegistryClient,
    reference: &Reference,
    digest: &str,
    key: &SigningKey,
) -> Result<usize> {
    let top = client.get_manifest(&reference.name, digest).await?;
    let mut digests = vec![digest.to_string()];
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&top.bytes) {
        digests.extend(
            doc["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["digest"].as_str().map(str::to_string)),
        );
    }
    for d in &digests {
        let payload = sign::payload(&repository(reference), d);
        let signature = key.sign(&payload)?;
        client
            .push_signature(
                &reference.name,
                d,
                &Blob::new(sign::PAYLOAD_MEDIA_TYPE, payload),
                &signature,
            )
            .await?;
    }
    Ok(digests.len())
}

/// The manifest digest a reference names (a tag is resolved once).
async fn resolve(client: &RegistryClient, reference: &Reference) -> Result<String> {
    Ok(client
        .get_manifest(&reference.name, &reference.tag)
        .await
        .with_context(|| format!("resolving {reference}"))?
        .digest)
}

fn parse(reference: &str) -> Result<Reference> {
    Reference::parse(reference).map_err(|e| bad(e.to_string()))
}

/// `fogswarm image keygen`: PREFIX.key (0600) and PREFIX.pub; never over
/// an existing file.
pub fn keygen(prefix: &Path) -> Result<(PathBuf, PathBuf)> {
    let private = prefix.with_extension("key");
    let public = prefix.with_extension("pub");
    for p in [&private, &public] {
        if p.exists() {
            return Err(bad(format!(
                "{} exists; keygen never overwrites a key",
                p.display()
            )));
        }
    }
    let (private_pem, public_pem) = sign::generate()?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&private)
        .with_context(|| format!("creating {}", private.display()))?;
    file.write_all(private_pem.as_bytes())?;
    std::fs::write(&public, public_pem).with_context(|| format!("writing {}", public.display()))?;
    Ok((private, public))
}

/// `fogswarm image sign REF --key FILE`.
pub async fn sign_image(
    reference: &str,
    key: &Path,
    insecure: bool,
    auth: &RegistryAuth,
    json: bool,
) -> Result<()> {
    let reference = parse(reference)?;
    // The key first: a bad key file pushes nothing.
    let key = SigningKey::load(key).map_err(|e| bad(e.to_string()))?;
    let client = auth.client(&reference.registry, insecure)?;
    let digest = resolve(&client, &reference).await?;
    let count = sign_digest(&client, &reference, &digest, &key).await?;
    let signed = format!("{}@{digest}", repository(&reference));
    if json {
        println!(
            "{}",
            serde_json::json!({"signed": signed, "manifests": count, "key_id": key.key_id()})
        );
    } else {
        println!(
            "signed {signed} ({count} manifests) with key {}",
            &key.key_id()[..16]
        );
    }
    Ok(())
}

/// `fogswarm image verify REF --key FILE [--key FILE ...]`.
pub async fn verify_image(
    reference: &str,
    keys: &[PathBuf],
    insecure: bool,
    auth: &RegistryAuth,
    json: bool,
) -> Result<()> {
    let reference = parse(reference)?;
    if keys.is_empty() {
        return Err(bad("give the public key: --key FILE"));
    }
    let keys = keys
        .iter()
        .map(|k| VerifyingKey::load(k).map_err(|e| bad(e.to_string())))
        .collect::<Result<Vec<_>>>()?;
    let client = auth.client(&reference.registry, insecure)?;
    let digest = resolve(&client, &reference).await?;
    let verified = verify_with(&client, &reference, &digest, &keys).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({"verified": verified.image, "key_id": verified.key_id})
        );
    } else {
        println!(
            "verified {} with key {}",
            verified.image,
            &verified.key_id[..16]
        );
    }
    Ok(())
}

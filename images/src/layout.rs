//! Writing images to files: an OCI image layout directory, or an archive
//! `docker load` accepts.

use crate::build::{Blob, BuiltImage, Format};
use crate::platform::Platform;
use std::path::Path;

fn write_blob(dir: &Path, blob: &Blob) -> Result<(), String> {
    let hex = blob.digest.trim_start_matches("sha256:");
    let path = dir.join("blobs/sha256").join(hex);
    std::fs::create_dir_all(path.parent().unwrap_or(dir))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::write(&path, &blob.bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// An OCI image layout: `oci-layout`, `index.json` naming the image index
/// with the tag as `org.opencontainers.image.ref.name`, and every blob.
pub fn write_oci_layout(dir: &Path, image: &BuiltImage, tag: &str) -> Result<(), String> {
    if image.format != Format::Oci {
        return Err("an OCI layout holds OCI media types: use --format oci".into());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(|e| e.to_string())?;
    for blob in image.blobs() {
        write_blob(dir, blob)?;
    }
    for p in &image.images {
        write_blob(dir, &p.manifest)?;
    }
    write_blob(dir, &image.index)?;
    let top = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": image.index.media_type,
            "digest": image.index.digest,
            "size": image.index.size(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), crate::build::canonical_json(&top)?)
        .map_err(|e| e.to_string())
}

/// An archive for `docker load`: `manifest.json` with the config, the tag
/// and the layer, and the blobs. `docker load` takes one platform per tag,
/// so the archive holds `platform`'s image.
pub fn write_docker_archive(
    file: &Path,
    image: &BuiltImage,
    tag: &str,
    platform: Platform,
) -> Result<(), String> {
    let chosen = image
        .images
        .iter()
        .find(|i| i.platform == platform)
        .ok_or_else(|| format!("the image has no {platform} variant for the archive"))?;
    let path = |b: &Blob| format!("blobs/sha256/{}", b.digest.trim_start_matches("sha256:"));
    let manifest = serde_json::json!([{
        "Config": path(&chosen.config),
        "RepoTags": [tag],
        "Layers": [path(&chosen.layer)],
    }]);
    let mut entries: Vec<(String, &[u8])> = vec![
        (path(&chosen.config), &chosen.config.bytes),
        (path(&chosen.layer), &chosen.layer.bytes),
    ];
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    entries.push(("manifest.json".into(), &manifest_bytes));
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs_done = std::collections::BTreeSet::new();
    for (name, bytes) in entries {
        if let Some((dir, _)) = name.rsplit_once('/') {
            let mut acc = String::new();
            for part in dir.split('/') {
                acc = if acc.is_empty() {
                    part.to_string()
                } else {
                    format!("{acc}/{part}")
                };
                if dirs_done.insert(acc.clone()) {
                    let mut h = tar::Header::new_ustar();
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    h.set_mtime(0);
                    builder
                        .append_data(&mut h, format!("{acc}/"), std::io::empty())
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(bytes.len() as u64);
        h.set_mtime(0);
        builder
            .append_data(&mut h, &name, bytes)
            .map_err(|e| e.to_string())?;
    }
    let bytes = builder.into_inner().map_err(|e| e.to_string())?;
    std::fs::write(file, bytes).map_err(|e| format!("{}: {e}", file.display()))
}

//! Building images: one deterministic layer per platform, its config and
//! manifest, and an OCI index or Docker manifest list over them.
//!
//! Every document is serialised once, to canonical JSON (sorted keys), and
//! hashed and shipped as those exact bytes: the same inputs give the same
//! digests on every run and machine.

use crate::platform::Platform;
use flate2::{Compression, GzBuilder};
use oci_spec::image::{
    Arch, ConfigBuilder, DescriptorBuilder, HistoryBuilder, ImageConfigurationBuilder,
    ImageIndexBuilder, ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder,
};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;

/// The media type family: never mixed within one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Oci,
    Docker,
}

impl Format {
    pub fn layer(self) -> &'static str {
        match self {
            Format::Oci => "application/vnd.oci.image.layer.v1.tar+gzip",
            Format::Docker => "application/vnd.docker.image.rootfs.diff.tar.gzip",
        }
    }
    pub fn config(self) -> &'static str {
        match self {
            Format::Oci => "application/vnd.oci.image.config.v1+json",
            Format::Docker => "application/vnd.docker.container.image.v1+json",
        }
    }
    pub fn manifest(self) -> &'static str {
        match self {
            Format::Oci => "application/vnd.oci.image.manifest.v1+json",
            Format::Docker => "application/vnd.docker.distribution.manifest.v2+json",
        }
    }
    pub fn index(self) -> &'static str {
        match self {
            Format::Oci => "application/vnd.oci.image.index.v1+json",
            Format::Docker => "application/vnd.docker.distribution.manifest.list.v2+json",
        }
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "oci" => Ok(Format::Oci),
            "docker" => Ok(Format::Docker),
            other => Err(format!("format {other:?} is not oci or docker")),
        }
    }
}

/// Content-addressed bytes with their media type.
#[derive(Debug, Clone, PartialEq)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.into(),
            digest: sha256(&bytes),
            bytes,
        }
    }
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[derive(Debug, Clone)]
pub struct PlatformImage {
    pub platform: Platform,
    pub manifest: Blob,
    pub config: Blob,
    pub layer: Blob,
    /// sha256 of the uncompressed layer tar.
    pub diff_id: String,
}

#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub format: Format,
    pub index: Blob,
    pub images: Vec<PlatformImage>,
}

impl BuiltImage {
    /// Every blob (layers, configs), each once.
    pub fn blobs(&self) -> Vec<&Blob> {
        let mut seen = std::collections::BTreeSet::new();
        self.images
            .iter()
            .flat_map(|i| [&i.layer, &i.config])
            .filter(|b| seen.insert(b.digest.clone()))
            .collect()
    }
}

/// What goes into every platform's image besides its binary.
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    /// Path of the binary inside the image, like `/fog-hello`.
    pub binary_path: String,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub expose: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub user: Option<String>,
    /// Extra files: (source on this machine, destination in the image).
    pub files: Vec<(PathBuf, String)>,
    pub source_date_epoch: u64,
    pub title: Option<String>,
}

/// Builds the image for every platform from its binary.
pub fn build(
    spec: &ImageSpec,
    binaries: &[(Platform, PathBuf)],
    format: Format,
) -> Result<BuiltImage, String> {
    let mut images = Vec::new();
    for (platform, binary) in binaries {
        images.push(build_one(spec, *platform, binary, format)?);
    }
    let manifests = images
        .iter()
        .map(|i| {
            let mut platform = PlatformBuilder::default()
                .architecture(Arch::from(i.platform.architecture()))
                .os(Os::from(i.platform.os()));
            if let Some(v) = i.platform.variant() {
                platform = platform.variant(v.to_string());
            }
            DescriptorBuilder::default()
                .media_type(MediaType::from(format.manifest()))
                .digest(digest(&i.manifest.digest)?)
                .size(i.manifest.size())
                .platform(platform.build().map_err(|e| e.to_string())?)
                .build()
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    let mut index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::from(format.index()))
        .manifests(manifests);
    if format == Format::Oci {
        let mut annotations = oci_annotations(spec);
        annotations.extend(spec.annotations.clone());
        index = index.annotations(annotations.into_iter().collect::<HashMap<_, _>>());
    }
    let index = index.build().map_err(|e| e.to_string())?;
    Ok(BuiltImage {
        format,
        index: Blob::new(format.index(), canonical_json(&index)?),
        images,
    })
}

fn oci_annotations(spec: &ImageSpec) -> BTreeMap<String, String> {
    let mut a = BTreeMap::from([(
        "org.opencontainers.image.created".to_string(),
        rfc3339(spec.source_date_epoch),
    )]);
    if let Some(title) = &spec.title {
        a.insert("org.opencontainers.image.title".into(), title.clone());
    }
    a
}

fn digest(s: &str) -> Result<oci_spec::image::Digest, String> {
    oci_spec::image::Digest::from_str(s).map_err(|e| e.to_string())
}

fn build_one(
    spec: &ImageSpec,
    platform: Platform,
    binary: &std::path::Path,
    format: Format,
) -> Result<PlatformImage, String> {
    let tar = layer_tar(spec, binary)?;
    let diff_id = sha256(&tar);
    let layer = Blob::new(format.layer(), gzip(&tar)?);
    let created = rfc3339(spec.source_date_epoch);

    let mut labels = oci_annotations(spec);
    labels.extend(spec.labels.clone());
    let mut config = ConfigBuilder::default()
        .entrypoint(
            spec.entrypoint
                .clone()
                .unwrap_or_else(|| vec![spec.binary_path.clone()]),
        )
        .labels(labels.into_iter().collect::<HashMap<_, _>>());
    if let Some(cmd) = &spec.cmd {
        config = config.cmd(cmd.clone());
    }
    if !spec.env.is_empty() {
        config = config.env(spec.env.clone());
    }
    if !spec.expose.is_empty() {
        config = config.exposed_ports(spec.expose.clone());
    }
    if let Some(user) = &spec.user {
        config = config.user(user.clone());
    }
    let mut image_config = ImageConfigurationBuilder::default()
        .created(created.clone())
        .architecture(Arch::from(platform.architecture()))
        .os(Os::from(platform.os()))
        .config(config.build().map_err(|e| e.to_string())?)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![diff_id.clone()])
                .build()
                .map_err(|e| e.to_string())?,
        )
        .history(vec![HistoryBuilder::default()
            .created(created)
            .created_by(format!("fogswarm image build ({})", spec.binary_path))
            .build()
            .map_err(|e| e.to_string())?]);
    if let Some(v) = platform.variant() {
        image_config = image_config.variant(v.to_string());
    }
    let config = Blob::new(
        format.config(),
        canonical_json(&image_config.build().map_err(|e| e.to_string())?)?,
    );

    let mut manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::from(format.manifest()))
        .config(
            DescriptorBuilder::default()
                .media_type(MediaType::from(format.config()))
                .digest(digest(&config.digest)?)
                .size(config.size())
                .build()
                .map_err(|e| e.to_string())?,
        )
        .layers(vec![DescriptorBuilder::default()
            .media_type(MediaType::from(format.layer()))
            .digest(digest(&layer.digest)?)
            .size(layer.size())
            .build()
            .map_err(|e| e.to_string())?]);
    if format == Format::Oci && !spec.annotations.is_empty() {
        manifest = manifest.annotations(
            spec.annotations
                .clone()
                .into_iter()
                .collect::<HashMap<_, _>>(),
        );
    }
    let manifest = Blob::new(
        format.manifest(),
        canonical_json(&manifest.build().map_err(|e| e.to_string())?)?,
    );
    Ok(PlatformImage {
        platform,
        manifest,
        config,
        layer,
        diff_id,
    })
}

/// One entry of a layer: a directory, or a file's bytes and mode.
enum LayerEntry<'a> {
    Dir,
    File(&'a [u8], u32),
}

/// A tar of the binary and extra files: entries sorted, parent directories
/// included, owner 0:0, fixed modes, one mtime.
pub fn layer_tar(spec: &ImageSpec, binary: &std::path::Path) -> Result<Vec<u8>, String> {
    let mut files: BTreeMap<String, (Vec<u8>, u32)> = BTreeMap::new();
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    files.insert(
        spec.binary_path.trim_start_matches('/').to_string(),
        (read(binary)?, 0o755),
    );
    for (src, dest) in &spec.files {
        let dest = dest.trim_start_matches('/').to_string();
        if dest.is_empty() || dest.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(format!(
                "--file destination {dest:?} is not a clean absolute path"
            ));
        }
        let executable = std::fs::metadata(src)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
            .unwrap_or(false);
        files.insert(dest, (read(src)?, if executable { 0o755 } else { 0o644 }));
    }
    let mut dirs = std::collections::BTreeSet::new();
    for path in files.keys() {
        let mut parts: Vec<&str> = path.split('/').collect();
        parts.pop();
        for i in 1..=parts.len() {
            dirs.insert(format!("{}/", parts[..i].join("/")));
        }
    }
    let mut entries: Vec<(String, LayerEntry)> =
        dirs.into_iter().map(|d| (d, LayerEntry::Dir)).collect();
    entries.extend(
        files
            .iter()
            .map(|(p, (b, m))| (p.clone(), LayerEntry::File(b, *m))),
    );
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut builder = tar::Builder::new(Vec::new());
    for (path, file) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(spec.source_date_epoch);
        match file {
            LayerEntry::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder
                    .append_data(&mut header, &path, std::io::empty())
                    .map_err(|e| e.to_string())?;
            }
            LayerEntry::File(bytes, mode) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(mode);
                header.set_size(bytes.len() as u64);
                builder
                    .append_data(&mut header, &path, bytes)
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    builder.into_inner().map_err(|e| e.to_string())
}

/// gzip with a fixed header (mtime 0, no file name) and level.
pub fn gzip(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut encoder = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::best());
    encoder.write_all(bytes).map_err(|e| e.to_string())?;
    encoder.finish().map_err(|e| e.to_string())
}

/// JSON with object keys sorted at every level: maps in oci-spec's types
/// are HashMaps, whose order changes from run to run.
pub fn canonical_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, String> {
    fn sort(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let sorted: BTreeMap<String, serde_json::Value> =
                    map.into_iter().map(|(k, v)| (k, sort(v))).collect();
                serde_json::Value::Object(sorted.into_iter().collect())
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(sort).collect())
            }
            other => other,
        }
    }
    let value = serde_json::to_value(value).map_err(|e| e.to_string())?;
    serde_json::to_vec(&sort(value)).map_err(|e| e.to_string())
}

/// Seconds since the epoch as RFC 3339 UTC (civil-from-days, no calendar
/// library needed).
pub fn rfc3339(epoch: u64) -> String {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ImageSpec {
        ImageSpec {
            binary_path: "/app".into(),
            labels: BTreeMap::from([("b".into(), "2".into()), ("a".into(), "1".into())]),
            ..Default::default()
        }
    }

    fn binary(dir: &tempfile::TempDir) -> PathBuf {
        let p = dir.path().join("app");
        std::fs::write(&p, b"\x7fELF fake binary for layer tests").expect("write");
        p
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn same_inputs_same_digests() {
        let dir = tempfile::tempdir().expect("tmp");
        let bin = binary(&dir);
        let a = build(
            &spec(),
            &[
                (Platform::Amd64, bin.clone()),
                (Platform::ArmV7, bin.clone()),
            ],
            Format::Oci,
        )
        .expect("a");
        let b = build(
            &spec(),
            &[(Platform::Amd64, bin.clone()), (Platform::ArmV7, bin)],
            Format::Oci,
        )
        .expect("b");
        assert_eq!(a.index.digest, b.index.digest);
        assert_eq!(a.index.bytes, b.index.bytes);
    }

    #[test]
    fn layer_has_sorted_entries_with_parents_and_fixed_metadata() {
        let dir = tempfile::tempdir().expect("tmp");
        let bin = binary(&dir);
        let conf = dir.path().join("conf");
        std::fs::write(&conf, b"x=1").expect("write");
        let mut s = spec();
        s.files = vec![(conf, "/etc/app/app.conf".into())];
        s.source_date_epoch = 1234;
        let tar = layer_tar(&s, &bin).expect("tar");
        let mut archive = tar::Archive::new(tar.as_slice());
        let entries: Vec<(String, u32, u64, u64)> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                let h = e.header();
                (
                    e.path().expect("path").display().to_string(),
                    h.mode().expect("mode"),
                    h.uid().expect("uid"),
                    h.mtime().expect("mtime"),
                )
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("app".to_string(), 0o755, 0, 1234),
                ("etc/".to_string(), 0o755, 0, 1234),
                ("etc/app/".to_string(), 0o755, 0, 1234),
                ("etc/app/app.conf".to_string(), 0o644, 0, 1234),
            ]
        );
    }

    #[test]
    fn documents_follow_the_format_and_platform() {
        let dir = tempfile::tempdir().expect("tmp");
        let bin = binary(&dir);
        let built = build(&spec(), &[(Platform::ArmV7, bin)], Format::Docker).expect("build");
        let index: serde_json::Value = serde_json::from_slice(&built.index.bytes).expect("json");
        assert_eq!(
            index["mediaType"],
            "application/vnd.docker.distribution.manifest.list.v2+json"
        );
        assert!(
            index.get("annotations").is_none(),
            "Docker lists carry no annotations"
        );
        assert_eq!(
            index["manifests"][0]["platform"],
            serde_json::json!({"architecture": "arm", "os": "linux", "variant": "v7"})
        );
        let config: serde_json::Value =
            serde_json::from_slice(&built.images[0].config.bytes).expect("json");
        assert_eq!(
            (config["architecture"].as_str(), config["variant"].as_str()),
            (Some("arm"), Some("v7"))
        );
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            built.images[0].diff_id.as_str()
        );
        assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/app"]));
        let manifest: serde_json::Value =
            serde_json::from_slice(&built.images[0].manifest.bytes).expect("json");
        assert_eq!(
            manifest["layers"][0]["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
        assert_eq!(
            manifest["config"]["mediaType"],
            "application/vnd.docker.container.image.v1+json"
        );
        // Canonical: keys sorted.
        let text = String::from_utf8(built.images[0].config.bytes.clone()).expect("utf8");
        assert!(text.find("\"architecture\"") < text.find("\"config\""));
    }

    #[test]
    fn unclean_file_destinations_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let bin = binary(&dir);
        let mut s = spec();
        s.files = vec![(bin.clone(), "/etc/../x".into())];
        assert!(layer_tar(&s, &bin).is_err());
    }
}

//! A software bill of materials for each platform of an image built from a
//! Cargo package: SPDX 2.3 JSON listing the package and every crate
//! compiled into it for that platform (normal dependencies, not build or
//! dev ones), with version, declared license, download location, Cargo's
//! SHA-256 of the source, and a purl. Made from `cargo metadata` and
//! Cargo.lock; reproducible (the creation time is the build's timestamp).
//!
//! Attached in the registry as an OCI artifact whose `subject` is the
//! platform's manifest, listed under the OCI 1.1 referrers tag-schema
//! fallback (`sha256-HEX`), which registries without the referrers API
//! accept.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

pub const MEDIA_TYPE: &str = "application/spdx+json";

#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    #[error("cargo metadata for {package}: {reason}")]
    Metadata { package: String, reason: String },
}

/// One crate in the bill.
#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    pub name: String,
    pub version: String,
    pub license: Option<String>,
    /// Cargo's `source` (None for a path or workspace crate).
    pub source: Option<String>,
    /// SHA-256 of the crate's source archive, from Cargo.lock.
    pub checksum: Option<String>,
}

/// The package and what it depends on for one Rust target.
#[derive(Debug, Clone)]
pub struct Bill {
    pub root: Component,
    pub dependencies: Vec<Component>,
}

/// The package's dependency graph for every platform, from one `cargo
/// metadata` run (`--filter-platform` would need one run per platform,
/// most of an SBOM's cost): each edge keeps the platforms it applies to
/// (a triple or a `cfg(...)`), evaluated per target by [`Graph::bill`].
pub struct Graph {
    package: String,
    meta: serde_json::Value,
    checksums: BTreeMap<(String, String), String>,
    /// Read with `--filter-platform` (tests compare against it): cargo
    /// kept only the edges of that platform.
    filtered: bool,
}

impl Graph {
    fn fail(&self, reason: String) -> SbomError {
        SbomError::Metadata {
            package: self.package.clone(),
            reason,
        }
    }

    /// Runs `cargo metadata` once for `package` (in the workspace of
    /// `manifest_path`, or of the current directory).
    pub fn read(package: &str, manifest_path: Option<&Path>) -> Result<Graph, SbomError> {
        Self::read_with(package, manifest_path, None)
    }

    fn read_with(
        package: &str,
        manifest_path: Option<&Path>,
        filter_platform: Option<&str>,
    ) -> Result<Graph, SbomError> {
        let fail = |reason: String| SbomError::Metadata {
            package: package.to_string(),
            reason,
        };
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["metadata", "--format-version", "1"]);
        if let Some(t) = filter_platform {
            cmd.args(["--filter-platform", t]);
        }
        if let Some(p) = manifest_path {
            cmd.arg("--manifest-path").arg(p);
        }
        let out = cmd
            .output()
            .map_err(|e| fail(format!("cannot run cargo: {e}")))?;
        if !out.status.success() {
            return Err(fail(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        let meta: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| fail(format!("not JSON: {e}")))?;
        let lock = std::fs::read_to_string(
            Path::new(meta["workspace_root"].as_str().unwrap_or(".")).join("Cargo.lock"),
        )
        .unwrap_or_default();
        Ok(Graph {
            package: package.to_string(),
            checksums: lock_checksums(&lock),
            meta,
            filtered: filter_platform.is_some(),
        })
    }

    /// The crates compiled into the package for the Rust `target`: normal
    /// dependencies (not build or dev ones) whose platform condition holds
    /// there.
    pub fn bill(&self, target: &str) -> Result<Bill, SbomError> {
        let info = cfg_expr::targets::get_builtin_target_by_triple(target)
            .ok_or_else(|| self.fail(format!("unknown Rust target {target}")))?;
        let packages: BTreeMap<&str, &serde_json::Value> = self.meta["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["id"].as_str()?, p)))
            .collect();
        let root_id = packages
            .iter()
            .find(|(_, p)| p["name"] == self.package.as_str() && p["source"].is_null())
            .map(|(id, _)| *id)
            .ok_or_else(|| self.fail("no such package in the workspace".into()))?;
        let nodes: BTreeMap<&str, &serde_json::Value> = self.meta["resolve"]["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| Some((n["id"].as_str()?, n)))
            .collect();
        let mut seen = BTreeSet::new();
        let mut stack = vec![root_id];
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            for dep in nodes
                .get(id)
                .and_then(|n| n["deps"].as_array())
                .into_iter()
                .flatten()
            {
                let mut normal = false;
                for kind in dep["dep_kinds"].as_array().into_iter().flatten() {
                    if kind["kind"].is_null()
                        && (self.filtered || applies(kind["target"].as_str(), target, info)?)
                    {
                        normal = true;
                    }
                }
                if let (true, Some(pkg)) = (normal, dep["pkg"].as_str()) {
                    stack.push(pkg);
                }
            }
        }
        let component = |id: &str| -> Option<Component> {
            let p = packages.get(id)?;
            let name = p["name"].as_str()?.to_string();
            let version = p["version"].as_str()?.to_string();
            Some(Component {
                checksum: self
                    .checksums
                    .get(&(name.clone(), version.clone()))
                    .cloned(),
                name,
                version,
                license: p["license"].as_str().map(spdx_license),
                source: p["source"].as_str().map(str::to_string),
            })
        };
        let root =
            component(root_id).ok_or_else(|| self.fail("the package has no metadata".into()))?;
        let mut dependencies: Vec<Component> = seen
            .iter()
            .filter(|id| **id != root_id)
            .filter_map(|id| component(id))
            .collect();
        dependencies.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        Ok(Bill { root, dependencies })
    }
}

/// Whether a dependency edge's platform (none: every platform; a triple;
/// or `cfg(...)`) includes `target`, as cargo decides it. Images are
/// static, so `crt-static` is the target feature that holds; a build's
/// own flags (`test`, features) never do in a `[target]` table.
fn applies(
    platform: Option<&str>,
    target: &str,
    info: &cfg_expr::targets::TargetInfo,
) -> Result<bool, SbomError> {
    use cfg_expr::{Expression, Predicate};
    let Some(platform) = platform else {
        return Ok(true);
    };
    if !platform.starts_with("cfg(") {
        return Ok(platform == target);
    }
    let expr = Expression::parse(platform).map_err(|e| SbomError::Metadata {
        package: platform.to_string(),
        reason: format!("a platform condition cargo accepted but this reader cannot: {e}"),
    })?;
    Ok(expr.eval(|predicate| match predicate {
        Predicate::Target(p) => p.matches(info),
        Predicate::TargetFeature(f) => *f == "crt-static",
        Predicate::DebugAssertions => true,
        _ => false,
    }))
}

/// Old Cargo license strings used `/` for OR.
fn spdx_license(cargo: &str) -> String {
    cargo
        .split('/')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// `(name, version) -> checksum` from Cargo.lock's `[[package]]` entries.
fn lock_checksums(lock: &str) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for block in lock.split("[[package]]").skip(1) {
        let field = |key: &str| {
            block.lines().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
            })
        };
        if let (Some(n), Some(v), Some(c)) = (field("name"), field("version"), field("checksum")) {
            out.insert((n, v), c);
        }
    }
    out
}

fn spdx_id(c: &Component) -> String {
    let clean: String = format!("{}-{}", c.name, c.version)
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '.' || ch == '-' {
                ch
            } else {
                '-'
            }
        })
        .collect();
    format!("SPDXRef-Package-{clean}")
}

fn package_json(c: &Component) -> serde_json::Value {
    let download = match c.source.as_deref() {
        Some(s) if s.starts_with("registry+") => format!(
            "https://crates.io/api/v1/crates/{}/{}/download",
            c.name, c.version
        ),
        Some(s) if s.starts_with("git+") => s.trim_start_matches("git+").to_string(),
        _ => "NOASSERTION".to_string(),
    };
    let mut p = serde_json::json!({
        "name": c.name,
        "SPDXID": spdx_id(c),
        "versionInfo": c.version,
        "downloadLocation": download,
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": c.license.clone().unwrap_or_else(|| "NOASSERTION".into()),
        "copyrightText": "NOASSERTION",
        "externalRefs": [{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": format!("pkg:cargo/{}@{}", c.name, c.version),
        }],
    });
    if let Some(sum) = &c.checksum {
        p["checksums"] = serde_json::json!([{"algorithm": "SHA256", "checksumValue": sum}]);
    }
    p
}

/// The SPDX 2.3 JSON document for one platform's image.
pub fn document(bill: &Bill, platform: &str, manifest_digest: &str, created: u64) -> Vec<u8> {
    let root_id = spdx_id(&bill.root);
    let mut packages = vec![package_json(&bill.root)];
    packages[0]["primaryPackagePurpose"] = "APPLICATION".into();
    let mut relationships = vec![serde_json::json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": root_id,
    })];
    for dep in &bill.dependencies {
        packages.push(package_json(dep));
        relationships.push(serde_json::json!({
            "spdxElementId": root_id,
            "relationshipType": "DEPENDS_ON",
            "relatedSpdxElement": spdx_id(dep),
        }));
    }
    let doc = serde_json::json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{} {} ({platform})", bill.root.name, bill.root.version),
        "documentNamespace": format!(
            "https://spdx.org/spdxdocs/fogswarm/{}-{}/{}",
            bill.root.name,
            platform.replace('/', "-"),
            manifest_digest.trim_start_matches("sha256:")
        ),
        "creationInfo": {
            "created": crate::build::rfc3339(created),
            "creators": [concat!("Tool: fogswarm-", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "relationships": relationships,
    });
    serde_json::to_vec_pretty(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `cargo metadata` walked per target gives exactly what cargo's
    /// own `--filter-platform` gives, for the agent (whose graph has
    /// platform-conditional crates: ring, rustix, getrandom) on every
    /// platform fogswarm builds images for.
    #[test]
    fn one_graph_serves_every_platform_as_cargo_filters_it() {
        let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let graph = Graph::read("fogswarm-agent", Some(&manifest)).expect("metadata");
        let names = |b: &Bill| {
            b.dependencies
                .iter()
                .map(|c| format!("{} {}", c.name, c.version))
                .collect::<Vec<_>>()
        };
        let mut differ = false;
        for target in [
            "x86_64-unknown-linux-musl",
            "aarch64-unknown-linux-musl",
            "armv7-unknown-linux-gnueabihf",
            "i686-unknown-linux-musl",
            "riscv64gc-unknown-linux-gnu",
        ] {
            let ours = graph.bill(target).expect("bill");
            let cargo = Graph::read_with("fogswarm-agent", Some(&manifest), Some(target))
                .expect("filtered metadata")
                .bill(target)
                .expect("filtered bill");
            assert!(ours.dependencies.len() > 50, "{target}: {:?}", names(&ours));
            if names(&ours) != names(&cargo) {
                differ = true;
                eprintln!(
                    "{target}: ours {:?}\ncargo's {:?}",
                    names(&ours),
                    names(&cargo)
                );
            }
        }
        assert!(!differ, "the bills differ from cargo's (above)");
        assert!(graph.bill("no-such-target").is_err());
    }

    #[test]
    fn licenses_in_spdx_syntax() {
        assert_eq!(spdx_license("MIT/Apache-2.0"), "MIT OR Apache-2.0");
        assert_eq!(spdx_license("MIT OR Apache-2.0"), "MIT OR Apache-2.0");
    }

    #[test]
    fn lock_checksums_are_read() {
        let lock = "version = 4\n\n[[package]]\nname = \"libc\"\nversion = \"0.2.1\"\nsource = \"registry+x\"\nchecksum = \"abc\"\n\n[[package]]\nname = \"me\"\nversion = \"0.1.0\"\n";
        let sums = lock_checksums(lock);
        assert_eq!(
            sums.get(&("libc".into(), "0.2.1".into()))
                .map(String::as_str),
            Some("abc")
        );
        assert_eq!(sums.len(), 1);
    }
}

//! TLS for the server: a given certificate, or a CA of our own that signs a
//! server certificate for the names and addresses it is reached by.
//!
//! Agents pin the CA by the SHA-256 of its DER bytes (the fingerprint the
//! server prints at start and advertises over mDNS), so no public PKI is
//! needed on a factory network.

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A server TLS identity: the chain it presents and the fingerprint
/// clients pin.
pub struct Identity {
    pub config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the pinned certificate (the CA: the chain's last), hex.
    pub fingerprint: String,
}

/// SHA-256 of a certificate's DER bytes, lower-case hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(Sha256::digest(cert.as_ref()))
}

/// The server's TLS: its chain and key, and client certificates asked for
/// but not required: one signed by the fleet's CA (`client_ca`, PEM)
/// names a user (see [`issue_client_certificate`]); without one, callers
/// use bearer tokens and device signatures as ever.
fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: &str,
) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(client_ca.as_bytes()).context("parsing the fleet CA")?)
        .context("the fleet CA as a trust anchor for client certificates")?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .context("the client certificate verifier")?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("TLS certificate and key do not match")?;
    Ok(Arc::new(config))
}

/// A client certificate for user `name`, signed by the fleet's CA
/// (`stored`), valid `days`: its PEM, its key's PEM (made here, shown
/// once) and the certificate's SHA-256 fingerprint, by which the server
/// recognises and revokes it.
pub fn issue_client_certificate(
    stored: &str,
    name: &str,
    days: u32,
) -> Result<(String, String, String)> {
    let ca: StoredCa = serde_json::from_str(stored).context("the stored CA is not valid")?;
    let issuer = Issuer::new(
        ca_params()?,
        KeyPair::from_pem(&ca.key).context("parsing the CA key")?,
    );
    let mut params =
        CertificateParams::new(Vec::<String>::new()).context("client certificate parameters")?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(i64::from(days));
    let mut serial = [0u8; 16];
    getrandom::fill(&mut serial).map_err(|e| anyhow::anyhow!("the OS random source: {e}"))?;
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let key = KeyPair::generate().context("generating the client key")?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the client certificate")?;
    Ok((cert.pem(), key.serialize_pem(), fingerprint(cert.der())))
}

/// Loads a PEM chain and key given by the operator. The fingerprint is of
/// the chain's last certificate: include the CA in the file to pin the CA.
pub fn load(files: &TlsFiles, client_ca: &str) -> Result<Identity> {
    let read = |path: &Path| -> Result<Vec<CertificateDer<'static>>> {
        CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading {}", path.display()))?
            .collect::<std::result::Result<_, _>>()
            .with_context(|| format!("parsing certificates in {}", path.display()))
    };
    let mut chain = read(&files.cert)?;
    if chain.is_empty() {
        bail!("{} holds no certificate", files.cert.display());
    }
    // The root goes last, unless the chain file has it already: clients
    // pinning it then keep trusting renewals under other intermediates.
    if let Some(ca) = &files.ca {
        for root in read(ca)? {
            if !chain.contains(&root) {
                chain.push(root);
            }
        }
    }
    let fingerprint = chain.last().map(fingerprint).unwrap_or_default();
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading a private key from {}", files.key.display()))?;
    Ok(Identity {
        config: server_config(chain, key, client_ca)?,
        fingerprint,
    })
}

/// The operator's certificate files (`--tls-cert`, `--tls-key`,
/// `--tls-ca`), read again on SIGHUP and when they change.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The files' modification times, to notice a renewal.
    pub fn stamp(&self) -> Vec<Option<std::time::SystemTime>> {
        [Some(&self.cert), Some(&self.key), self.ca.as_ref()]
            .into_iter()
            .flatten()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

/// The server's TLS configuration as it is now: new connections take the
/// current one, open connections keep theirs, so a renewal drops nothing.
pub struct LiveTls {
    current: std::sync::RwLock<Arc<rustls::ServerConfig>>,
    files: Option<TlsFiles>,
    client_ca: String,
    stamp: std::sync::Mutex<Vec<Option<std::time::SystemTime>>>,
}

impl LiveTls {
    pub fn new(identity: &Identity, files: Option<TlsFiles>, client_ca: &str) -> LiveTls {
        let stamp = files.as_ref().map(TlsFiles::stamp).unwrap_or_default();
        LiveTls {
            current: std::sync::RwLock::new(identity.config.clone()),
            files,
            client_ca: client_ca.to_string(),
            stamp: std::sync::Mutex::new(stamp),
        }
    }

    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the files again; on success new connections get them. A
    /// failure (a half-written renewal) keeps the running certificate.
    /// Answers the new chain's last fingerprint (none without files).
    pub fn reload(&self) -> Result<Option<String>> {
        let Some(files) = &self.files else {
            return Ok(None);
        };
        // Noted first: a file that fails is tried again when it changes
        // again (the renewal's next write), not every few seconds.
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = files.stamp();
        let identity = load(files, &self.client_ca)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = identity.config;
        Ok(Some(identity.fingerprint))
    }

    /// Whether the files changed since they were last read.
    pub fn changed(&self) -> bool {
        match &self.files {
            Some(files) => *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) != files.stamp(),
            None => false,
        }
    }
}

fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    params
        .distinguished_name
        .push(DnType::CommonName, "fogswarm fleet CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(params)
}

/// The fleet's CA as kept in the database: a PEM certificate and its key.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct StoredCa {
    pub cert: String,
    pub key: String,
}

/// The CA to store on a fleet's first start: the one a server of an
/// earlier version kept under `dir` (so the fingerprint agents pinned stays
/// valid), or a new one. Answered as the JSON the store keeps.
pub fn existing_or_new_ca(dir: &Path) -> Result<String> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    let ca = if cert_path.exists() && key_path.exists() {
        StoredCa {
            cert: std::fs::read_to_string(&cert_path).context("reading the CA certificate")?,
            key: std::fs::read_to_string(&key_path).context("reading the CA key")?,
        }
    } else {
        let key = KeyPair::generate().context("generating the CA key")?;
        let cert = ca_params()?.self_signed(&key).context("signing the CA")?;
        StoredCa {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    };
    serde_json::to_string(&ca).context("encoding the CA")
}

/// The SHA-256 fingerprint of a stored CA's certificate.
pub fn ca_fingerprint(stored: &str) -> Result<String> {
    let ca: StoredCa = serde_json::from_str(stored).context("the stored CA is not valid")?;
    let der =
        CertificateDer::from_pem_slice(ca.cert.as_bytes()).context("parsing the CA certificate")?;
    Ok(fingerprint(&der))
}

/// Signs a fresh server certificate for `names` (DNS names or IPs) with
/// the fleet's CA (`stored`, shared by every replica through the
/// database), and writes the CA's certificate (public) to `dir/ca.pem`
/// for operators to hand out. The server certificate is remade each
/// start, so new names take effect.
pub fn self_signed(stored: &str, dir: &Path, names: &[String]) -> Result<Identity> {
    let ca: StoredCa = serde_json::from_str(stored).context("the stored CA is not valid")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("ca.pem"), &ca.cert).context("writing the CA certificate")?;
    let ca_key = KeyPair::from_pem(&ca.key).context("parsing the CA key")?;
    // The CA's parameters are deterministic, so rebuilding them with the
    // stored key gives the same issuer name and key identifier as the
    // stored certificate (no certificate parser needed).
    let issuer = Issuer::new(ca_params()?, ca_key);
    let ca_der =
        CertificateDer::from_pem_slice(ca.cert.as_bytes()).context("parsing the CA certificate")?;

    let mut params =
        CertificateParams::new(Vec::<String>::new()).context("server certificate parameters")?;
    params
        .distinguished_name
        .push(DnType::CommonName, "fogswarm-server");
    for name in names {
        params
            .subject_alt_names
            .push(match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.clone()
                        .try_into()
                        .with_context(|| format!("{name} is not a DNS name"))?,
                ),
            });
    }
    let key = KeyPair::generate().context("generating the server key")?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the server certificate")?;
    let chain = vec![cert.der().clone(), ca_der.clone()];
    let key = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| anyhow::anyhow!("server key: {e}"))?;
    Ok(Identity {
        config: server_config(chain, key, &ca.cert)?,
        fingerprint: fingerprint(&ca_der),
    })
}

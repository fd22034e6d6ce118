//! A test PKI as public CAs run one: a root, intermediates under it, and
//! leaf certificates under an intermediate (rcgen), as PEM.

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A CA certificate and the issuer that signs with it.
pub struct Authority {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate and its key.
pub struct Leaf {
    pub pem: String,
    pub key_pem: String,
}

fn ca_params(name: &str, depth: u8) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(depth));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

impl Authority {
    /// A self-signed root.
    pub fn root(name: &str) -> Result<Authority> {
        let key = KeyPair::generate()?;
        let params = ca_params(name, 1)?;
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, name: &str) -> Result<Authority> {
        let key = KeyPair::generate()?;
        let params = ca_params(name, 0)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Authority {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A server certificate for `names` (host names or IP addresses).
    pub fn leaf(&self, names: &[&str]) -> Result<Leaf> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// SHA-256 of the certificate, as clients pin it.
    pub fn fingerprint(&self) -> Result<String> {
        fingerprint(&self.pem)
    }
}

/// SHA-256 of a PEM certificate's DER, hex.
pub fn fingerprint(pem: &str) -> Result<String> {
    use rustls::pki_types::pem::PemObject;
    use sha2::Digest;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .context("not a PEM certificate")?;
    Ok(hex::encode(sha2::Sha256::digest(der.as_ref())))
}

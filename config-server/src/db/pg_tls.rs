//! PostgreSQL over TLS, as managed databases require: `sslmode` and
//! `sslrootcert` in `--database`'s URL, spelled as libpq spells them, and
//! carried out with rustls (the TLS stack the server already has).
//!
//! fogswarm never encrypts to a server it has not verified, and never
//! falls back to plain text silently: `verify-full` checks the chain and
//! the host name, `verify-ca` and `require` the chain only (libpq's
//! `require` checks nothing without a root file; here it is `verify-ca`),
//! `disable` (or no `sslmode`) is plain TCP. `prefer` and `allow` are
//! refused for the silent fallback they mean. The roots are
//! `sslrootcert=FILE`, or the system's (`sslrootcert=system`, the default).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// How a connection is secured.
#[derive(Clone)]
pub enum PgTls {
    Plain,
    Verified(tokio_postgres_rustls::MakeRustlsConnect),
}

/// Splits `sslmode` and `sslrootcert` off a PostgreSQL URL (the client
/// library knows neither `verify-full` nor root files) and builds the
/// connector they ask for. Answers the rest of the URL.
pub fn split(url: &str) -> Result<(String, PgTls), String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut mode = None;
    let mut root = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => mode = Some(v.to_string()),
            Some(("sslrootcert", v)) => root = Some(v.to_string()),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let check_name = match mode.as_deref() {
        None | Some("disable") => {
            if root.is_some() {
                return Err("--database: sslrootcert needs sslmode=verify-full (or verify-ca)".into());
            }
            return Ok((rest, PgTls::Plain));
        }
        Some("verify-full") => true,
        Some("verify-ca" | "require") => false,
        Some(other @ ("prefer" | "allow")) => {
            return Err(format!(
                "--database: sslmode={other} falls back to plain text without a word; say sslmode=verify-full (or disable)"
            ))
        }
        Some(other) => {
            return Err(format!(
                "--database: sslmode={other:?} is not one of disable, require, verify-ca, verify-full"
            ))
        }
    };
    let roots = roots(root.as_deref())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("--database: the TLS verifier: {e}"))?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("--database: TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainVerifier { chain, check_name }))
        .with_no_client_auth();
    Ok((
        rest,
        PgTls::Verified(tokio_postgres_rustls::MakeRustlsConnect::new(config)),
    ))
}

/// The trust anchors: a PEM file, or the system's store.
fn roots(root: Option<&str>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match root {
        None | Some("system") => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "--database: sslmode asks for TLS but the system has no trusted roots; give sslrootcert=FILE"
                        .into(),
                );
            }
        }
        Some(file) => {
            let certs = CertificateDer::pem_file_iter(file)
                .map_err(|e| format!("--database: sslrootcert {file}: {e}"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("--database: sslrootcert {file}: {e}"))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "--database: sslrootcert {file} holds no certificate"
                ));
            }
        }
    }
    Ok(store)
}

/// The web PKI's chain check, with the host name check left out for
/// `verify-ca`.
#[derive(Debug)]
struct ChainVerifier {
    chain: Arc<WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for ChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_read_as_libpq_spells_them() {
        let (rest, tls) = split("postgres://u@db/fleet").expect("plain");
        assert_eq!(rest, "postgres://u@db/fleet");
        assert!(matches!(tls, PgTls::Plain));
        let (rest, tls) =
            split("postgres://u@db/fleet?application_name=x&sslmode=disable").expect("disable");
        assert_eq!(rest, "postgres://u@db/fleet?application_name=x");
        assert!(matches!(tls, PgTls::Plain));
        for bad in ["prefer", "allow", "verify_full"] {
            let e = split(&format!("postgres://u@db/fleet?sslmode={bad}"))
                .err()
                .expect("refused");
            assert!(e.contains(bad), "{e}");
        }
        let e = split("postgres://u@db/fleet?sslmode=verify-full&sslrootcert=/nonexistent.pem")
            .err()
            .expect("missing root");
        assert!(e.contains("/nonexistent.pem"), "{e}");
        let e = split("postgres://u@db/fleet?sslrootcert=/x.pem")
            .err()
            .expect("root without TLS");
        assert!(e.contains("sslmode"), "{e}");
    }
}

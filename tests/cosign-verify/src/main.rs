//! `cosign-verify IMAGE KEY.pub [--http]`: verifies the simple-signing
//! signatures stored beside IMAGE (the `sha256-DIGEST.sig` tag) with the
//! public key, as `cosign verify --key` does, using sigstore-rs. Exit 0
//! and "verified" when a signature of IMAGE's digest verifies; 1 with the
//! reason otherwise.

use sigstore::cosign::verification_constraint::{PublicKeyVerifier, VerificationConstraintVec};
use sigstore::cosign::{verify_constraints, ClientBuilder, CosignCapabilities};
use sigstore::registry::{Auth, ClientConfig, ClientProtocol, OciReference};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(image), Some(key)) = (args.first(), args.get(1)) else {
        eprintln!("usage: cosign-verify IMAGE KEY.pub [--http]");
        std::process::exit(2);
    };
    let http = args.iter().any(|a| a == "--http");
    match verify(image, key, http).await {
        Ok(n) => println!("verified: {n} signature layer(s) of {image}"),
        Err(e) => {
            eprintln!("not verified: {e}");
            std::process::exit(1);
        }
    }
}

async fn verify(image: &str, key: &str, http: bool) -> Result<usize, String> {
    let reference: OciReference = image.parse().map_err(|e| format!("{image}: {e}"))?;
    let config = ClientConfig {
        protocol: if http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        ..Default::default()
    };
    let mut client = ClientBuilder::default()
        .with_oci_client_config(config)
        .build()
        .map_err(|e| e.to_string())?;
    let layers = client
        .trusted_signature_layers(&Auth::Anonymous, &reference)
        .await
        .map_err(|e| format!("reading signatures: {e}"))?;
    let pem = std::fs::read(key).map_err(|e| format!("{key}: {e}"))?;
    let verifier = PublicKeyVerifier::try_from(&pem).map_err(|e| format!("{key}: {e}"))?;
    let constraints: VerificationConstraintVec = vec![Box::new(verifier)];
    verify_constraints(&layers, constraints.iter()).map_err(|e| {
        format!(
            "{} unsatisfied constraint(s) over {} layer(s)",
            e.unsatisfied_constraints.len(),
            layers.len()
        )
    })?;
    Ok(layers.len())
}

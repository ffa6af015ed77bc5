//! The provider client's TLS: which roots it trusts and how it is set up; and the roots file
//! (`SSL_CERT_FILE`) both it and the AWS client read.
//!
//! reqwest's own rustls set-up verifies with the platform verifier, which reads and parses every
//! root of the system's bundle and certificate directory when the client is built: most of a chat
//! function's cold start before its first request. The provider client trusts Mozilla's roots
//! instead (`webpki-roots`), compiled in as trust anchors, so nothing is read or parsed at start.
//! `SSL_CERT_FILE` replaces them, as it does for the AWS client (a provider or an
//! OpenAI-compatible base URL behind a private CA or a TLS-inspecting proxy).

use std::ffi::OsString;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Why TLS could not be set up, for the provider client or the AWS clients.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the roots in SSL_CERT_FILE ({path}) failed: {reason}")]
    Roots { path: String, reason: String },
    #[error("setting up TLS failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("setting up the AWS client's TLS failed: {0}")]
    Aws(String),
}

/// The client configuration for the provider client, from the environment (`SSL_CERT_FILE`).
pub fn client_config() -> Result<ClientConfig, TlsError> {
    client_config_with(std::env::var_os("SSL_CERT_FILE"))
}

fn client_config_with(cert_file: Option<OsString>) -> Result<ClientConfig, TlsError> {
    let roots = match cert_file {
        Some(path) => read_roots(&path)?.store,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // What reqwest offers when it builds the configuration itself (HTTP/2 first).
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The roots of a PEM file (`SSL_CERT_FILE`): its bytes, as the AWS SDK takes them, and the
/// certificates, each checked the way rustls reads it. The SDK panics on a certificate it cannot
/// parse when it first connects, so a file is checked here, at start, for both clients.
pub(crate) struct PemRoots {
    pub pem: Vec<u8>,
    pub store: RootCertStore,
}

pub(crate) fn read_roots(path: &std::ffi::OsStr) -> Result<PemRoots, TlsError> {
    let failed = |reason: String| TlsError::Roots {
        path: path.to_string_lossy().into_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|err| failed(err.to_string()))?;
    let mut store = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        let certificate = certificate.map_err(|err| failed(err.to_string()))?;
        store
            .add(certificate)
            .map_err(|err| failed(err.to_string()))?;
    }
    if store.is_empty() {
        return Err(failed("no certificate in the file".into()));
    }
    Ok(PemRoots { pem, store })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mozillas_roots_by_default_and_the_files_roots_when_ssl_cert_file_names_one() {
        let default = client_config_with(None).expect("default");
        assert_eq!(
            default.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );

        let file = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/certs/amazon-trust-services.pem"
        );
        let roots = read_roots(std::ffi::OsStr::new(file)).expect("pem file");
        assert_eq!(roots.store.len(), 5);
        assert_eq!(roots.pem, std::fs::read(file).expect("read"));
        assert!(webpki_roots::TLS_SERVER_ROOTS.len() > 100);

        let missing = client_config_with(Some("/nonexistent/roots.pem".into())).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/roots.pem"),
            "{missing}"
        );
        let not_pem = client_config_with(Some(env!("CARGO_MANIFEST_DIR").into()));
        assert!(not_pem.is_err());
        let empty = std::env::temp_dir().join(format!("empty-roots-{}.pem", std::process::id()));
        std::fs::write(&empty, "no certificate here\n").expect("write");
        let refused = client_config_with(Some(empty.clone().into())).unwrap_err();
        assert!(refused.to_string().contains("no certificate"), "{refused}");
        // Framed as a certificate, but not one: refused at start, not when a client connects.
        std::fs::write(
            &empty,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let broken = read_roots(empty.as_os_str()).err();
        let _ = std::fs::remove_file(&empty);
        assert!(matches!(broken, Some(TlsError::Roots { .. })));
    }
}

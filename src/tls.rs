//! Inbound TLS: a rustls acceptor from PEM files, offering HTTP/2 and
//! HTTP/1.1 by ALPN.

use std::sync::Arc;

use keyrelay_layers::BoxError;
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// Reads the certificate chain and key, and builds the acceptor; errors
/// name the file and what is wrong with it.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, BoxError> {
    let cert_path = files.cert.display();
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| format!("cannot read the TLS certificate {cert_path}: {err}"))?;
    if certs.is_empty() {
        return Err(format!("the TLS certificate file {cert_path} holds no PEM certificate").into());
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|err| format!("cannot read the TLS private key {}: {err}", files.key.display()))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|err| format!("the TLS certificate {cert_path} and its key do not make a usable pair: {err}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

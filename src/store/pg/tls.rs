//! The TLS connector of the ledger's Postgres connections: rustls (ring,
//! as the rest of keyrelay) through `tokio-postgres-rustls`, checking the
//! server's certificate as [`PostgresTls`] asks (the table in
//! [`crate::config::ledger_tls`]).
//!
//! ```no_run
//! use keyrelay::{config::ledger::PostgresUrl, store::pg::tls};
//!
//! let url = PostgresUrl::parse("postgres://kr@db:5432/keyrelay?sslmode=verify-full", ".".as_ref()).unwrap();
//! let client = url.config().connect(tls::connector(url.tls())).unwrap();
//! ```

use std::sync::Arc;

use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor,
    },
    crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::ParsedCertificate,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::ledger_tls::{PostgresTls, SslMode};

/// The connector for `tls` (with `sslmode=disable` the client never uses
/// it).
pub fn connector(tls: &PostgresTls) -> MakeRustlsConnect {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match tls.mode {
        SslMode::Disable | SslMode::Prefer => {
            Arc::new(ChainOnly { roots: None, algorithms: provider.signature_verification_algorithms })
        }
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(roots(tls));
            if tls.checks_name() {
                WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .expect("a root store that is not empty")
            } else {
                Arc::new(ChainOnly { roots: Some(roots), algorithms: provider.signature_verification_algorithms })
            }
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    MakeRustlsConnect::new(config)
}

/// What to do about a certificate the connector refused (`err` is a
/// cause of the client's error: the handshake's I/O error).
pub(super) fn hint(err: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let tls = err.downcast_ref::<std::io::Error>()?.get_ref()?.downcast_ref::<Error>()?;
    match tls {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => Some(
            "no CA keyrelay trusts signed it: give the server's CA with sslrootcert=/path/ca.pem \
             (for a managed Postgres, the provider's CA bundle)",
        ),
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => Some(
            "connect by a name the certificate carries, or check the chain only: sslmode=verify-ca with the \
             server's CA in sslrootcert",
        ),
        _ => None,
    }
}

/// `sslrootcert`'s CA when given, else the public roots.
fn roots(tls: &PostgresTls) -> RootCertStore {
    match &tls.root_cert {
        Some(root) => {
            let mut store = RootCertStore::empty();
            // Checked when the URL was parsed.
            store.add_parsable_certificates(root.certs.iter().cloned());
            store
        }
        None => RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() },
    }
}

/// Checks the chain only, or nothing:
/// - `verify-ca` (and `require`) with a CA of its own (`roots`): the chain
///   must lead to it; the name is not checked (managed servers reached by
///   IP, or by a name their certificate does not carry);
/// - `prefer` (no `roots`): libpq's default takes whatever certificate the
///   server shows. The link is encrypted against a listener, not against a
///   server in the middle (which could as well refuse TLS: `prefer` then
///   goes plain).
///
/// The handshake's own signatures are checked either way.
#[derive(Debug)]
struct ChainOnly {
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(&cert, roots, intermediates, now, self.algorithms.all)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

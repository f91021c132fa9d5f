//! TLS to the Postgres ledger: the `sslmode` and `sslrootcert` options of
//! `ledger.url`, read here because the Postgres client knows neither
//! `verify-ca`/`verify-full` nor `sslrootcert` (they are taken out of the
//! URL before it sees it).
//!
//! | `sslmode` | TLS | the server's certificate |
//! | --- | --- | --- |
//! | `disable` | never | not asked for |
//! | `prefer` (the default) | when the server offers it, else plain | not checked (as libpq) |
//! | `require`, `verify-ca` | always | signed by `sslrootcert` when given; else by a public CA, for the host's name |
//! | `verify-full` | always | signed by `sslrootcert` or a public CA, for the host's name |
//!
//! Unlike libpq, `require` checks the certificate. With the public roots it
//! checks the name too: anyone can get a publicly signed certificate for a
//! name of their own, so a chain to a public CA alone proves nothing
//! (libpq's `sslrootcert=system` forces `verify-full` for the same reason).

use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, pem::PemObject};

use super::ConfigError;

/// How the ledger's connection uses TLS (`sslmode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain only.
    Disable,
    /// TLS when the server offers it, its certificate unchecked; plain
    /// otherwise. libpq's default, and so keyrelay's.
    Prefer,
    /// TLS always, the certificate checked (see the module's table).
    Require,
    /// As [`SslMode::Require`].
    VerifyCa,
    /// TLS always, the certificate checked and made out to the host.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, ConfigError> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(ConfigError(format!(
                    "ledger.url: sslmode={other} is not a mode keyrelay knows: disable, prefer (the default), \
                     require, verify-ca or verify-full"
                )));
            }
        })
    }

    /// Whether the connection fails rather than go on without TLS.
    pub fn requires_tls(self) -> bool {
        matches!(self, Self::Require | Self::VerifyCa | Self::VerifyFull)
    }
}

/// `sslmode` and the CA of `sslrootcert`, read from the file once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresTls {
    /// The mode asked for (`prefer` when the URL names none).
    pub mode: SslMode,
    /// `sslrootcert`: the file and its certificates, trusted instead of the
    /// public roots.
    pub root_cert: Option<RootCert>,
}

/// The CA file of `sslrootcert`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootCert {
    /// The file, as resolved against the working dir.
    pub path: PathBuf,
    /// Its certificates (at least one).
    pub certs: Vec<CertificateDer<'static>>,
}

impl PostgresTls {
    /// Whether the server's name must match its certificate: always with
    /// `verify-full`, and with the public roots (no `sslrootcert`).
    pub fn checks_name(&self) -> bool {
        self.mode == SslMode::VerifyFull || self.root_cert.is_none()
    }
}

/// Takes `sslmode` and `sslrootcert` out of `url`'s options: what they
/// ask for, and the URL left for the Postgres client. `sslrootcert` is
/// read now (relative to `working_dir`), so a missing or empty CA file
/// stops the start, not the first connection.
pub fn split(url: &str, working_dir: &Path) -> Result<(PostgresTls, String), ConfigError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((PostgresTls { mode: SslMode::Prefer, root_cert: None }, url.to_owned()));
    };
    let mut mode = SslMode::Prefer;
    let mut root_path = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
        match key {
            "sslmode" => mode = SslMode::parse(&value)?,
            "sslrootcert" => root_path = Some(working_dir.join(value.as_ref())),
            _ => kept.push(pair),
        }
    }
    let root_cert = match root_path {
        Some(path) if mode.requires_tls() => Some(read_root_cert(path)?),
        Some(_) => {
            return Err(ConfigError(
                "ledger.url: sslrootcert is only used to check the server's certificate: add \
                 sslmode=verify-full (or verify-ca)"
                    .to_owned(),
            ));
        }
        None => None,
    };
    let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    Ok((PostgresTls { mode, root_cert }, rest))
}

fn read_root_cert(path: PathBuf) -> Result<RootCert, ConfigError> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(&path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| ConfigError(format!("ledger.url: cannot read sslrootcert {shown}: {err}")))?;
    if certs.is_empty() {
        return Err(ConfigError(format!("ledger.url: sslrootcert {shown} holds no PEM certificate")));
    }
    let mut store = rustls::RootCertStore::empty();
    let (_, unusable) = store.add_parsable_certificates(certs.iter().cloned());
    if unusable > 0 {
        return Err(ConfigError(format!(
            "ledger.url: sslrootcert {shown}: {unusable} of its certificates cannot be used as a CA"
        )));
    }
    Ok(RootCert { path, certs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_at(url: &str) -> Result<(PostgresTls, String), ConfigError> {
        split(url, Path::new("/work"))
    }

    /// A CA certificate in PEM, written to a file in `dir`.
    fn ca_file(dir: &Path) -> PathBuf {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let path = dir.join("ca dir/ca.pem");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, params.self_signed(&key).unwrap().pem()).unwrap();
        path
    }

    #[test]
    fn the_mode_defaults_to_prefer_and_the_tls_options_leave_the_url() {
        let (tls, rest) = split_at("postgres://kr@db/k").unwrap();
        assert_eq!((tls.mode, tls.root_cert, rest.as_str()), (SslMode::Prefer, None, "postgres://kr@db/k"));
        let (tls, rest) = split_at("postgres://kr@db/k?application_name=x&sslmode=disable&connect_timeout=2").unwrap();
        assert_eq!(tls.mode, SslMode::Disable);
        assert_eq!(rest, "postgres://kr@db/k?application_name=x&connect_timeout=2");
        for (mode, expected) in
            [("require", SslMode::Require), ("verify-ca", SslMode::VerifyCa), ("verify-full", SslMode::VerifyFull)]
        {
            let (tls, rest) = split_at(&format!("postgres://kr@db/k?sslmode={mode}")).unwrap();
            assert_eq!((tls.mode, rest.as_str()), (expected, "postgres://kr@db/k"));
            assert!(tls.mode.requires_tls() && tls.checks_name(), "no sslrootcert: the public roots, and the name");
        }
    }

    #[test]
    fn sslrootcert_is_read_at_once_relative_to_the_working_dir_and_percent_decoded() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_file(dir.path());
        let encoded = ca.to_str().unwrap().replace(' ', "%20");
        let (tls, rest) = split_at(&format!("postgres://kr@db/k?sslmode=verify-ca&sslrootcert={encoded}")).unwrap();
        assert_eq!(rest, "postgres://kr@db/k");
        let root = tls.root_cert.clone().expect("read");
        assert_eq!((root.path, root.certs.len()), (ca, 1));
        assert!(!tls.checks_name(), "verify-ca with a CA of its own: the chain only");
        let (full, _) = split_at(&format!("postgres://kr@db/k?sslmode=verify-full&sslrootcert={encoded}")).unwrap();
        assert!(full.checks_name());
        let relative = split("postgres://kr@db/k?sslmode=require&sslrootcert=ca%20dir/ca.pem", dir.path()).unwrap();
        assert!(relative.0.root_cert.is_some());
    }

    #[test]
    fn unknown_modes_and_unusable_ca_files_are_refused_clearly() {
        let err = split_at("postgres://kr@db/k?sslmode=allow").unwrap_err().to_string();
        assert!(err.starts_with("ledger.url: sslmode=allow is not a mode") && err.contains("verify-full"), "{err}");
        let err = split_at("postgres://kr@db/k?sslmode=verify-full&sslrootcert=/nowhere/ca.pem").unwrap_err();
        assert!(err.to_string().contains("cannot read sslrootcert /nowhere/ca.pem"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = split_at(&format!("postgres://kr@db/k?sslmode=require&sslrootcert={}", empty.display())).unwrap_err();
        assert!(err.to_string().contains("holds no PEM certificate"), "{err}");
        let ca = ca_file(dir.path());
        let ignored = format!("postgres://kr@db/k?sslrootcert={}", ca.display());
        let err = split_at(&ignored).unwrap_err().to_string();
        assert!(err.contains("add sslmode=verify-full"), "prefer would not check it: {err}");
    }
}

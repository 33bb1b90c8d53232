//! Which certificate authorities the client trusts for `https://` endpoints, and what a failed
//! TLS handshake means in words.
//!
//! As Nix (and curl/OpenSSL) do: `$NIX_SSL_CERT_FILE` if set, else `$SSL_CERT_FILE`, else the
//! system's CA store (rustls-native-certs: `/etc/ssl/certs/…`, `$SSL_CERT_DIR`). A file named
//! by a variable *replaces* the system store, exactly as it does for Nix, so `garret` and the
//! Nix that substitutes from the same cache trust the same CAs.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

pub const NIX_SSL_CERT_FILE: &str = "NIX_SSL_CERT_FILE";
pub const SSL_CERT_FILE: &str = "SSL_CERT_FILE";

/// Where the trusted roots come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Trust {
    /// A PEM bundle named by `var`.
    File { var: &'static str, path: PathBuf },
    /// The platform's CA store.
    System,
}

impl Trust {
    pub fn from_env() -> Trust {
        Self::from_vars(|k| std::env::var_os(k))
    }

    /// The first of NIX_SSL_CERT_FILE, SSL_CERT_FILE that is set and not empty.
    pub fn from_vars(get: impl Fn(&str) -> Option<std::ffi::OsString>) -> Trust {
        for var in [NIX_SSL_CERT_FILE, SSL_CERT_FILE] {
            if let Some(p) = get(var).filter(|p| !p.is_empty()) {
                return Trust::File {
                    var,
                    path: PathBuf::from(p),
                };
            }
        }
        Trust::System
    }

    /// Sets up `builder` to trust these roots (and only these).
    pub fn apply(&self, builder: reqwest::ClientBuilder) -> Result<reqwest::ClientBuilder> {
        match self {
            Trust::System => Ok(builder),
            Trust::File { var, path } => {
                let certs = load_bundle(path)
                    .with_context(|| format!("loading the CAs that {var} names"))?;
                Ok(certs.into_iter().fold(
                    builder.tls_built_in_root_certs(false),
                    reqwest::ClientBuilder::add_root_certificate,
                ))
            }
        }
    }
}

impl fmt::Display for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::File { var, path } => write!(f, "the CAs in {var}={}", path.display()),
            Trust::System => write!(f, "the system's CA store"),
        }
    }
}

/// The CA certificates of a PEM bundle. Entries rustls cannot use as trust anchors are left
/// out (system bundles hold a few ancient ones) rather than failing the whole file.
pub fn load_bundle(path: &Path) -> Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut probe = rustls::RootCertStore::empty();
    let mut certs = Vec::new();
    for der in CertificateDer::pem_slice_iter(&pem) {
        let der = der.with_context(|| format!("parsing PEM in {}", path.display()))?;
        if probe.add(der.clone()).is_ok() {
            certs.push(
                reqwest::Certificate::from_der(&der)
                    .with_context(|| format!("a certificate in {}", path.display()))?,
            );
        }
    }
    if certs.is_empty() {
        bail!("{} holds no usable PEM certificate", path.display());
    }
    Ok(certs)
}

/// The rustls error somewhere in a request error's chain, if the failure was TLS.
pub fn failure<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(t) = err.downcast_ref::<rustls::Error>() {
        return Some(t);
    }
    // io::Error's `source()` skips the error it wraps (reqwest's connector nests two of them
    // around rustls's): look into that one too.
    if let Some(inner) = err
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        if let Some(t) = failure(inner) {
            return Some(t);
        }
    }
    err.source().and_then(failure)
}

/// A TLS handshake with the server failed; not worth retrying.
#[derive(Debug)]
pub struct TlsError {
    pub endpoint: String,
    pub message: String,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TLS connection to {} failed: {}",
            self.endpoint, self.message
        )
    }
}

impl std::error::Error for TlsError {}

/// What a rustls failure means for the user, and what to do about it.
pub fn explain(e: &rustls::Error, trust: &Trust) -> String {
    use rustls::CertificateError as C;
    let how_to_trust = format!(
        "the client trusts {trust}; to trust a private CA, point {NIX_SSL_CERT_FILE} \
         (or {SSL_CERT_FILE}) at a PEM file holding it, as for Nix"
    );
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer | C::BadSignature => format!(
                "the server's certificate is not signed by a trusted CA ({e}); {how_to_trust}"
            ),
            C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                "the server's certificate is not valid for this host name ({e}); use the name \
                 the certificate was issued for"
            ),
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => {
                format!("the server's certificate is outside its validity period ({e}); check the server's certificate and this machine's clock")
            }
            _ => format!("the server's certificate was refused ({e}); {how_to_trust}"),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => format!(
            "the server did not answer with TLS ({e}); is the endpoint an http:// URL rather \
             than https://?"
        ),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn nix_ssl_cert_file_wins_then_ssl_cert_file_then_the_system() {
        let both = Trust::from_vars(vars(&[
            ("NIX_SSL_CERT_FILE", "/n"),
            ("SSL_CERT_FILE", "/s"),
        ]));
        assert_eq!(
            both,
            Trust::File {
                var: NIX_SSL_CERT_FILE,
                path: "/n".into()
            }
        );
        let empty_nix =
            Trust::from_vars(vars(&[("NIX_SSL_CERT_FILE", ""), ("SSL_CERT_FILE", "/s")]));
        assert_eq!(
            empty_nix,
            Trust::File {
                var: SSL_CERT_FILE,
                path: "/s".into()
            }
        );
        assert_eq!(Trust::from_vars(vars(&[])), Trust::System);
    }

    #[test]
    fn a_bundle_without_certificates_or_a_missing_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty.pem");
        std::fs::write(&p, "not a certificate\n").unwrap();
        let e = format!("{:#}", load_bundle(&p).unwrap_err());
        assert!(e.contains("holds no usable PEM certificate"), "{e}");
        let e = format!(
            "{:#}",
            load_bundle(&dir.path().join("missing.pem")).unwrap_err()
        );
        assert!(e.contains("missing.pem"), "{e}");
    }

    #[test]
    fn an_unknown_issuer_names_the_variables_that_set_trusted_cas() {
        let e = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let msg = explain(&e, &Trust::System);
        assert!(msg.contains("not signed by a trusted CA"), "{msg}");
        assert!(msg.contains("NIX_SSL_CERT_FILE"), "{msg}");
        assert!(msg.contains("SSL_CERT_FILE"), "{msg}");
        assert!(msg.contains("the system's CA store"), "{msg}");
        // found behind nested io::Errors (as reqwest's connector reports it), which hide it
        // from `source()`
        let io = std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        assert!(failure(&io).is_some());
    }
}

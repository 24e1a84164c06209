//! What every outgoing HTTP client shares (federation, push gateways,
//! application services): the extra certificate authorities an operator
//! trusts on top of the built-in roots, e.g. a private CA in front of a push
//! gateway or a bridge.

use std::path::{Path, PathBuf};

/// A CA file that could not be used; the server refuses to start with one.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error("reading CA file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: reqwest::Error,
    },
}

/// Every certificate of the PEM bundles at `paths`.
pub fn load_ca_files(paths: &[PathBuf]) -> Result<Vec<reqwest::Certificate>, CaFileError> {
    let mut all = Vec::new();
    for path in paths {
        all.extend(load_ca_file(path)?);
    }
    Ok(all)
}

fn load_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, CaFileError> {
    let pem = std::fs::read(path).map_err(|source| CaFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| CaFileError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// `builder`, also trusting `roots` (rustls, as every Hearth client uses).
pub fn trusting(
    builder: reqwest::ClientBuilder,
    roots: &[reqwest::Certificate],
) -> reqwest::ClientBuilder {
    roots
        .iter()
        .cloned()
        .fold(builder.use_rustls_tls(), |b, c| b.add_root_certificate(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_garbled_ca_file_is_an_error_naming_it() {
        let missing = PathBuf::from("/nonexistent/hearth-ca.pem");
        let err = load_ca_files(std::slice::from_ref(&missing)).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/hearth-ca.pem"),
            "{err}"
        );

        let garbled = std::env::temp_dir().join(format!("hearth-ca-{}.pem", std::process::id()));
        std::fs::write(
            &garbled,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = load_ca_files(std::slice::from_ref(&garbled)).unwrap_err();
        std::fs::remove_file(&garbled).ok();
        assert!(matches!(err, CaFileError::Parse { .. }), "{err}");
    }
}

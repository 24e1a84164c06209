//! A certificate authority of a test's own, and the certificates it issues
//! for the servers the test plays (federation peers, push gateways,
//! application services over TLS).

use std::{net::IpAddr, path::PathBuf, str::FromStr};

use super::temp_dir;

/// A CA of the test's own and certificates it issues.
pub struct TestCa {
    dir: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

#[allow(clippy::new_without_default)]
impl TestCa {
    pub fn new() -> Self {
        let dir = temp_dir("fed-ca");
        let key = rcgen::KeyPair::generate().expect("ca key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Hearth test CA");
        let cert = params.self_signed(&key).expect("ca cert");
        std::fs::write(dir.join("ca.pem"), cert.pem()).expect("write ca");
        TestCa {
            dir,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.ca_file()).expect("read ca")
    }

    /// A certificate for `names` (DNS names or IP addresses); (cert, key) paths.
    pub fn issue(&self, tag: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        for n in names {
            params.subject_alt_names.push(match IpAddr::from_str(n) {
                Ok(ip) => rcgen::SanType::IpAddress(ip),
                Err(_) => rcgen::SanType::DnsName((*n).try_into().expect("dns name")),
            });
        }
        let cert = params.signed_by(&key, &self.issuer).expect("issue");
        let (c, k) = (
            self.dir.join(format!("{tag}.crt")),
            self.dir.join(format!("{tag}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c, k)
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

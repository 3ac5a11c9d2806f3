//! What a certificate says about itself, and the TLS grade of a Proxy. Pure: the grade is
//! computed from the certificate, the policy and HSTS, not by probing the edge.

use jiff::Timestamp;
use x509_parser::pem::Pem;
use x509_parser::prelude::GeneralName;
use x509_parser::public_key::PublicKey;

use crate::api::proxy::TlsPolicy;

/// A certificate chain's facts that serving and grading need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// DNS names it is valid for.
    pub names: Vec<String>,
    /// `RSA 2048`, `EC 256`.
    pub key: (String, usize),
    /// Certificates in the chain, the leaf included.
    pub chain_length: usize,
    /// Whether each certificate is issued by the next one.
    pub chain_ordered: bool,
    pub self_signed: bool,
}

/// Reads a PEM chain (leaf first) and checks that `key_pem` holds a private key.
pub fn parse(chain_pem: &[u8], key_pem: &[u8]) -> Result<Certificate, String> {
    let pems: Vec<Pem> = Pem::iter_from_buffer(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt is not PEM: {e}"))?;
    let mut chain = Vec::new();
    for pem in pems.iter().filter(|p| p.label == "CERTIFICATE") {
        chain.push(
            pem.parse_x509()
                .map_err(|e| format!("tls.crt holds a certificate that cannot be read: {e}"))?,
        );
    }
    let leaf = chain
        .first()
        .ok_or_else(|| "tls.crt holds no certificate".to_owned())?;
    let key = Pem::iter_from_buffer(key_pem)
        .filter_map(Result::ok)
        .find(|p| p.label.ends_with("PRIVATE KEY"))
        .ok_or_else(|| "tls.key holds no PEM private key".to_owned())?;
    if !key_matches(&leaf.public_key().subject_public_key.data, &key) {
        // Caught here, not by nginx: its message would name a key file, not the Secret.
        return Err(
            "tls.key does not belong to the certificate in tls.crt (their public keys differ)"
                .to_owned(),
        );
    }
    let validity = leaf.validity();
    let time = |t: &x509_parser::time::ASN1Time| {
        Timestamp::from_second(t.timestamp()).map_err(|e| format!("a date of tls.crt: {e}"))
    };
    let mut names: Vec<String> = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            leaf.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    let key = match leaf.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) => ("RSA".to_owned(), rsa.key_size()),
        Ok(PublicKey::EC(ec)) => ("EC".to_owned(), ec.key_size()),
        _ => ("other".to_owned(), 0),
    };
    let chain_ordered = chain
        .windows(2)
        .all(|pair| pair[0].issuer() == pair[1].subject());
    Ok(Certificate {
        not_before: time(&validity.not_before)?,
        not_after: time(&validity.not_after)?,
        names,
        key,
        chain_length: chain.len(),
        chain_ordered,
        self_signed: leaf.issuer() == leaf.subject(),
    })
}

/// Whether `key` is the private half of the certificate key `public` (the subject public key's
/// bits). A key rustls cannot read (an RSA key under 2048 bits, an encrypted key) is left to
/// nginx, which reports what it thinks of it: refusing it here would refuse keys nginx serves.
fn key_matches(public: &[u8], key: &Pem) -> bool {
    use rustls::pki_types::{
        PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
    };
    use x509_parser::prelude::FromDer;
    let der = key.contents.clone();
    let der = match key.label.as_str() {
        "PRIVATE KEY" => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)),
        "RSA PRIVATE KEY" => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)),
        "EC PRIVATE KEY" => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der)),
        _ => return true,
    };
    let Ok(signing) = rustls::crypto::ring::sign::any_supported_type(&der) else {
        return true;
    };
    let Some(derived) = signing.public_key() else {
        return true;
    };
    match x509_parser::x509::SubjectPublicKeyInfo::from_der(derived.as_ref()) {
        Ok((_, derived)) => derived.subject_public_key.data.as_ref() == public,
        Err(_) => true,
    }
}

/// Whether a certificate name (possibly `*.example.com`) covers `host`.
pub fn covers(name: &str, host: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => name == host,
    }
}

/// HSTS long enough to count (SSL Labs asks for six months).
const HSTS_MIN_SECONDS: u64 = 180 * 24 * 3600;

/// What besides the certificate a grade depends on.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    pub policy: TlsPolicy,
    pub hsts_seconds: Option<u64>,
    /// `upstream.tls.insecureSkipVerify`: the hop behind the edge can be impersonated.
    pub upstream_unverified: bool,
}

/// The grade of a Proxy's TLS, A+ to F, with the reasons it is not higher: F for a certificate
/// clients refuse, B at most for a chain out of order, a certificate about to expire or an
/// HTTPS upstream that is not verified, A at most without HSTS of six months or with TLS 1.2
/// accepted (`Intermediate`, Mozilla's advice for older clients; A+ needs `Modern`).
pub fn grade(
    certificate: &Certificate,
    hosts: &[&str],
    setup: Setup,
    now: Timestamp,
) -> (String, Vec<String>) {
    let Setup {
        policy,
        hsts_seconds,
        upstream_unverified,
    } = setup;
    let mut failing = Vec::new();
    let mut capped = Vec::new();
    let mut minor = Vec::new();
    if now > certificate.not_after {
        failing.push(format!(
            "the certificate expired at {}",
            certificate.not_after
        ));
    } else if now < certificate.not_before {
        failing.push(format!(
            "the certificate is valid only from {}",
            certificate.not_before
        ));
    }
    for host in hosts {
        if !certificate.names.iter().any(|n| covers(n, host)) {
            failing.push(format!("the certificate does not cover {host}"));
        }
    }
    if certificate.self_signed {
        failing.push("the certificate is self-signed: no client trusts it".to_owned());
    }
    let (algorithm, bits) = (&certificate.key.0, certificate.key.1);
    let weak = match algorithm.as_str() {
        "RSA" => bits < 2048,
        "EC" => bits < 256,
        _ => true,
    };
    if weak {
        failing.push(format!("the key ({algorithm} {bits}) is too weak"));
    }
    if !certificate.chain_ordered {
        capped.push("the chain is out of order".to_owned());
    }
    let days_left = certificate
        .not_after
        .as_second()
        .saturating_sub(now.as_second())
        / 86_400;
    if days_left < 14 && now <= certificate.not_after {
        capped.push(format!("the certificate expires in {days_left} days"));
    }
    if upstream_unverified {
        capped.push(
            "the HTTPS upstream's certificate is not verified (upstream.tls.insecureSkipVerify)"
                .to_owned(),
        );
    }
    match hsts_seconds {
        Some(seconds) if seconds >= HSTS_MIN_SECONDS => {}
        Some(_) => minor.push("HSTS max-age is under six months".to_owned()),
        None => minor.push("no HSTS".to_owned()),
    }
    if policy == TlsPolicy::Intermediate {
        minor.push(
            "TLS 1.2 is accepted (policy Intermediate; Modern serves TLS 1.3 only)".to_owned(),
        );
    }
    let grade = if !failing.is_empty() {
        "F"
    } else if !capped.is_empty() {
        "B"
    } else if minor.is_empty() {
        "A+"
    } else {
        "A"
    };
    let mut reasons = failing;
    reasons.extend(capped);
    reasons.extend(minor);
    (grade.to_owned(), reasons)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + day * 86_400).unwrap()
    }

    fn setup(policy: TlsPolicy, hsts_seconds: Option<u64>) -> Setup {
        Setup {
            policy,
            hsts_seconds,
            upstream_unverified: false,
        }
    }

    fn certificate() -> Certificate {
        Certificate {
            not_before: at(-10),
            not_after: at(80),
            names: vec![
                "shop.example.com".to_owned(),
                "*.shop.example.com".to_owned(),
            ],
            key: ("EC".to_owned(), 256),
            chain_length: 2,
            chain_ordered: true,
            self_signed: false,
        }
    }

    fn self_signed(key: &rcgen::KeyPair) -> String {
        let params = rcgen::CertificateParams::new(vec!["shop.example.com".to_owned()]).unwrap();
        params.self_signed(key).unwrap().pem()
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_fields() {
        for algorithm in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ED25519] {
            let key = rcgen::KeyPair::generate_for(algorithm).unwrap();
            let other = rcgen::KeyPair::generate_for(algorithm).unwrap();
            let crt = self_signed(&key);
            assert!(parse(crt.as_bytes(), key.serialize_pem().as_bytes()).is_ok());
            let error = parse(crt.as_bytes(), other.serialize_pem().as_bytes()).unwrap_err();
            assert!(
                error.contains("tls.key does not belong to the certificate in tls.crt"),
                "{error}"
            );
        }
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(covers("*.example.com", "www.example.com"));
        assert!(!covers("*.example.com", "a.b.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(covers("example.com", "example.com"));
    }

    #[test]
    fn a_good_certificate_with_long_hsts_gets_a_plus() {
        let year = Some(365 * 86_400);
        let hosts = ["shop.example.com", "www.shop.example.com"];
        assert_eq!(
            grade(
                &certificate(),
                &hosts,
                setup(TlsPolicy::Modern, year),
                at(0)
            ),
            ("A+".to_owned(), vec![])
        );
        let (grade_without, reasons) = grade(
            &certificate(),
            &hosts,
            setup(TlsPolicy::Modern, None),
            at(0),
        );
        assert_eq!(
            (grade_without.as_str(), reasons),
            ("A", vec!["no HSTS".to_owned()])
        );
    }

    #[test]
    fn faults_lower_the_grade_and_say_why() {
        let year = Some(365 * 86_400);
        let hosts = ["shop.example.com"];
        let (g, reasons) = grade(
            &certificate(),
            &hosts,
            setup(TlsPolicy::Modern, year),
            at(75),
        );
        assert_eq!(g, "B");
        assert_eq!(reasons, ["the certificate expires in 5 days"]);
        let (g, _) = grade(
            &certificate(),
            &hosts,
            setup(TlsPolicy::Modern, year),
            at(81),
        );
        assert_eq!(g, "F");
        let (g, reasons) = grade(
            &certificate(),
            &["blog.example.com"],
            setup(TlsPolicy::Modern, year),
            at(0),
        );
        assert_eq!(
            (g.as_str(), reasons[0].as_str()),
            ("F", "the certificate does not cover blog.example.com")
        );
        let weak = Certificate {
            key: ("RSA".to_owned(), 1024),
            self_signed: true,
            ..certificate()
        };
        let (g, reasons) = grade(&weak, &hosts, setup(TlsPolicy::Modern, year), at(0));
        assert_eq!(g, "F");
        assert_eq!(reasons.len(), 2, "{reasons:?}");
    }
}

//! `Proxy`: an nginx reverse proxy in front of a container.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Conditions, DURATION_PATTERN, HOSTNAME_PATTERN, NAME_PATTERN, SIZE_PATTERN};

/// Makes a container reachable at one or more hostnames through InfraPilot's nginx edge, with
/// optional TLS (from a Secret or from ACME), rate limits and access lists.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "infrapilot.io",
    version = "v1alpha1",
    kind = "Proxy",
    plural = "proxies",
    namespaced,
    status = "ProxyStatus",
    shortname = "px",
    category = "infrapilot",
    doc = "A Proxy makes a container reachable at its hostnames through InfraPilot's nginx edge.",
    printcolumn(name = "Hosts", type_ = "string", json_path = ".spec.hosts"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message"
    ),
    printcolumn(
        name = "Certificate Expires",
        type_ = "date",
        json_path = ".status.certificate.notAfter"
    ),
    printcolumn(
        name = "Upstream",
        type_ = "string",
        json_path = ".status.upstream.address",
        priority = 1
    ),
    printcolumn(
        name = "TLS Grade",
        type_ = "string",
        json_path = ".status.tlsGrade.grade",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ProxySpec {
    /// Hostnames served by this Proxy: DNS names or wildcards such as `*.example.com`, lower
    /// case. A hostname belongs to one Proxy only, in every namespace: the one created first
    /// (ties go to the namespace, then the name, that sorts first); a Proxy being deleted holds
    /// none. A Proxy that names a hostname another one holds is not served at all (Ready=False,
    /// reason HostConflict, naming the holder) and takes over when the holder is deleted or
    /// drops the hostname (at once, or at the latest within 15 seconds). A wildcard and a name
    /// it covers are different hostnames: requests go to the most specific.
    #[schemars(length(min = 1, max = 100), inner(regex(pattern = HOSTNAME_PATTERN), length(max = 253)))]
    pub hosts: Vec<String>,

    /// Where requests go: a container (by `name` or `selector`) on `port`, or a `url`.
    pub upstream: Upstream,

    /// TLS termination. Without it the Proxy serves plain HTTP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,

    /// Limits the request rate per client address; excess requests get 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,

    /// Client addresses allowed or denied; a denied request gets 403.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,

    /// Pass WebSocket upgrades through to the upstream.
    #[serde(default)]
    pub websockets: bool,

    /// The largest request body accepted, such as `10M` (nginx's default is `1M`); larger
    /// requests get 413. `0` disables the check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SIZE_PATTERN))]
    pub client_max_body_size: Option<String>,

    /// Timeouts towards the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,

    /// Headers added to requests sent upstream and to responses sent to clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,

    /// Serve a 503 maintenance page instead of proxying, keeping everything else in place.
    #[serde(default)]
    pub suspend: bool,
}

/// The upstream: exactly one of `name`, `selector` or `url`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.name), has(self.selector), has(self.url)].filter(x, x).size() == 1",
     "message": "exactly one of name, selector or url must be set"},
    {"rule": "has(self.url) || has(self.port)", "message": "port is required for a container upstream"},
    {"rule": "!has(self.tls) || (has(self.url) && self.url.startsWith('https://'))",
     "message": "tls applies to an https:// url only"},
]))]
pub struct Upstream {
    /// Name of the Docker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$"))]
    pub name: Option<String>,

    /// Docker labels selecting the container; exactly one running container must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,

    /// The container's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,

    /// The Docker network through which the edge reaches the container. Optional when the
    /// container is on exactly one eligible network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$"))]
    pub network: Option<String>,

    /// An HTTP or HTTPS URL instead of a container, such as `http://10.0.0.5:8080`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^https?://[A-Za-z0-9.\-\[\]:]+(:[0-9]{1,5})?(/[A-Za-z0-9._~\-/]*)?$"),
        length(max = 2048)
    )]
    pub url: Option<String>,

    /// How the edge verifies an `https://` URL upstream. Without it the upstream's certificate
    /// must chain to the edge's system CAs and name the URL's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
}

/// Verification of an HTTPS upstream's certificate: by the edge's system CAs unless `caBundle`
/// names others; `insecureSkipVerify` turns it off, and the status says so.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.caBundle) && has(self.insecureSkipVerify) && self.insecureSkipVerify)",
     "message": "caBundle and insecureSkipVerify exclude each other"},
]))]
pub struct UpstreamTls {
    /// PEM CA certificates the upstream's certificate must chain to, instead of the system CAs
    /// (for a private CA or a self-signed upstream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262144))]
    pub ca_bundle: Option<String>,

    /// The name verified in the upstream's certificate and sent as SNI; defaults to the URL's
    /// host (needed when the URL names an IP address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub server_name: Option<String>,

    /// Accept any certificate from the upstream. Traffic stays encrypted but anyone on the path
    /// can impersonate the upstream; shown in the status as `upstream.verification: Skipped`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

/// TLS for a Proxy: a certificate from `secretName` or from `acme`, not both.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.secretName) != has(self.acme)", "message": "exactly one of secretName or acme must be set"},
]))]
pub struct Tls {
    /// A `kubernetes.io/tls` Secret holding `tls.crt` and `tls.key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = NAME_PATTERN), length(max = 253))]
    pub secret_name: Option<String>,

    /// Obtain and renew the certificate from an ACME server (Let's Encrypt by default) with
    /// HTTP-01 challenges served by the edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<Acme>,

    /// Redirect plain HTTP to HTTPS (except ACME challenges).
    #[serde(default = "default_true")]
    pub redirect_http: bool,

    /// The protocol and cipher preset, after Mozilla's server-side TLS guidelines.
    #[serde(default)]
    pub policy: TlsPolicy,

    /// Send `Strict-Transport-Security`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts: Option<Hsts>,
}

fn default_true() -> bool {
    true
}

/// ACME (RFC 8555) issuance settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Acme {
    /// Contact address registered with the ACME account; the CA sends expiry notices there.
    #[schemars(regex(pattern = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"), length(max = 254))]
    pub email: String,

    /// The ACME directory URL. Defaults to Let's Encrypt's production directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https://"), length(max = 2048))]
    pub server: Option<String>,

    /// PEM CA certificates to trust for the ACME server itself (for a private or test CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
}

/// Mozilla's server-side TLS presets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TlsPolicy {
    /// TLS 1.3 only.
    Modern,
    /// TLS 1.2 and 1.3 with forward-secret AEAD ciphers: the recommended default.
    #[default]
    Intermediate,
}

/// `Strict-Transport-Security` settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hsts {
    /// How long browsers remember to use HTTPS only, such as `365d`.
    #[serde(default = "default_hsts_max_age")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_age: String,
    /// Apply to every subdomain too.
    #[serde(default)]
    pub include_sub_domains: bool,
    /// Ask to be included in browsers' preload lists.
    #[serde(default)]
    pub preload: bool,
}

fn default_hsts_max_age() -> String {
    "365d".to_owned()
}

/// A token-bucket rate limit per client address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Requests allowed per `period` on average.
    #[schemars(range(min = 1, max = 1000000))]
    pub average: u32,
    /// The period `average` is counted over: `1s` or `1m`.
    #[serde(default = "default_rate_period")]
    #[schemars(regex(pattern = r"^1(s|m)$"))]
    pub period: String,
    /// Requests allowed above the average in a burst before 429 is answered.
    #[serde(default)]
    #[schemars(range(max = 1000000))]
    pub burst: u32,
}

fn default_rate_period() -> String {
    "1s".to_owned()
}

/// Client address rules. Deny wins over allow; with an allow list, everything not allowed is
/// denied.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Access {
    /// CIDRs or addresses allowed, such as `10.0.0.0/8`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 1000),
        inner(regex(pattern = r"^[0-9a-fA-F.:]+(/[0-9]{1,3})?$"))
    )]
    pub allow: Vec<String>,
    /// CIDRs or addresses denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 1000),
        inner(regex(pattern = r"^[0-9a-fA-F.:]+(/[0-9]{1,3})?$"))
    )]
    pub deny: Vec<String>,
}

/// Timeouts towards the upstream (nginx's `proxy_*_timeout`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Establishing the connection (default `60s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub connect: Option<String>,
    /// Between two reads of the response (default `60s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub read: Option<String>,
    /// Between two writes of the request (default `60s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub send: Option<String>,
}

/// Header names and values to set. Names are HTTP tokens; values are printable ASCII.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Headers {
    /// Set on requests sent to the upstream.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub request: BTreeMap<String, String>,
    /// Set on responses sent to clients.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub response: BTreeMap<String, String>,
}

/// The observed state of a Proxy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and the conditions behind it.
    #[serde(default, skip_serializing_if = "Conditions::is_empty")]
    pub conditions: Conditions,
    /// The resolved upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamStatus>,
    /// Docker networks the edge is attached to for this Proxy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    /// The certificate being served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateStatus>,
    /// How the TLS setup rates, from A+ to F.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_grade: Option<TlsGrade>,
    /// Hash of the nginx configuration rendered for this Proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
}

/// Where the edge sends this Proxy's requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamStatus {
    /// `address:port` the edge connects to.
    pub address: String,
    /// The container resolved from the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The network the address belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// How an HTTPS upstream's certificate is checked: `SystemCAs`, `CABundle` or `Skipped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<String>,
    /// Why the upstream cannot be reached now although its configuration is served (a URL
    /// whose name does not resolve from the edge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The served certificate and its renewal.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// When the certificate expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// When renewal is due (two thirds into the certificate's lifetime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,
    /// Failed issuance attempts since the last success; retries back off exponentially.
    #[serde(default)]
    pub failed_issuance_attempts: u32,
    /// When issuance last failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Time>,
}

/// A grade for the TLS setup and what lowered it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsGrade {
    /// A+, A, B, C or F.
    pub grade: String,
    /// Why the grade is not higher.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

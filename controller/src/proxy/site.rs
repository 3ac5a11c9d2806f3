//! A Proxy as nginx configuration: validate the spec into typed settings, then render the
//! server block from those settings and the resolved upstream. Both steps are pure.

use std::fmt::Write as _;
use std::net::SocketAddr;

use super::grammar::{self, Cidr, Hostname, Invalid};
use crate::api::proxy::{ProxySpec, TlsPolicy};

/// The edge's access log format, one JSON object per request, written to the edge's own
/// output ([`ACCESS_LOG`]). Field names are stable: the alert rules read `proxy`, `status` and
/// `time` for error rates.
pub const ACCESS_LOG_FORMAT: &str = r#"'{"time":"$time_iso8601","proxy":"$infrapilot_proxy","host":"$host","method":"$request_method","uri":"$request_uri","status":$status,"bytes":$body_bytes_sent,"duration":$request_time,"upstream":"$upstream_addr","upstreamStatus":"$upstream_status","client":"$remote_addr","userAgent":"$http_user_agent"}'"#;

/// Where every Proxy's access log goes: the edge's standard output, which Docker keeps under
/// the edge's log rotation and serves through its API, to the alert rules and to
/// `docker logs` alike, wherever the engine runs (`docs/2026-12-04-error-rates.md`).
pub const ACCESS_LOG: &str = "/dev/stdout";

/// The part of the edge's configuration that no Proxy owns: the log format, the websocket
/// upgrade map, and default servers for the names no Proxy serves. On 80 they get 404. On 443
/// the TLS handshake is refused (`ssl_reject_handshake`): without it nginx answers an unknown
/// name with the first TLS Proxy's certificate and upstream. Its protocols are the listener's
/// on nginx before 1.29.2 (TLS 1.0 and 1.1 stay off; `Modern` Proxies refuse 1.2 by their
/// ciphers). A request whose SNI names a Proxy
/// but whose Host names none also ends there, with 404.
///
/// The server-name hash is sized for every name the grammar accepts: a bucket of 512 bytes
/// holds a 253-character name (nginx's default, 64 on x86-64, refuses one of about 60, and
/// says so naming no file), and up to 65,536 buckets hold the names of tens of thousands of
/// Proxies. nginx allocates only the buckets it uses.
pub fn edge_config() -> String {
    format!(
        "# Managed by InfraPilot: do not edit.\n\
         log_format infrapilot_json escape=json {ACCESS_LOG_FORMAT};\n\
         map $http_upgrade $infrapilot_connection_upgrade {{\n    default upgrade;\n    '' close;\n}}\n\
         server_names_hash_bucket_size 512;\n\
         server_names_hash_max_size 65536;\n\
         ssl_session_cache shared:infrapilot_tls:10m;\n\
         ssl_session_timeout 1d;\n\
         ssl_session_tickets off;\n\
         include /etc/nginx/infrapilot/resolver*.conf;\n\
         server {{\n    listen 80 default_server;\n    server_name _;\n    set $infrapilot_proxy \"\";\n    \
         access_log off;\n    return 404;\n}}\n\
         server {{\n    listen 443 ssl http2 default_server;\n    server_name _;\n    \
         ssl_reject_handshake on;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    set $infrapilot_proxy \"\";\n    access_log off;\n    return 404;\n}}\n"
    )
}

/// A Proxy's settings once every value passed the grammar.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub hosts: Vec<Hostname>,
    /// An upstream outside Docker, when the spec gives a URL.
    pub url: Option<String>,
    pub rate_limit: Option<RateLimit>,
    pub deny: Vec<Cidr>,
    pub allow: Vec<Cidr>,
    pub websockets: bool,
    pub client_max_body_size: Option<String>,
    /// Connect, read and send timeouts in milliseconds.
    pub timeouts: [Option<u64>; 3],
    /// Name and quoted value.
    pub request_headers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
    pub suspend: bool,
    pub tls: Option<TlsSettings>,
    /// How an `https://` URL upstream is verified; `None` for every other upstream.
    pub upstream_tls: Option<UpstreamTls>,
}

/// How the edge checks an HTTPS upstream's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The name verified in the certificate and sent as SNI (a checked hostname).
    pub name: String,
    pub verify: Verify,
}

/// Against which CAs an HTTPS upstream is verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verify {
    /// The edge image's CA bundle ([`SYSTEM_CAS`]).
    SystemCas,
    /// `upstream.tls.caBundle`, checked as PEM certificates, written next to the Proxy's
    /// certificate ([`upstream_ca_path`]).
    Bundle(Vec<u8>),
    /// `upstream.tls.insecureSkipVerify`.
    Skip,
}

impl Verify {
    /// How the status names it.
    pub fn label(&self) -> &'static str {
        match self {
            Self::SystemCas => "SystemCAs",
            Self::Bundle(_) => "CABundle",
            Self::Skip => "Skipped",
        }
    }
}

/// The CA bundle of Debian-based images such as the official `nginx` image, which the edge
/// runs by default; an edge image without it refuses HTTPS upstreams verified by system CAs
/// at `nginx -t`, naming the Proxy's file.
pub const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Where a Proxy's `upstream.tls.caBundle` lives inside the edge.
pub fn upstream_ca_path(id: &str) -> String {
    format!("{TLS_DIR}/{id}.upstream-ca.crt")
}

/// The Proxy's files that come from its spec alone (not from a Secret or ACME).
pub fn spec_files(id: &str, settings: &Settings) -> Vec<(String, Vec<u8>)> {
    match settings.upstream_tls.as_ref().map(|t| &t.verify) {
        Some(Verify::Bundle(pem)) => vec![(upstream_ca_path(id), pem.clone())],
        _ => Vec::new(),
    }
}

/// How a Proxy serves HTTPS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// The certificate comes from ACME: port 80 answers HTTP-01 challenges.
    pub acme: bool,
    pub redirect_http: bool,
    pub policy: TlsPolicy,
    /// The Strict-Transport-Security value, quoted.
    pub hsts: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub rate: u32,
    /// `s` or `m`.
    pub per: char,
    pub burst: u32,
}

impl Settings {
    /// Checks every user value of `spec`; reports all that fail, each with its field.
    pub fn from_spec(spec: &ProxySpec) -> Result<Self, Vec<Invalid>> {
        let mut check = Checker::default();
        let hosts = spec
            .hosts
            .iter()
            .enumerate()
            .filter_map(|(i, h)| check.keep(Hostname::parse(&format!("spec.hosts[{i}]"), h)))
            .collect();
        let url = spec
            .upstream
            .url
            .as_deref()
            .and_then(|u| check.keep(grammar::upstream_url("spec.upstream.url", u)));
        let rate_limit = spec.rate_limit.as_ref().and_then(|r| {
            let per = match r.period.as_str() {
                "1s" => Ok('s'),
                "1m" => Ok('m'),
                other => Err(Invalid {
                    field: "spec.rateLimit.period".to_owned(),
                    reason: format!("{other:?} must be 1s or 1m"),
                }),
            };
            check.keep(per).map(|per| RateLimit {
                rate: r.average,
                per,
                burst: r.burst,
            })
        });
        let (deny, allow) = match &spec.access {
            Some(access) => (
                check.cidrs(&access.deny, "deny"),
                check.cidrs(&access.allow, "allow"),
            ),
            None => (Vec::new(), Vec::new()),
        };
        let client_max_body_size = spec
            .client_max_body_size
            .as_deref()
            .and_then(|s| check.keep(grammar::size("spec.clientMaxBodySize", s)));
        let timeouts = match &spec.timeouts {
            Some(t) => [
                check.timeout("connect", t.connect.as_deref()),
                check.timeout("read", t.read.as_deref()),
                check.timeout("send", t.send.as_deref()),
            ],
            None => [None; 3],
        };
        let headers = spec.headers.clone().unwrap_or_default();
        let request_headers = check.headers(&headers.request, "request");
        let response_headers = check.headers(&headers.response, "response");
        let tls = spec.tls.as_ref().map(|tls| {
            let acme = tls.acme.is_some();
            if acme {
                for (i, host) in spec.hosts.iter().enumerate() {
                    if host.starts_with("*.") {
                        check.keep::<()>(Err(Invalid {
                            field: format!("spec.hosts[{i}]"),
                            reason: format!(
                                "{host:?}: a wildcard certificate needs a DNS-01 challenge; ACME \
                                 here answers HTTP-01 only: use tls.secretName"
                            ),
                        }));
                    }
                }
            }
            let hsts = tls.hsts.as_ref().and_then(|hsts| {
                let ms = check.keep(grammar::duration_ms("spec.tls.hsts.maxAge", &hsts.max_age))?;
                let mut value = format!("max-age={}", ms / 1000);
                if hsts.include_sub_domains {
                    value.push_str("; includeSubDomains");
                }
                if hsts.preload {
                    value.push_str("; preload");
                }
                Some(format!("\"{value}\""))
            });
            TlsSettings {
                acme,
                redirect_http: tls.redirect_http,
                policy: tls.policy,
                hsts,
            }
        });
        let upstream_tls = url
            .as_deref()
            .and_then(|url| check.upstream_tls(url, spec.upstream.tls.as_ref()));
        if !check.errors.is_empty() {
            return Err(check.errors);
        }
        Ok(Self {
            hosts,
            url,
            rate_limit,
            deny,
            allow,
            websockets: spec.websockets,
            client_max_body_size,
            timeouts,
            request_headers,
            response_headers,
            suspend: spec.suspend,
            tls,
            upstream_tls,
        })
    }
}

/// Collects every grammar failure of a spec rather than stopping at the first.
#[derive(Default)]
struct Checker {
    errors: Vec<Invalid>,
}

impl Checker {
    fn keep<T>(&mut self, result: Result<T, Invalid>) -> Option<T> {
        result.map_err(|error| self.errors.push(error)).ok()
    }

    fn cidrs(&mut self, list: &[String], side: &str) -> Vec<Cidr> {
        list.iter()
            .enumerate()
            .filter_map(|(i, c)| self.keep(Cidr::parse(&format!("spec.access.{side}[{i}]"), c)))
            .collect()
    }

    /// The verification of the (already checked) `url`, when it is HTTPS.
    fn upstream_tls(
        &mut self,
        url: &str,
        tls: Option<&crate::api::proxy::UpstreamTls>,
    ) -> Option<UpstreamTls> {
        let Some(rest) = url.strip_prefix("https://") else {
            if tls.is_some() {
                self.keep::<()>(Err(Invalid {
                    field: "spec.upstream.tls".to_owned(),
                    reason: "applies to an https:// url only".to_owned(),
                }));
            }
            return None;
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let host = if authority.starts_with('[') {
            authority
                .split_once(']')
                .map_or(authority, |(h, _)| h)
                .trim_start_matches('[')
        } else {
            authority.split(':').next().unwrap_or_default()
        };
        let name = match tls.and_then(|t| t.server_name.as_deref()) {
            Some(name) => {
                let field = "spec.upstream.tls.serverName";
                let name = self.keep(Hostname::parse(field, name))?;
                if name.as_str().starts_with("*.") {
                    self.keep::<()>(Err(Invalid {
                        field: field.to_owned(),
                        reason: format!("{:?} must name one host, not a wildcard", name.as_str()),
                    }));
                    return None;
                }
                name.as_str().to_owned()
            }
            None => host.to_owned(),
        };
        let verify = match tls {
            Some(t) if t.insecure_skip_verify && t.ca_bundle.is_some() => {
                self.keep::<()>(Err(Invalid {
                    field: "spec.upstream.tls".to_owned(),
                    reason: "caBundle and insecureSkipVerify exclude each other".to_owned(),
                }));
                return None;
            }
            Some(t) if t.insecure_skip_verify => Verify::Skip,
            Some(crate::api::proxy::UpstreamTls {
                ca_bundle: Some(pem),
                ..
            }) => Verify::Bundle(self.keep(ca_bundle("spec.upstream.tls.caBundle", pem))?),
            _ => Verify::SystemCas,
        };
        Some(UpstreamTls { name, verify })
    }

    fn timeout(&mut self, name: &str, value: Option<&str>) -> Option<u64> {
        value.and_then(|v| self.keep(grammar::duration_ms(&format!("spec.timeouts.{name}"), v)))
    }

    fn headers(
        &mut self,
        map: &std::collections::BTreeMap<String, String>,
        side: &str,
    ) -> Vec<(String, String)> {
        map.iter()
            .filter_map(|(name, value)| {
                let field = format!("spec.headers.{side}[{name:?}]");
                let name = self.keep(grammar::header_name(&field, name));
                let value = self.keep(grammar::header_value(&field, value));
                name.zip(value)
            })
            .collect()
    }
}

/// A CA bundle as nginx will read it: only CERTIFICATE blocks, each a readable X.509
/// certificate, at least one; rewritten from the parsed blocks so that nothing but
/// certificates reaches the edge.
fn ca_bundle(field: &str, pem: &str) -> Result<Vec<u8>, Invalid> {
    let bad = |reason: String| Invalid {
        field: field.to_owned(),
        reason,
    };
    let mut out = Vec::new();
    for (i, block) in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()).enumerate() {
        let block = block.map_err(|e| bad(format!("is not PEM: {e}")))?;
        if block.label != "CERTIFICATE" {
            return Err(bad(format!(
                "block {} is {:?}: only CERTIFICATE blocks belong in a CA bundle",
                i + 1,
                block.label
            )));
        }
        block
            .parse_x509()
            .map_err(|e| bad(format!("certificate {} cannot be read: {e}", i + 1)))?;
        use base64::Engine as _;
        let body = base64::engine::general_purpose::STANDARD.encode(&block.contents);
        out.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        for line in body.as_bytes().chunks(64) {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        out.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    if out.is_empty() {
        return Err(bad("holds no PEM certificate".to_owned()));
    }
    Ok(out)
}

/// The nginx name of a Proxy: its uid without dashes, so that renames and recreations never
/// collide and nothing user-written names a file or zone.
pub fn site_id(uid: &str) -> String {
    let hex: String = uid.chars().filter(char::is_ascii_hexdigit).collect();
    format!("p{}", hex.to_ascii_lowercase())
}

/// Where the edge sends a Proxy's traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Containers' addresses on networks the edge shares with them; requests are balanced
    /// across them.
    Containers(Vec<SocketAddr>),
    /// `settings.url`.
    Url,
}

/// Where a Proxy's certificate chain and key live inside the edge.
pub fn tls_paths(id: &str) -> (String, String) {
    (format!("{TLS_DIR}/{id}.crt"), format!("{TLS_DIR}/{id}.key"))
}

/// The directory of certificates inside the edge.
pub const TLS_DIR: &str = "/etc/nginx/infrapilot/tls";
/// Where ACME HTTP-01 tokens are served from inside the edge.
pub const ACME_DIR: &str = "/var/lib/infrapilot/acme";

/// The TLS 1.2 cipher list of a `Modern` server: NULL ciphers only, which no client offers and
/// which OpenSSL refuses at the security level named here, so that no TLS 1.2 handshake
/// completes whatever the 443 listener's protocols.
const MODERN_NO_TLS12_CIPHERS: &str = "eNULL:@SECLEVEL=2";

/// Mozilla's "Intermediate" cipher list (server-side TLS guidelines, version 5.7): TLS 1.2
/// suites with forward secrecy and AEAD; TLS 1.3 suites are not configurable in nginx.
const INTERMEDIATE_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:\
ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:\
DHE-RSA-CHACHA20-POLY1305";

/// Renders one Proxy's configuration: an optional rate-limit zone, the upstream, the plain
/// HTTP server and, when `certificate` is in place, the HTTPS server. `object` is
/// `namespace/name`, already checked as object names.
pub fn render(
    id: &str,
    object: &str,
    settings: &Settings,
    target: &Target,
    certificate: bool,
) -> String {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# Managed by InfraPilot for Proxy {object}: do not edit."
    );
    if let Some(rate) = &settings.rate_limit {
        let _ = writeln!(
            c,
            "limit_req_zone $binary_remote_addr zone={id}:10m rate={}r/{};",
            rate.rate, rate.per
        );
    }
    let pass = match (target, &settings.url) {
        (Target::Containers(addresses), _) => {
            let _ = writeln!(c, "upstream {id} {{");
            for address in addresses {
                let _ = writeln!(c, "    server {address};");
            }
            let _ = writeln!(c, "    keepalive 16;\n}}");
            format!("proxy_pass http://{id};")
        }
        (Target::Url, Some(url)) => {
            let mut pass = url_pass(url);
            if let Some(tls) = &settings.upstream_tls {
                pass.push_str(&upstream_tls(id, tls));
            }
            pass
        }
        // A URL target without a URL cannot be built: the reconciler never asks for it.
        (Target::Url, None) => "proxy_pass http://127.0.0.1:9;".to_owned(),
    };
    let hosts: Vec<&str> = settings.hosts.iter().map(Hostname::as_str).collect();
    let hosts = hosts.join(" ");
    let tls = settings.tls.as_ref();
    let https = certificate && tls.is_some();

    let _ = writeln!(c, "server {{\n    listen 80;\n    server_name {hosts};");
    if tls.is_some_and(|t| t.acme) {
        let _ = writeln!(
            c,
            "    location ^~ /.well-known/acme-challenge/ {{\n        alias {ACME_DIR}/;\n        \
             default_type text/plain;\n        access_log off;\n    }}"
        );
    }
    if https && tls.is_some_and(|t| t.redirect_http) {
        let _ = writeln!(
            c,
            "    location / {{\n        return 301 https://$host$request_uri;\n    }}\n}}"
        );
    } else {
        site_body(&mut c, id, object, settings, &pass);
        let _ = writeln!(c, "}}");
    }

    if let (true, Some(tls)) = (https, tls) {
        let (crt, key) = tls_paths(id);
        let _ = writeln!(
            c,
            "server {{\n    listen 443 ssl http2;\n    server_name {hosts};\n    \
             ssl_certificate {crt};\n    ssl_certificate_key {key};"
        );
        match tls.policy {
            TlsPolicy::Modern => {
                // nginx before 1.29.2 (Debian 12 has 1.22) negotiates the protocol before it
                // picks the server by SNI, so `ssl_protocols` alone leaves TLS 1.2 open when
                // any other Proxy allows it. The TLS 1.2 cipher list is this server's on every
                // version: one no handshake can use (NULL ciphers, which security level 2
                // forbids) refuses TLS 1.2 here; TLS 1.3 suites are configured apart.
                let _ = writeln!(
                    c,
                    "    ssl_protocols TLSv1.3;\n    ssl_ciphers {MODERN_NO_TLS12_CIPHERS};"
                );
            }
            TlsPolicy::Intermediate => {
                let _ = writeln!(
                    c,
                    "    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_ciphers {INTERMEDIATE_CIPHERS};"
                );
            }
        }
        let _ = writeln!(c, "    ssl_prefer_server_ciphers off;");
        if let Some(hsts) = &tls.hsts {
            let _ = writeln!(c, "    add_header Strict-Transport-Security {hsts} always;");
        }
        site_body(&mut c, id, object, settings, &pass);
        let _ = writeln!(c, "}}");
    }
    c
}

/// The directives that pass a request to a URL upstream (already normalised by the grammar:
/// `scheme://host[:port][path]`, the path of letters, digits and `._~-/` only).
///
/// A URL naming its host by IP address is passed to as written. One naming a host by name goes
/// through a variable, so nginx resolves the name per request with the edge's resolver instead
/// of once at load: a name that does not resolve then costs that Proxy's requests a 502, not
/// the edge its `nginx -t`, its reloads and its start. With a variable nginx no longer puts the
/// path in front of the request's; the `rewrite` does, as `proxy_pass` with a path does for
/// `location /`.
fn url_pass(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return format!("proxy_pass {url};");
    };
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    if url_name(url).is_none() {
        return format!("proxy_pass {url};");
    }
    let mut pass = format!("set $infrapilot_upstream \"{scheme}://{authority}\";\n");
    if !path.is_empty() && path != "/" {
        let _ = writeln!(pass, "        rewrite ^/(.*)$ {path}$1 break;");
    }
    pass.push_str("        proxy_pass $infrapilot_upstream;");
    pass
}

/// Verification of an HTTPS upstream, after its `proxy_pass`: nginx's default is to accept
/// any certificate and send no SNI. `name` passed the hostname grammar (or is the URL's
/// checked IP address).
fn upstream_tls(id: &str, tls: &UpstreamTls) -> String {
    let mut c = format!(
        "\n        proxy_ssl_server_name on;\n        proxy_ssl_name {};",
        tls.name
    );
    let trusted = match &tls.verify {
        Verify::Skip => {
            c.push_str("\n        proxy_ssl_verify off;");
            return c;
        }
        Verify::SystemCas => SYSTEM_CAS.to_owned(),
        Verify::Bundle(_) => upstream_ca_path(id),
    };
    let _ = write!(
        c,
        "\n        proxy_ssl_verify on;\n        proxy_ssl_verify_depth 4;\n        \
         proxy_ssl_trusted_certificate {trusted};"
    );
    c
}

/// The host name of a URL upstream (checked by the grammar), or `None` when it names an IP
/// address: only a name is resolved, per request.
pub fn url_name(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host);
    (!authority.starts_with('[') && host.parse::<std::net::Ipv4Addr>().is_err()).then_some(host)
}

/// The edge's `resolver` directive for the nameservers of its own `/etc/resolv.conf`: Docker's
/// embedded DNS (127.0.0.11) once the edge is on a user network, the host's otherwise. Only
/// addresses reach the file; one with a zone (`fe80::1%eth0`), which nginx cannot use, is left
/// out. No nameserver at all leaves a comment: names in URLs then get 502.
pub fn resolver_config(resolv_conf: &str) -> String {
    let servers: Vec<String> = resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|address| match address.parse::<std::net::IpAddr>().ok()? {
            std::net::IpAddr::V4(v4) => Some(v4.to_string()),
            std::net::IpAddr::V6(v6) => Some(format!("[{v6}]")),
        })
        .collect();
    if servers.is_empty() {
        "# Managed by InfraPilot: the edge's /etc/resolv.conf names no nameserver.\n".to_owned()
    } else {
        format!(
            "# Managed by InfraPilot from the edge's /etc/resolv.conf.\nresolver {} valid=10s;\nresolver_timeout 3s;\n",
            servers.join(" ")
        )
    }
}

/// Where the edge's resolver directive is written ([`resolver_config`]).
pub const RESOLVER_FILE: &str = "/etc/nginx/infrapilot/resolver.conf";

/// What a server block of a Proxy holds, whether plain or TLS.
fn site_body(c: &mut String, id: &str, object: &str, settings: &Settings, pass: &str) {
    let _ = writeln!(c, "    set $infrapilot_proxy \"{object}\";");
    let _ = writeln!(c, "    access_log {ACCESS_LOG} infrapilot_json;");
    if let Some(size) = &settings.client_max_body_size {
        let _ = writeln!(c, "    client_max_body_size {size};");
    }
    // nginx applies the first matching rule: denials first, then what is allowed, then the
    // rest is denied when an allow list exists.
    for cidr in &settings.deny {
        let _ = writeln!(c, "    deny {cidr};");
    }
    for cidr in &settings.allow {
        let _ = writeln!(c, "    allow {cidr};");
    }
    if !settings.allow.is_empty() {
        let _ = writeln!(c, "    deny all;");
    }
    for (name, value) in &settings.response_headers {
        let _ = writeln!(c, "    add_header {name} {value} always;");
    }
    let _ = writeln!(c, "    location / {{");
    if settings.suspend {
        let _ = writeln!(
            c,
            "        default_type text/html;\n        return 503 '<!doctype html><title>Maintenance</title><h1>Down for maintenance</h1><p>This site is being worked on and will be back soon.</p>';"
        );
    } else {
        if let Some(rate) = &settings.rate_limit {
            // nginx refuses `burst=0`: no burst is the same thing.
            let burst = if rate.burst > 0 {
                format!(" burst={} nodelay", rate.burst)
            } else {
                String::new()
            };
            let _ = writeln!(
                c,
                "        limit_req zone={id}{burst};\n        limit_req_status 429;"
            );
        }
        let _ = writeln!(c, "        {pass}\n        proxy_http_version 1.1;");
        let _ = writeln!(
            c,
            "        proxy_set_header Host $host;\n        proxy_set_header X-Real-IP $remote_addr;\n        \
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n        \
             proxy_set_header X-Forwarded-Proto $scheme;"
        );
        if settings.websockets {
            let _ = writeln!(
                c,
                "        proxy_set_header Upgrade $http_upgrade;\n        \
                 proxy_set_header Connection $infrapilot_connection_upgrade;"
            );
        } else {
            let _ = writeln!(c, "        proxy_set_header Connection \"\";");
        }
        for (directive, ms) in [
            "proxy_connect_timeout",
            "proxy_read_timeout",
            "proxy_send_timeout",
        ]
        .into_iter()
        .zip(settings.timeouts)
        {
            if let Some(ms) = ms {
                let _ = writeln!(c, "        {directive} {ms}ms;");
            }
        }
        for (name, value) in &settings.request_headers {
            let _ = writeln!(c, "        proxy_set_header {name} {value};");
        }
    }
    let _ = writeln!(c, "    }}");
}

#[cfg(test)]
mod tests;

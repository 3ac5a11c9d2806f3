use super::*;

fn spec(yaml: &str) -> ProxySpec {
    serde_saphyr::from_str(yaml).unwrap()
}

const BASIC: &str =
    "hosts: [shop.example.com, www.shop.example.com]\nupstream:\n  name: shop\n  port: 8080\n";

fn rendered(yaml: &str) -> String {
    let settings = Settings::from_spec(&spec(yaml)).unwrap();
    render(
        "pabc",
        "default/shop",
        &settings,
        &Target::Containers(vec!["172.18.0.5:8080".parse().unwrap()]),
        false,
    )
}

#[test]
fn a_basic_proxy_renders_an_upstream_and_a_server_for_its_hosts() {
    let config = rendered(BASIC);
    assert!(
        config.contains("upstream pabc {\n    server 172.18.0.5:8080;"),
        "{config}"
    );
    assert!(
        config.contains("server_name shop.example.com www.shop.example.com;"),
        "{config}"
    );
    assert!(config.contains("proxy_pass http://pabc;"), "{config}");
    assert!(config.contains("access_log /dev/stdout infrapilot_json;"));
    assert!(!config.contains("limit_req"), "{config}");
    assert!(!config.contains("deny"), "{config}");
}

#[test]
fn traffic_options_become_their_directives() {
    let config = rendered(&format!(
        "{BASIC}rateLimit: {{average: 10, period: 1m, burst: 5}}\naccess:\n  allow: [10.0.0.0/8]\n  deny: [10.1.2.3]\n\
         websockets: true\nclientMaxBodySize: 10M\ntimeouts: {{connect: 5s, read: 1m}}\n\
         headers:\n  request: {{X-Env: prod}}\n  response: {{Content-Security-Policy: \"default-src 'self'; img-src *\"}}\n"
    ));
    assert!(
        config.contains("limit_req_zone $binary_remote_addr zone=pabc:10m rate=10r/m;"),
        "{config}"
    );
    assert!(config.contains("limit_req zone=pabc burst=5 nodelay;\n        limit_req_status 429;"));
    // Denials first, then allows, then everything else denied.
    let deny = config.find("deny 10.1.2.3/32;").unwrap();
    let allow = config.find("allow 10.0.0.0/8;").unwrap();
    let rest = config.find("deny all;").unwrap();
    assert!(deny < allow && allow < rest, "{config}");
    assert!(config.contains("proxy_set_header Connection $infrapilot_connection_upgrade;"));
    assert!(config.contains("client_max_body_size 10m;"));
    assert!(
        config.contains("proxy_connect_timeout 5000ms;")
            && config.contains("proxy_read_timeout 60000ms;")
    );
    assert!(config.contains("proxy_set_header X-Env \"prod\";"));
    assert!(
        config.contains(
            "add_header Content-Security-Policy \"default-src 'self'; img-src *\" always;"
        )
    );
}

#[test]
fn a_suspended_proxy_answers_503_and_passes_nothing() {
    let config = rendered(&format!("{BASIC}suspend: true\n"));
    assert!(config.contains("return 503"), "{config}");
    assert!(!config.contains("proxy_pass"), "{config}");
}

#[test]
fn a_url_upstream_is_passed_to_as_rebuilt() {
    let settings = Settings::from_spec(&spec(
        "hosts: [api.example.com]\nupstream:\n  url: http://10.0.0.5:9000/v1/\n",
    ))
    .unwrap();
    let config = render("pabc", "default/api", &settings, &Target::Url, false);
    assert!(
        config.contains("proxy_pass http://10.0.0.5:9000/v1/;"),
        "{config}"
    );
    assert!(!config.contains("upstream pabc"), "{config}");
}

#[test]
fn a_url_upstream_named_by_host_is_resolved_per_request_keeping_its_path() {
    let render_url = |url: &str| {
        let settings = Settings::from_spec(&spec(&format!(
            "hosts: [api.example.com]\nupstream:\n  url: {url}\n"
        )))
        .unwrap();
        render("pabc", "default/api", &settings, &Target::Url, false)
    };
    let config = render_url("https://api.internal:9443/v1/");
    assert!(
        config.contains(
            "set $infrapilot_upstream \"https://api.internal:9443\";\n        \
             rewrite ^/(.*)$ /v1/$1 break;\n        proxy_pass $infrapilot_upstream;"
        ),
        "{config}"
    );
    // No path: the request's URI goes as it came, no rewrite.
    let config = render_url("http://api.internal");
    assert!(!config.contains("rewrite"), "{config}");
    assert!(
        config.contains("proxy_pass $infrapilot_upstream;"),
        "{config}"
    );
    // An IPv6 literal needs no resolver either.
    let config = render_url("http://[fd00::5]:80");
    assert!(
        config.contains("proxy_pass http://[fd00::5]:80;"),
        "{config}"
    );
}

#[test]
fn the_resolver_takes_only_addresses_from_resolv_conf() {
    assert_eq!(
        resolver_config("# generated\nnameserver 127.0.0.11\noptions ndots:0\n"),
        "# Managed by InfraPilot from the edge's /etc/resolv.conf.\nresolver 127.0.0.11 valid=10s;\nresolver_timeout 3s;\n"
    );
    let config = resolver_config(
        "nameserver 2001:db8::53\nnameserver fe80::1%eth0\nnameserver evil;include\nnameserver 10.0.0.2",
    );
    assert!(
        config.contains("resolver [2001:db8::53] 10.0.0.2 valid=10s;"),
        "{config}"
    );
    assert!(!resolver_config("search example.com\n").contains("resolver "));
}

#[test]
fn every_bad_value_is_reported_with_its_field() {
    let errors = Settings::from_spec(&spec(
        "hosts: [ok.example.com, Bad_Host]\nupstream: {name: shop, port: 80}\n\
         access: {allow: [10.0.0.0/40]}\nclientMaxBodySize: 10x\ntimeouts: {read: forever}\n\
         headers: {response: {X-Bad: \"a\\nb\"}}\n",
    ))
    .unwrap_err();
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.hosts[1]",
            "spec.access.allow[0]",
            "spec.clientMaxBodySize",
            "spec.timeouts.read",
            "spec.headers.response[\"X-Bad\"]",
        ]
    );
}

/// Every string field of a Proxy, with a payload in it: every field but a header value
/// refuses it, and a header value carries it as one quoted string and nothing else.
#[test]
fn injection_attempts_never_reach_the_configuration() {
    let payloads = [
        "x;\n}\nserver { listen 81; }#",
        "x\"; return 200 \"owned",
        "x' ; include /etc/passwd; '",
        "x { }",
        "x # comment",
        "$request_body",
    ];
    let base = "hosts: [a.example.com]\nupstream: {name: shop, port: 80}\n";
    let target = Target::Containers(vec!["10.0.0.1:80".parse().unwrap()]);
    for payload in payloads {
        let quoted = serde_json::to_string(payload).unwrap();
        let refusing = [
            format!("hosts: [{quoted}]\nupstream: {{name: shop, port: 80}}\n"),
            format!("hosts: [a.example.com]\nupstream: {{url: {quoted}}}\n"),
            format!("{base}access: {{deny: [{quoted}]}}\n"),
            format!("{base}clientMaxBodySize: {quoted}\n"),
            format!("{base}timeouts: {{read: {quoted}}}\n"),
            format!("{base}rateLimit: {{average: 1, period: {quoted}}}\n"),
            format!("{base}headers: {{request: {{{quoted}: v}}}}\n"),
        ];
        for yaml in refusing {
            assert!(
                Settings::from_spec(&spec(&yaml)).is_err(),
                "accepted: {yaml}"
            );
        }
        let header = |value: &str| {
            let value = serde_json::to_string(value).unwrap();
            Settings::from_spec(&spec(&format!(
                "{base}headers: {{response: {{X-A: {value}}}}}\n"
            )))
        };
        // Header values are quoted, not refused, unless they hold `$` or a control character:
        // a payload the grammar refuses is checked to be refused for that, never skipped.
        let refusable = payload.contains('$') || payload.chars().any(char::is_control);
        match header(payload) {
            Err(errors) => {
                assert!(refusable, "refused {payload:?}: {errors:?}");
                continue;
            }
            Ok(_) => assert!(!refusable, "accepted {payload:?}"),
        }
        if let Ok(settings) = header(payload) {
            let config = render("pabc", "default/x", &settings, &target, false);
            let benign = render(
                "pabc",
                "default/x",
                &header("SAFE").unwrap(),
                &target,
                false,
            );
            let as_quoted = grammar::header_value("v", payload).unwrap();
            assert_eq!(config.replace(&as_quoted, "\"SAFE\""), benign, "{payload}");
        }
    }
}

#[test]
fn site_ids_come_from_the_uid_only() {
    assert_eq!(site_id("5f0c-A1b2"), "p5f0ca1b2");
    assert_eq!(site_id("../etc;"), "pec");
}

const TLS: &str = "tls:\n  secretName: shop-tls\n  hsts: {maxAge: 180d, includeSubDomains: true}\n";

#[test]
fn with_a_certificate_https_is_served_and_plain_http_redirects() {
    let settings = Settings::from_spec(&spec(&format!("{BASIC}{TLS}"))).unwrap();
    let target = Target::Containers(vec!["172.18.0.5:8080".parse().unwrap()]);
    let config = render("pabc", "default/shop", &settings, &target, true);
    assert!(
        config.contains("return 301 https://$host$request_uri;"),
        "{config}"
    );
    assert!(config.contains("listen 443 ssl http2;"), "{config}");
    assert!(config.contains("ssl_certificate /etc/nginx/infrapilot/tls/pabc.crt;"));
    assert!(
        config.contains("ssl_protocols TLSv1.2 TLSv1.3;"),
        "{config}"
    );
    assert!(config.contains(
        "add_header Strict-Transport-Security \"max-age=15552000; includeSubDomains\" always;"
    ));
    // The upstream is passed to from the HTTPS server only.
    assert_eq!(config.matches("proxy_pass").count(), 1, "{config}");

    // Until the certificate is in place, plain HTTP serves the site.
    let pending = render("pabc", "default/shop", &settings, &target, false);
    assert!(!pending.contains("443"), "{pending}");
    assert!(pending.contains("proxy_pass"), "{pending}");
}

#[test]
fn modern_allows_tls_1_3_only_and_acme_answers_challenges() {
    let yaml = format!(
        "{BASIC}tls:\n  acme: {{email: ops@example.com}}\n  policy: Modern\n  redirectHttp: false\n"
    );
    let settings = Settings::from_spec(&spec(&yaml)).unwrap();
    let target = Target::Containers(vec!["172.18.0.5:8080".parse().unwrap()]);
    let config = render("pabc", "default/shop", &settings, &target, true);
    assert!(config.contains("ssl_protocols TLSv1.3;"), "{config}");
    // No TLS 1.2 cipher a handshake could use, whatever protocols the listener negotiates.
    assert!(
        config.contains("ssl_ciphers eNULL:@SECLEVEL=2;"),
        "{config}"
    );
    assert!(!config.contains("AES128-GCM"), "{config}");
    assert!(
        config.contains("location ^~ /.well-known/acme-challenge/"),
        "{config}"
    );
    assert!(!config.contains("return 301"), "{config}");
    let wildcard = Settings::from_spec(&spec(
        &yaml.replace("shop.example.com,", "\"*.example.com\","),
    ))
    .unwrap_err();
    assert_eq!(wildcard[0].field, "spec.hosts[0]");
}

fn https_upstream(tls: &str) -> Result<Settings, Vec<Invalid>> {
    Settings::from_spec(&spec(&format!(
        "hosts: [api.example.com]\nupstream:\n    url: https://10.0.0.5:9443/\n{tls}"
    )))
}

fn ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["upstream.internal".to_owned()]).unwrap();
    params.self_signed(&key).unwrap().pem()
}

#[test]
fn an_https_upstream_is_verified_by_the_system_cas_with_sni_by_default() {
    let settings = https_upstream("").unwrap();
    let config = render("pabc", "default/api", &settings, &Target::Url, false);
    assert!(
        config.contains(
            "proxy_pass https://10.0.0.5:9443/;\n        proxy_ssl_server_name on;\n        \
             proxy_ssl_name 10.0.0.5;\n        proxy_ssl_verify on;\n        \
             proxy_ssl_verify_depth 4;\n        \
             proxy_ssl_trusted_certificate /etc/ssl/certs/ca-certificates.crt;"
        ),
        "{config}"
    );
    assert!(spec_files("pabc", &settings).is_empty());
    // A plain HTTP upstream has nothing to verify.
    let plain = Settings::from_spec(&spec(
        "hosts: [api.example.com]\nupstream:\n  url: http://api.internal/\n",
    ))
    .unwrap();
    let config = render("pabc", "default/api", &plain, &Target::Url, false);
    assert!(!config.contains("proxy_ssl"), "{config}");
}

#[test]
fn a_ca_bundle_is_written_as_certificates_only_and_trusted_for_that_proxy() {
    let pem = ca_pem();
    let settings = https_upstream(&format!(
        "    tls:\n      serverName: upstream.internal\n      caBundle: |\n{}",
        pem.lines()
            .map(|l| format!("        {l}\n"))
            .collect::<String>()
    ))
    .unwrap();
    let config = render("pabc", "default/api", &settings, &Target::Url, false);
    assert!(
        config.contains("proxy_ssl_name upstream.internal;"),
        "{config}"
    );
    assert!(
        config.contains(
            "proxy_ssl_trusted_certificate /etc/nginx/infrapilot/tls/pabc.upstream-ca.crt;"
        ),
        "{config}"
    );
    let files = spec_files("pabc", &settings);
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].0, "/etc/nginx/infrapilot/tls/pabc.upstream-ca.crt");
    // Re-encoded from the parsed certificate: the same PEM, whatever surrounded it.
    assert_eq!(
        String::from_utf8(files[0].1.clone()).unwrap().trim(),
        pem.replace("\r\n", "\n").trim()
    );
}

#[test]
fn upstream_tls_refuses_what_it_cannot_honour_naming_the_field() {
    let field_of = |tls: &str| {
        let errors = https_upstream(tls).unwrap_err();
        (errors[0].field.clone(), errors[0].reason.clone())
    };
    let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let indented: String = key.lines().map(|l| format!("        {l}\n")).collect();
    let (field, reason) = field_of(&format!("    tls:\n      caBundle: |\n{indented}"));
    assert_eq!(field, "spec.upstream.tls.caBundle");
    assert!(reason.contains("only CERTIFICATE blocks"), "{reason}");
    let (field, reason) = field_of("    tls:\n      caBundle: not pem at all\n");
    assert_eq!(field, "spec.upstream.tls.caBundle");
    assert!(reason.contains("holds no PEM certificate"), "{reason}");
    let (field, _) = field_of("    tls:\n      serverName: \"a b;\"\n");
    assert_eq!(field, "spec.upstream.tls.serverName");
    let (field, reason) = field_of(&format!(
        "    tls:\n      insecureSkipVerify: true\n      caBundle: |\n{}",
        ca_pem()
            .lines()
            .map(|l| format!("        {l}\n"))
            .collect::<String>()
    ));
    assert_eq!(
        (field.as_str(), reason.as_str()),
        (
            "spec.upstream.tls",
            "caBundle and insecureSkipVerify exclude each other"
        )
    );
    let errors = Settings::from_spec(&spec(
        "hosts: [api.example.com]\nupstream:\n  url: http://api.internal/\n  tls:\n    insecureSkipVerify: true\n",
    ))
    .unwrap_err();
    assert_eq!(errors[0].field, "spec.upstream.tls");
}

#[test]
fn insecure_skip_verify_still_sends_sni_and_says_skipped() {
    let settings = https_upstream("    tls:\n      insecureSkipVerify: true\n").unwrap();
    let config = render("pabc", "default/api", &settings, &Target::Url, false);
    assert!(config.contains("proxy_ssl_server_name on;"), "{config}");
    assert!(config.contains("proxy_ssl_verify off;"), "{config}");
    assert!(
        !config.contains("proxy_ssl_trusted_certificate"),
        "{config}"
    );
    assert_eq!(settings.upstream_tls.unwrap().verify.label(), "Skipped");
}

#[test]
fn only_a_url_naming_a_host_is_looked_up() {
    assert_eq!(
        url_name("https://api.internal:9443/v1"),
        Some("api.internal")
    );
    assert_eq!(url_name("http://api.internal"), Some("api.internal"));
    assert_eq!(url_name("http://10.0.0.5:80/"), None);
    assert_eq!(url_name("http://[fd00::5]:80"), None);
}

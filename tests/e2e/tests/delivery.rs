//! AlertChannel delivery against real receivers: the SMTP sink and a loopback webhook server.

use std::collections::BTreeMap;
use std::time::Duration;

use infrapilot::api::alert::{Severity, SmtpTls, WebhookMethod};
use infrapilot::delivery::{
    Deliverer, DeliveryError, Message, MessageKind, Notifier, SmtpTarget, Target,
};
use infrapilot_e2e::mail::{Maildir, TlsSink, smtp_addr};
use infrapilot_e2e::names;
use infrapilot_e2e::webhook::WebhookServer;

fn message(title: &str) -> Message {
    Message {
        kind: MessageKind::Verification,
        title: title.to_owned(),
        text: "InfraPilot can deliver to this channel.".to_owned(),
        severity: Severity::Info,
        source: "AlertChannel default/ops".to_owned(),
        labels: BTreeMap::from([("channel".to_owned(), "ops".to_owned())]),
        alerts: None,
    }
}

fn deliverer() -> Deliverer {
    Deliverer::new(Duration::from_secs(5)).expect("an HTTP client")
}

#[tokio::test]
async fn an_email_is_delivered_to_the_smtp_sink() {
    let addr = smtp_addr();
    let recipient = format!("{}@example.test", names::unique("ops"));
    let target = Target::Smtp(SmtpTarget {
        host: addr.ip().to_string(),
        port: addr.port(),
        tls: SmtpTls::None,
        from: "InfraPilot <alerts@example.test>".to_owned(),
        to: vec![recipient.clone()],
        credentials: None,
        ca_bundle: None,
    });
    let receipt = deliverer()
        .deliver(&target, &message("Channel verified"))
        .await
        .unwrap();
    assert!(receipt.detail.starts_with("250"), "{receipt:?}");
    let mail = Maildir::from_env()
        .wait_for("the verification e-mail", Duration::from_secs(10), |m| {
            m.to.contains(&recipient)
        })
        .await;
    assert_eq!(mail.subject, "Channel verified");
    assert!(
        mail.body
            .contains("InfraPilot can deliver to this channel."),
        "{}",
        mail.body
    );
}

#[tokio::test]
async fn a_webhook_receives_the_json_payload_with_its_headers() {
    let server = WebhookServer::start().await.unwrap();
    let target = Target::Webhook {
        url: server.url("/alerts?token=s3cret"),
        method: WebhookMethod::PUT,
        headers: vec![("Authorization".to_owned(), "Bearer abc".to_owned())],
    };
    let receipt = deliverer()
        .deliver(&target, &message("Webhook verified"))
        .await
        .unwrap();
    assert_eq!(receipt.detail, "HTTP 200");
    let requests = server.wait_for_requests(1, Duration::from_secs(5)).await;
    assert_eq!(requests[0].method, "PUT");
    assert_eq!(requests[0].path, "/alerts?token=s3cret");
    assert_eq!(requests[0].header("authorization"), Some("Bearer abc"));
    let body = requests[0].json().unwrap();
    assert_eq!(
        (body["title"].as_str(), body["kind"].as_str()),
        (Some("Webhook verified"), Some("Verification"))
    );
}

#[tokio::test]
async fn a_refusing_receiver_is_reported_without_the_secret_url() {
    let server = WebhookServer::start().await.unwrap();
    server.respond_with(403);
    let target = Target::Slack {
        webhook_url: server.url("/services/T0/B0/SECRETTOKEN"),
        channel: Some("#ops".to_owned()),
    };
    let error = deliverer()
        .deliver(&target, &message("x"))
        .await
        .unwrap_err();
    assert!(matches!(error, DeliveryError::Rejected { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .starts_with("Slack refused the message: HTTP 403"),
        "{error}"
    );
    assert!(!error.to_string().contains("SECRETTOKEN"), "{error}");
    let requests = server.requests();
    assert_eq!(requests[0].json().unwrap()["channel"], "#ops");
}

#[tokio::test]
async fn a_closed_port_is_unreachable_for_webhooks_and_smtp() {
    // Bind and drop a listener: nothing listens on that port afterwards.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let webhook = Target::Webhook {
        url: format!("http://127.0.0.1:{port}/hook/SECRET"),
        method: WebhookMethod::POST,
        headers: vec![],
    };
    let error = deliverer()
        .deliver(&webhook, &message("x"))
        .await
        .unwrap_err();
    assert_eq!(
        error.category(),
        infrapilot::retry::Category::Unreachable,
        "{error}"
    );
    assert!(
        error
            .to_string()
            .starts_with(&format!("could not reach webhook http://127.0.0.1:{port}")),
        "{error}"
    );
    assert!(!error.to_string().contains("SECRET"), "{error}");

    let smtp = Target::Smtp(SmtpTarget {
        host: "127.0.0.1".to_owned(),
        port,
        tls: SmtpTls::None,
        from: "a@example.test".to_owned(),
        to: vec!["b@example.test".to_owned()],
        credentials: Some(("user".to_owned(), "hunter2".to_owned())),
        ca_bundle: None,
    });
    let error = deliverer().deliver(&smtp, &message("x")).await.unwrap_err();
    assert_eq!(
        error.category(),
        infrapilot::retry::Category::Unreachable,
        "{error}"
    );
    assert!(!error.to_string().contains("hunter2"), "{error}");
}

/// A target on the TLS sink: `tls` on the listener that speaks it, with AUTH and `ca`.
fn tls_target(
    sink: &TlsSink,
    tls: SmtpTls,
    recipient: &str,
    password: &str,
    ca: Option<&str>,
) -> Target {
    let (host, port) = match tls {
        SmtpTls::TLS => sink.tls.clone(),
        _ => sink.starttls.clone(),
    };
    Target::Smtp(SmtpTarget {
        host,
        port,
        tls,
        from: "InfraPilot <alerts@example.test>".to_owned(),
        to: vec![recipient.to_owned()],
        credentials: Some((sink.user.clone(), password.to_owned())),
        ca_bundle: ca.map(str::to_owned),
    })
}

/// The way real relays take mail: STARTTLS (587) and implicit TLS (465), each with SMTP AUTH,
/// the relay's certificate signed by a private CA that `caBundle` brings.
#[tokio::test]
async fn mail_goes_through_starttls_and_implicit_tls_with_auth_to_a_relay_with_a_private_ca() {
    let sink = TlsSink::from_env();
    for tls in [SmtpTls::StartTLS, SmtpTls::TLS] {
        let recipient = format!("{}@example.test", names::unique("tls"));
        let target = tls_target(&sink, tls, &recipient, &sink.password, Some(&sink.ca_pem));
        let receipt = deliverer()
            .deliver(&target, &message(&format!("Over {tls:?}")))
            .await
            .unwrap_or_else(|e| panic!("{tls:?}: {e}"));
        assert!(receipt.detail.starts_with("250"), "{tls:?}: {receipt:?}");
        let mail = Maildir::from_env()
            .wait_for("the e-mail over TLS", Duration::from_secs(10), |m| {
                m.to.contains(&recipient)
            })
            .await;
        assert_eq!(mail.subject, format!("Over {tls:?}"));
    }
}

/// What goes wrong with a real relay fails with a reason that says what, and never the
/// password: a wrong password, a certificate the system's roots (or another CA) do not
/// verify, and plain SMTP where the relay requires STARTTLS.
#[tokio::test]
async fn a_wrong_password_an_unverifiable_certificate_and_no_starttls_each_fail_clearly() {
    let sink = TlsSink::from_env();
    let recipient = format!("{}@example.test", names::unique("tls-fail"));
    let other_ca = std::fs::read_to_string(infrapilot_e2e::env::required_path(
        "INFRAPILOT_TEST_ACME_CA",
        "another test CA (pebble's listener)",
    ))
    .unwrap();
    let wrong = "wrong-Passw0rd-1234";
    let cases = [
        (
            tls_target(
                &sink,
                SmtpTls::StartTLS,
                &recipient,
                wrong,
                Some(&sink.ca_pem),
            ),
            infrapilot::retry::Category::Rejected,
            "535",
        ),
        (
            tls_target(&sink, SmtpTls::TLS, &recipient, wrong, Some(&sink.ca_pem)),
            infrapilot::retry::Category::Rejected,
            "535",
        ),
        (
            tls_target(&sink, SmtpTls::TLS, &recipient, &sink.password, None),
            infrapilot::retry::Category::Unreachable,
            "smtp.caBundle",
        ),
        (
            tls_target(
                &sink,
                SmtpTls::StartTLS,
                &recipient,
                &sink.password,
                Some(&other_ca),
            ),
            infrapilot::retry::Category::Unreachable,
            "certificate",
        ),
        (
            // Without a password to send: lettre would not send one over plain text at all.
            match tls_target(&sink, SmtpTls::None, &recipient, &sink.password, None) {
                Target::Smtp(smtp) => Target::Smtp(SmtpTarget {
                    credentials: None,
                    ..smtp
                }),
                other => other,
            },
            infrapilot::retry::Category::Rejected,
            "STARTTLS",
        ),
    ];
    for (target, category, says) in cases {
        let error = deliverer()
            .deliver(&target, &message("x"))
            .await
            .expect_err("the delivery fails");
        let text = error.to_string();
        assert_eq!(error.category(), category, "{target:?}: {text}");
        assert!(text.contains(says), "{target:?}: {text}");
        for secret in [wrong, sink.password.as_str()] {
            assert!(!text.contains(secret), "{text}");
        }
    }
    let none = Maildir::from_env().messages().unwrap();
    assert!(
        !none.iter().any(|m| m.to.contains(&recipient)),
        "a failed delivery was delivered"
    );
}

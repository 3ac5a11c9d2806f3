//! E-mail deliveries.

use std::time::Duration;

use lettre::message::MultiPart;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::http::error_chain;
use super::{DeliveryError, Message, Receipt, SmtpTarget, Target};
use crate::api::alert::SmtpTls;

pub(super) async fn send(
    smtp: &SmtpTarget,
    message: &Message,
    timeout: Duration,
) -> Result<Receipt, DeliveryError> {
    let described = Target::Smtp(smtp.clone()).describe();
    let email = build(smtp, message)?;
    // What `starttls_relay` and `relay` build, with the channel's CAs added to the system's.
    let builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host);
    let builder = match smtp.tls {
        SmtpTls::None => builder,
        SmtpTls::StartTLS => builder.tls(Tls::Required(tls_parameters(smtp)?)),
        SmtpTls::TLS => builder.tls(Tls::Wrapper(tls_parameters(smtp)?)),
    };
    let mut builder = builder.port(smtp.port).timeout(Some(timeout));
    if let Some((user, password)) = &smtp.credentials {
        builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
    }
    let transport = builder.build();
    // lettre's own timeout covers each command; this bounds the whole exchange.
    let sent = tokio::time::timeout(timeout * 2, transport.send(email))
        .await
        .map_err(|_| DeliveryError::Timeout {
            target: described.clone(),
            timeout,
        })?;
    match sent {
        Ok(response) => Ok(Receipt {
            detail: format!(
                "{} {}",
                response.code(),
                response.message().collect::<Vec<_>>().join(" ")
            ),
        }),
        Err(error) if error.is_timeout() => Err(DeliveryError::Timeout {
            target: described,
            timeout,
        }),
        Err(error) if error.is_permanent() || error.is_transient() => {
            Err(DeliveryError::Rejected {
                target: described,
                reason: error_chain(&error),
            })
        }
        // A certificate that does not verify is not a network trouble, but it is retried like
        // one: the relay's certificate may be renewed, or the CA bundle fixed meanwhile.
        // lettre reports rustls' refusal of the certificate as a connection error.
        Err(error) if error.is_tls() || error_chain(&error).contains("peer certificate") => {
            Err(DeliveryError::Unreachable {
                target: described,
                reason: format!(
                    "TLS failed: {} (a relay whose certificate a private CA signed needs \
                 smtp.caBundle)",
                    error_chain(&error)
                ),
            })
        }
        Err(error) => Err(DeliveryError::Unreachable {
            target: described,
            reason: error_chain(&error),
        }),
    }
}

fn tls_parameters(smtp: &SmtpTarget) -> Result<TlsParameters, DeliveryError> {
    let mut builder = TlsParameters::builder(smtp.host.clone());
    if let Some(pem) = &smtp.ca_bundle {
        let certificates = Certificate::from_pem(pem.as_bytes())
            .map_err(|e| DeliveryError::Config(format!("smtp.caBundle: {}", error_chain(&e))))?;
        builder = builder.add_root_certificate(certificates);
    }
    builder
        .build_rustls()
        .map_err(|e| DeliveryError::Config(format!("TLS settings: {}", error_chain(&e))))
}

/// Why `pem` cannot be a CA bundle, if it cannot: it must hold at least one PEM certificate
/// and nothing that does not parse.
pub(super) fn check_ca_bundle(pem: &str) -> Result<(), String> {
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned());
    }
    Certificate::from_pem(pem.as_bytes())
        .map(|_| ())
        .map_err(|e| format!("is not valid PEM: {}", error_chain(&e)))
}

fn build(smtp: &SmtpTarget, message: &Message) -> Result<lettre::Message, DeliveryError> {
    let address = |field: &str, text: &str| {
        text.parse::<lettre::message::Mailbox>().map_err(|e| {
            DeliveryError::Config(format!("{field} {text:?} is not an e-mail address: {e}"))
        })
    };
    let mut builder = lettre::Message::builder()
        .from(address("from", &smtp.from)?)
        .subject(&message.title);
    for to in &smtp.to {
        builder = builder.to(address("to", to)?);
    }
    let mut body = message.text.clone();
    if !message.labels.is_empty() {
        body.push_str("\n\n");
        for (key, value) in &message.labels {
            body.push_str(&format!("{key}: {value}\n"));
        }
    }
    body.push_str(&format!(
        "\n-- \nSent by InfraPilot for {}\n",
        message.source
    ));
    let built = match &message.alerts {
        Some(group) => builder.multipart(MultiPart::alternative_plain_html(
            body,
            html(message, group),
        )),
        None => builder.header(ContentType::TEXT_PLAIN).body(body),
    };
    built.map_err(|e| DeliveryError::Config(format!("the message cannot be built: {e}")))
}

/// The HTML part of an alert notification: a table of the alerts with their value, since
/// when, and the object each concerns.
fn html(message: &Message, group: &crate::alert::alertmanager::Group) -> String {
    let mut rows = String::new();
    for alert in &group.alerts {
        let label = |name: &str| escape(alert.labels.get(name).map_or("", String::as_str));
        let summary = escape(alert.annotations.get("summary").map_or("", String::as_str));
        let ended = if alert.status == "resolved" {
            format!(" to {}", escape(&alert.ends_at))
        } else {
            String::new()
        };
        rows.push_str(&format!(
            "<tr><td><b>{}</b></td><td>{}</td><td>{}</td><td>{}{ended}</td></tr>\n",
            escape(alert.status),
            label("subject"),
            summary,
            escape(&alert.starts_at),
        ));
    }
    format!(
        "<html><body>\n<h2>{}</h2>\n<p>{}</p>\n<table border=\"1\" cellpadding=\"4\">\n\
         <tr><th>Status</th><th>Subject</th><th>Value</th><th>Since</th></tr>\n{rows}</table>\n\
         <p>Sent by InfraPilot for {}</p>\n</body></html>\n",
        escape(&message.title),
        escape(&format!(
            "{} alert(s) of the {} condition",
            group.alerts.len(),
            group
                .common_labels
                .get("condition")
                .map_or("", String::as_str)
        )),
        escape(&message.source),
    )
}

/// HTML text escaping: the five characters HTML gives meaning to, which is all a text node or
/// attribute needs (a crate for these five replacements would add nothing).
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::api::alert::Severity;
    use crate::delivery::MessageKind;

    fn target() -> SmtpTarget {
        SmtpTarget {
            host: "127.0.0.1".to_owned(),
            port: 25,
            tls: SmtpTls::None,
            from: "InfraPilot <alerts@example.com>".to_owned(),
            to: vec!["ops@example.com".to_owned()],
            credentials: None,
            ca_bundle: None,
        }
    }

    fn message() -> Message {
        Message {
            kind: MessageKind::Verification,
            title: "Channel verified".to_owned(),
            text: "It works.".to_owned(),
            severity: Severity::Info,
            source: "AlertChannel default/ops".to_owned(),
            labels: BTreeMap::from([("channel".to_owned(), "ops".to_owned())]),
            alerts: None,
        }
    }

    #[test]
    fn the_email_carries_subject_body_labels_and_sender() {
        let email = String::from_utf8(build(&target(), &message()).unwrap().formatted()).unwrap();
        assert!(email.contains("Subject: Channel verified"), "{email}");
        assert!(email.contains("To: ops@example.com"), "{email}");
        assert!(email.contains("channel: ops"), "{email}");
        assert!(
            email.contains("Sent by InfraPilot for AlertChannel default/ops"),
            "{email}"
        );
    }

    fn alert_message() -> Message {
        crate::delivery::tests::with_alert(message())
    }

    #[test]
    fn an_alert_email_has_a_plain_text_and_an_escaped_html_part() {
        let email =
            String::from_utf8(build(&target(), &alert_message()).unwrap().formatted()).unwrap();
        assert!(email.contains("multipart/alternative"), "{email}");
        assert!(email.contains("text/plain"), "{email}");
        assert!(email.contains("text/html"), "{email}");
        assert!(email.contains("exit code 1 &lt;script&gt;"), "{email}");
        assert!(!email.contains("<script>"), "{email}");
    }

    #[test]
    fn a_bad_address_is_a_configuration_error_naming_the_field() {
        let mut bad = target();
        bad.to = vec!["not an address".to_owned()];
        let error = build(&bad, &message()).unwrap_err();
        assert_eq!(error.category(), crate::retry::Category::Config);
        assert!(
            error.to_string().contains("to \"not an address\""),
            "{error}"
        );
    }
}

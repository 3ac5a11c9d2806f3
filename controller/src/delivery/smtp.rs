//! E-mail deliveries.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
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
    let builder = match smtp.tls {
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host),
        SmtpTls::StartTLS => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)
            .map_err(|e| DeliveryError::Config(error_chain(&e)))?,
        SmtpTls::TLS => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host)
            .map_err(|e| DeliveryError::Config(error_chain(&e)))?,
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
        Err(error) => Err(DeliveryError::Unreachable {
            target: described,
            reason: error_chain(&error),
        }),
    }
}

fn build(smtp: &SmtpTarget, message: &Message) -> Result<lettre::Message, DeliveryError> {
    let address = |field: &str, text: &str| {
        text.parse::<lettre::message::Mailbox>().map_err(|e| {
            DeliveryError::Config(format!("{field} {text:?} is not an e-mail address: {e}"))
        })
    };
    let mut builder = lettre::Message::builder()
        .from(address("from", &smtp.from)?)
        .subject(&message.title)
        .header(ContentType::TEXT_PLAIN);
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
    builder
        .body(body)
        .map_err(|e| DeliveryError::Config(format!("the message cannot be built: {e}")))
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

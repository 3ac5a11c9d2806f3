//! Messages the SMTP sink (aiosmtpd) has written to its maildir.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Result;

/// The SMTP sink's address (`INFRAPILOT_TEST_SMTP`).
pub fn smtp_addr() -> SocketAddr {
    crate::env::required("INFRAPILOT_TEST_SMTP", "the SMTP sink")
        .parse()
        .expect("INFRAPILOT_TEST_SMTP is host:port")
}

/// The TLS SMTP sink (`tests/env/smtp_tls_sink.py`): STARTTLS on one port and implicit TLS on
/// another, each demanding AUTH, its certificate signed by a test CA of its own. It writes to
/// the plain sink's [`Maildir`].
#[derive(Debug, Clone)]
pub struct TlsSink {
    /// `localhost:port` of the STARTTLS listener (a relay's 587).
    pub starttls: (String, u16),
    /// `localhost:port` of the implicit-TLS listener (a relay's 465).
    pub tls: (String, u16),
    /// The PEM of the CA that signed the sink's certificate.
    pub ca_pem: String,
    pub user: String,
    pub password: String,
}

impl TlsSink {
    pub fn from_env() -> Self {
        let address = |name: &str| {
            let text = crate::env::required(name, "the TLS SMTP sink");
            let (host, port) = text.rsplit_once(':').expect("host:port");
            (host.to_owned(), port.parse().expect("a port"))
        };
        let ca = crate::env::required_path("INFRAPILOT_TEST_SMTP_CA", "the TLS SMTP sink's CA");
        Self {
            starttls: address("INFRAPILOT_TEST_SMTP_STARTTLS"),
            tls: address("INFRAPILOT_TEST_SMTP_TLS"),
            ca_pem: std::fs::read_to_string(&ca).expect("reading the TLS sink's CA"),
            user: crate::env::required("INFRAPILOT_TEST_SMTP_USER", "the TLS SMTP sink"),
            password: crate::env::required("INFRAPILOT_TEST_SMTP_PASSWORD", "the TLS SMTP sink"),
        }
    }
}

/// A message as delivered.
#[derive(Debug, Clone)]
pub struct Mail {
    pub path: PathBuf,
    pub from: String,
    pub to: Vec<String>,
    pub subject: String,
    pub body: String,
    pub raw: String,
}

impl Mail {
    pub fn parse(path: &Path, raw: &[u8]) -> Result<Self> {
        let parsed = mailparse::parse_mail(raw)?;
        let header = |name: &str| {
            use mailparse::MailHeaderMap;
            parsed.headers.get_first_value(name).unwrap_or_default()
        };
        // aiosmtpd records the envelope recipients in X-RcptTo; fall back to the To header.
        let recipients = match header("X-RcptTo") {
            r if r.is_empty() => header("To"),
            r => r,
        };
        Ok(Self {
            path: path.to_owned(),
            from: header("From"),
            to: recipients
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            subject: header("Subject"),
            body: parsed.get_body()?,
            raw: String::from_utf8_lossy(raw).into_owned(),
        })
    }
}

/// The sink's maildir. The run shares one, so tests find their messages by a unique
/// recipient or subject rather than by count.
#[derive(Debug, Clone)]
pub struct Maildir {
    dir: PathBuf,
}

impl Maildir {
    pub fn from_env() -> Self {
        Self::at(crate::env::required_path(
            "INFRAPILOT_TEST_MAILDIR",
            "the SMTP sink's maildir",
        ))
    }

    pub fn at(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Every message delivered so far.
    pub fn messages(&self) -> Result<Vec<Mail>> {
        let mut mails = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.dir.join(sub)) else {
                continue;
            };
            for entry in entries {
                let path = entry?.path();
                mails.push(Mail::parse(&path, &std::fs::read(&path)?)?);
            }
        }
        Ok(mails)
    }

    /// Waits until a message matching `predicate` is delivered, and returns it.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        predicate: impl Fn(&Mail) -> bool,
    ) -> Mail {
        crate::wait::eventually(what, timeout, || async {
            let messages = self.messages()?;
            messages
                .into_iter()
                .find(|m| predicate(m))
                .ok_or_else(|| anyhow::anyhow!("no such message in {}", self.dir.display()))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &str = "X-Peer: ('127.0.0.1', 5000)\r\nX-MailFrom: alerts@example.test\r\n\
        X-RcptTo: ops@example.test, oncall@example.test\r\nFrom: InfraPilot <alerts@example.test>\r\n\
        To: ops@example.test\r\nSubject: Channel verified\r\n\r\nHello.\r\n";

    #[test]
    fn a_delivered_message_is_parsed_with_its_envelope_recipients() {
        let mail = Mail::parse(Path::new("m"), MESSAGE.as_bytes()).unwrap();
        assert_eq!(mail.subject, "Channel verified");
        assert_eq!(mail.to, ["ops@example.test", "oncall@example.test"]);
        assert_eq!(mail.from, "InfraPilot <alerts@example.test>");
        assert_eq!(mail.body.trim(), "Hello.");
    }

    #[tokio::test]
    async fn wait_for_finds_a_message_in_new_or_cur() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("cur/1"), MESSAGE).unwrap();
        let maildir = Maildir::at(dir.path().to_owned());
        let mail = maildir
            .wait_for("the message", Duration::from_secs(1), |m| {
                m.subject.contains("verified")
            })
            .await;
        assert_eq!(mail.path, dir.path().join("cur/1"));
    }
}

//! Where the Docker engine is, read from the environment as the docker CLI reads it:
//! `DOCKER_HOST` (`unix://PATH` or `tcp://HOST:PORT`, default the local socket), and for
//! `tcp://` TLS when `DOCKER_TLS_VERIFY` is set, with `ca.pem`, `cert.pem` and `key.pem` from
//! `DOCKER_CERT_PATH` (default `~/.docker`).

use std::path::{Path, PathBuf};

use super::DockerError;

/// The socket the engine listens on when `DOCKER_HOST` says nothing.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// The docker CLI's ports of a `tcp://` host that names none.
const PLAIN_PORT: u16 = 2375;
const TLS_PORT: u16 = 2376;
/// Seconds a request may take to be answered (bollard's default); a streamed exec or upload
/// is bounded by its caller instead.
const REQUEST_TIMEOUT: u64 = 120;

/// A Docker engine's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port` (an IPv6 host in brackets), plain HTTP or TLS.
    Tcp {
        address: String,
        tls: Option<Tls>,
    },
}

/// The files of a TLS connection that verifies the engine and presents a client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Tcp { address, tls: None } => write!(f, "tcp://{address}"),
            Endpoint::Tcp {
                address,
                tls: Some(_),
            } => write!(f, "tcp://{address} (TLS)"),
        }
    }
}

impl Endpoint {
    /// The endpoint the process environment names.
    pub fn from_env() -> Result<Self, DockerError> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        Self::parse(|name| std::env::var(name).ok(), home.as_deref())
    }

    /// The endpoint `var` (an environment lookup) names; `home` is where `~/.docker` is.
    pub fn parse(
        var: impl Fn(&str) -> Option<String>,
        home: Option<&Path>,
    ) -> Result<Self, DockerError> {
        let set = |name: &str| var(name).filter(|v| !v.is_empty());
        let malformed = |host: &str, reason: &str| {
            DockerError::Config(format!("DOCKER_HOST={host} is malformed: {reason}"))
        };
        let Some(host) = set("DOCKER_HOST") else {
            return Ok(Endpoint::Unix(PathBuf::from(DEFAULT_SOCKET)));
        };
        // As the docker CLI: an address without a scheme is TCP.
        let (scheme, rest) = host.split_once("://").unwrap_or(("tcp", host.as_str()));
        match scheme {
            "unix" => {
                let path = if rest.is_empty() {
                    DEFAULT_SOCKET
                } else {
                    rest
                };
                if !path.starts_with('/') {
                    return Err(malformed(&host, "the socket path must be absolute"));
                }
                Ok(Endpoint::Unix(PathBuf::from(path)))
            }
            "tcp" => {
                let verify = set("DOCKER_TLS_VERIFY").is_some();
                if !verify && set("DOCKER_TLS").is_some() {
                    return Err(DockerError::Config(
                        "DOCKER_TLS without DOCKER_TLS_VERIFY asks for TLS that does not verify \
                         the engine, which InfraPilot does not do: set DOCKER_TLS_VERIFY=1 and \
                         put the engine's CA in DOCKER_CERT_PATH"
                            .to_owned(),
                    ));
                }
                let address = tcp_address(rest, if verify { TLS_PORT } else { PLAIN_PORT })
                    .map_err(|reason| malformed(&host, &reason))?;
                let tls = if verify {
                    let dir = match set("DOCKER_CERT_PATH") {
                        Some(dir) => PathBuf::from(dir),
                        None => home.map(|home| home.join(".docker")).ok_or_else(|| {
                            DockerError::Config(
                                "DOCKER_TLS_VERIFY is set but neither DOCKER_CERT_PATH nor \
                                     HOME says where ca.pem, cert.pem and key.pem are"
                                    .to_owned(),
                            )
                        })?,
                    };
                    Some(Tls {
                        ca: dir.join("ca.pem"),
                        cert: dir.join("cert.pem"),
                        key: dir.join("key.pem"),
                    })
                } else {
                    None
                };
                Ok(Endpoint::Tcp { address, tls })
            }
            "ssh" | "npipe" | "fd" | "http" | "https" => Err(malformed(
                &host,
                &format!(
                    "{scheme}:// is not supported here; use unix:///path/to/docker.sock or \
                     tcp://host:port (with DOCKER_TLS_VERIFY and DOCKER_CERT_PATH for TLS)"
                ),
            )),
            other => Err(malformed(
                &host,
                &format!("unknown scheme {other}://; use unix:// or tcp://"),
            )),
        }
    }

    /// A client of this endpoint. Nothing is sent yet; a TLS endpoint's files are read and
    /// checked now, so that a missing or unreadable one is reported at start.
    pub(super) fn client(&self) -> Result<bollard::Docker, DockerError> {
        let refused = |e: bollard::errors::Error| {
            DockerError::Config(format!("connecting to DOCKER_HOST={self}: {e}"))
        };
        match self {
            Endpoint::Unix(path) => bollard::Docker::connect_with_unix(
                &path.to_string_lossy(),
                REQUEST_TIMEOUT,
                bollard::API_DEFAULT_VERSION,
            )
            .map_err(refused),
            Endpoint::Tcp { address, tls: None } => bollard::Docker::connect_with_http(
                &format!("tcp://{address}"),
                REQUEST_TIMEOUT,
                bollard::API_DEFAULT_VERSION,
            )
            .map_err(refused),
            Endpoint::Tcp {
                address,
                tls: Some(tls),
            } => {
                tls.check()?;
                // bollard trusts the system's roots beside ca.pem (the docker CLI only
                // ca.pem); the engine's name must still match its certificate.
                bollard::Docker::connect_with_ssl(
                    &format!("tcp://{address}"),
                    &tls.key,
                    &tls.cert,
                    &tls.ca,
                    REQUEST_TIMEOUT,
                    bollard::API_DEFAULT_VERSION,
                )
                .map_err(refused)
            }
        }
    }
}

impl Tls {
    /// Each file is readable and holds PEM of the right kind: bollard reads the client
    /// certificate and key only during the handshake, and a handshake without them fails with
    /// a message that names neither.
    fn check(&self) -> Result<(), DockerError> {
        for (path, wanted) in [
            (&self.ca, "CERTIFICATE"),
            (&self.cert, "CERTIFICATE"),
            (&self.key, "PRIVATE KEY"),
        ] {
            let text = std::fs::read_to_string(path).map_err(|e| {
                DockerError::Config(format!(
                    "DOCKER_TLS_VERIFY is set but {} cannot be read (DOCKER_CERT_PATH): {e}",
                    path.display()
                ))
            })?;
            let found = text
                .lines()
                .any(|l| l.starts_with("-----BEGIN ") && l.ends_with(&format!("{wanted}-----")));
            if !found {
                return Err(DockerError::Config(format!(
                    "DOCKER_TLS_VERIFY is set but {} holds no PEM {wanted}",
                    path.display()
                )));
            }
        }
        Ok(())
    }
}

/// `host:port` of the part of a `tcp://` URL after the scheme; `default_port` when it names
/// none. The docker CLI's host is `localhost` when empty; a trailing `/` is allowed.
fn tcp_address(rest: &str, default_port: u16) -> Result<String, String> {
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') || authority.contains('?') || authority.contains('@') {
        return Err("only tcp://host:port is understood (no path, query or user)".to_owned());
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("an IPv6 address needs its closing ]")?;
        let port = match after {
            "" => None,
            after => Some(
                after
                    .strip_prefix(':')
                    .ok_or("a port follows the IPv6 address after a colon")?,
            ),
        };
        (format!("[{host}]"), port)
    } else {
        if authority.matches(':').count() > 1 {
            return Err("an IPv6 address goes in brackets: tcp://[::1]:2375".to_owned());
        }
        match authority.split_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (authority.to_owned(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Ok(format!("localhost:{}", port_number(port, default_port)?));
    }
    Ok(format!("{host}:{}", port_number(port, default_port)?))
}

fn port_number(port: Option<&str>, default_port: u16) -> Result<u16, String> {
    match port {
        None | Some("") => Ok(default_port),
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("the port {port} is not a number from 1 to 65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Endpoint, String> {
        Endpoint::parse(
            |name| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            },
            Some(Path::new("/home/op")),
        )
        .map_err(|e| e.to_string())
    }

    fn tcp(address: &str) -> Endpoint {
        Endpoint::Tcp {
            address: address.to_owned(),
            tls: None,
        }
    }

    #[test]
    fn without_docker_host_the_local_socket_is_used() {
        let socket = Endpoint::Unix(PathBuf::from("/var/run/docker.sock"));
        assert_eq!(parse(&[]), Ok(socket.clone()));
        assert_eq!(parse(&[("DOCKER_HOST", "")]), Ok(socket.clone()));
        assert_eq!(parse(&[("DOCKER_HOST", "unix://")]), Ok(socket));
        assert_eq!(
            parse(&[("DOCKER_HOST", "unix:///run/user/1000/docker.sock")]),
            Ok(Endpoint::Unix(PathBuf::from("/run/user/1000/docker.sock")))
        );
    }

    #[test]
    fn tcp_hosts_get_the_docker_cli_default_ports() {
        assert_eq!(
            parse(&[("DOCKER_HOST", "tcp://127.0.0.1:23750")]),
            Ok(tcp("127.0.0.1:23750"))
        );
        assert_eq!(
            parse(&[("DOCKER_HOST", "tcp://docker.example")]),
            Ok(tcp("docker.example:2375"))
        );
        assert_eq!(
            parse(&[("DOCKER_HOST", "tcp://docker.example:2375/")]),
            Ok(tcp("docker.example:2375"))
        );
        assert_eq!(
            parse(&[("DOCKER_HOST", "tcp://:2375")]),
            Ok(tcp("localhost:2375"))
        );
        assert_eq!(
            parse(&[("DOCKER_HOST", "tcp://[::1]:2375")]),
            Ok(tcp("[::1]:2375"))
        );
        assert_eq!(
            parse(&[("DOCKER_HOST", "tcp://[::1]")]),
            Ok(tcp("[::1]:2375"))
        );
        // The docker CLI takes an address without a scheme for TCP.
        assert_eq!(
            parse(&[("DOCKER_HOST", "10.0.0.5:2375")]),
            Ok(tcp("10.0.0.5:2375"))
        );
    }

    #[test]
    fn tls_verify_takes_the_three_files_from_the_cert_path() {
        let dir = PathBuf::from("/etc/docker-certs");
        assert_eq!(
            parse(&[
                ("DOCKER_HOST", "tcp://docker.example"),
                ("DOCKER_TLS_VERIFY", "1"),
                ("DOCKER_CERT_PATH", "/etc/docker-certs"),
            ]),
            Ok(Endpoint::Tcp {
                address: "docker.example:2376".to_owned(),
                tls: Some(Tls {
                    ca: dir.join("ca.pem"),
                    cert: dir.join("cert.pem"),
                    key: dir.join("key.pem"),
                }),
            })
        );
        // Without DOCKER_CERT_PATH, ~/.docker as the docker CLI.
        let Ok(Endpoint::Tcp { tls: Some(tls), .. }) = parse(&[
            ("DOCKER_HOST", "tcp://docker.example:2376"),
            ("DOCKER_TLS_VERIFY", "1"),
        ]) else {
            panic!("TLS expected")
        };
        assert_eq!(tls.ca, PathBuf::from("/home/op/.docker/ca.pem"));
        // An empty DOCKER_TLS_VERIFY is unset; DOCKER_CERT_PATH alone asks for nothing.
        assert_eq!(
            parse(&[
                ("DOCKER_HOST", "tcp://docker.example:2375"),
                ("DOCKER_TLS_VERIFY", ""),
                ("DOCKER_CERT_PATH", "/etc/docker-certs"),
            ]),
            Ok(tcp("docker.example:2375"))
        );
        // A unix socket needs no TLS.
        assert_eq!(
            parse(&[
                ("DOCKER_HOST", "unix:///x.sock"),
                ("DOCKER_TLS_VERIFY", "1")
            ]),
            Ok(Endpoint::Unix(PathBuf::from("/x.sock")))
        );
    }

    #[test]
    fn a_malformed_docker_host_is_refused_naming_it_and_the_reason() {
        for (host, reason) in [
            ("tcp://docker.example:port", "the port port is not a number"),
            ("tcp://docker.example:70000", "not a number from 1 to 65535"),
            ("tcp://docker.example:0", "not a number from 1 to 65535"),
            ("tcp://docker.example:2375/v1.41", "no path"),
            ("tcp://[::1", "closing ]"),
            ("tcp://::1:2375", "in brackets"),
            ("ssh://me@docker.example", "ssh:// is not supported"),
            ("https://docker.example", "https:// is not supported"),
            (
                "npipe:////./pipe/docker_engine",
                "npipe:// is not supported",
            ),
            ("gopher://docker.example", "unknown scheme gopher://"),
            ("unix://docker.sock", "must be absolute"),
        ] {
            let error = parse(&[("DOCKER_HOST", host)]).expect_err(host);
            assert!(error.contains(&format!("DOCKER_HOST={host}")), "{error}");
            assert!(error.contains(reason), "{host}: {error}");
        }
        let error = parse(&[("DOCKER_HOST", "tcp://docker.example"), ("DOCKER_TLS", "1")])
            .expect_err("TLS without verification");
        assert!(error.contains("DOCKER_TLS_VERIFY=1"), "{error}");
    }

    #[test]
    fn missing_or_wrong_tls_files_are_named_before_any_connection() {
        let dir = tempfile::tempdir().unwrap();
        let tls = Tls {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        };
        let endpoint = Endpoint::Tcp {
            address: "127.0.0.1:2376".to_owned(),
            tls: Some(tls.clone()),
        };
        let error = endpoint.client().expect_err("no files").to_string();
        assert!(error.contains("ca.pem cannot be read"), "{error}");
        let certificate = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        std::fs::write(&tls.ca, certificate).unwrap();
        std::fs::write(&tls.cert, certificate).unwrap();
        // A certificate where the key belongs.
        std::fs::write(&tls.key, certificate).unwrap();
        let error = endpoint.client().expect_err("no key").to_string();
        assert!(
            error.contains("key.pem holds no PEM PRIVATE KEY"),
            "{error}"
        );
    }
}

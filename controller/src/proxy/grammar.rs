//! The strict grammar every user value passes before it can reach nginx.
//!
//! Each check parses the value into a typed form, and the configuration is written from that
//! form, never from the user's text: a hostname is re-joined from checked labels, a CIDR from
//! its parsed address, a duration from its milliseconds. What cannot be typed (header values)
//! is written as a double-quoted nginx string with its quotes and backslashes escaped, after
//! control characters and `$` (nginx would expand a variable) were refused. There is no
//! raw-snippet escape hatch.

use std::fmt;
use std::net::IpAddr;

/// A value that does not fit the grammar: which field, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// A DNS name, optionally a `*.` wildcard, lower case.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hostname(String);

impl Hostname {
    pub fn parse(field: &str, text: &str) -> Result<Self, Invalid> {
        let (wildcard, rest) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let bad = || {
            invalid(
                field,
                format!("{text:?} must be a lower-case DNS name or wildcard such as *.example.com"),
            )
        };
        if rest.is_empty() || text.len() > 253 {
            return Err(bad());
        }
        let mut labels = Vec::new();
        for label in rest.split('.') {
            let ok = (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return Err(bad());
            }
            labels.push(label);
        }
        let joined = labels.join(".");
        Ok(Self(if wildcard {
            format!("*.{joined}")
        } else {
            joined
        }))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An address or network in CIDR notation, written back in canonical form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(field: &str, text: &str) -> Result<Self, Invalid> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| {
            invalid(
                field,
                format!("{text:?} must be an IP address or CIDR such as 10.0.0.0/8"),
            )
        })?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max && prefix.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| {
                    invalid(field, format!("{text:?} has a prefix length above {max}"))
                })?,
        };
        Ok(Self { address, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// A duration, written in milliseconds (nginx's `ms` unit).
pub fn duration_ms(field: &str, text: &str) -> Result<u64, Invalid> {
    crate::api::common::parse_duration(text)
        .and_then(|d| u64::try_from(d.as_millis()).ok())
        .filter(|ms| *ms > 0)
        .ok_or_else(|| {
            invalid(
                field,
                format!("{text:?} must be a duration such as 30s or 5m"),
            )
        })
}

/// A size with an optional k, m or g unit, written as nginx reads it.
pub fn size(field: &str, text: &str) -> Result<String, Invalid> {
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], Some(c.to_ascii_lowercase())),
        _ => (text, None),
    };
    let number: u64 = digits
        .parse()
        .ok()
        .filter(|_| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            invalid(
                field,
                format!("{text:?} must be a size such as 512, 10k, 5m or 1g"),
            )
        })?;
    match unit {
        None => Ok(number.to_string()),
        Some(unit @ ('k' | 'm' | 'g')) => Ok(format!("{number}{unit}")),
        Some(_) => Err(invalid(
            field,
            format!("{text:?} must be a size such as 512, 10k, 5m or 1g"),
        )),
    }
}

/// An HTTP header name (an RFC 9110 token).
pub fn header_name(field: &str, text: &str) -> Result<String, Invalid> {
    // HTTP allows more punctuation in a token, but quotes, `$` and `#` mean something to
    // nginx and no real header uses any of it.
    let token = !text.is_empty()
        && text.len() <= 256
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !token {
        return Err(invalid(
            field,
            format!("{text:?} must be a header name such as X-Frame-Options"),
        ));
    }
    Ok(text.to_owned())
}

/// An HTTP header value, as a double-quoted nginx string.
pub fn header_value(field: &str, text: &str) -> Result<String, Invalid> {
    if text.len() > 4096 {
        return Err(invalid(field, "the value is longer than 4096 characters"));
    }
    if let Some(c) = text.chars().find(|c| c.is_control() || !c.is_ascii()) {
        return Err(invalid(
            field,
            format!("the value holds {c:?}: only printable ASCII is allowed"),
        ));
    }
    if text.contains('$') {
        return Err(invalid(
            field,
            "the value holds \"$\", which nginx would expand as a variable",
        ));
    }
    Ok(quote(text))
}

/// `text` as a double-quoted nginx string. Only for text already free of control characters
/// and `$`: quotes and backslashes are the only characters left that end or escape a string.
fn quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// An `http://` or `https://` URL of an upstream outside Docker, rebuilt from its parts.
pub fn upstream_url(field: &str, text: &str) -> Result<String, Invalid> {
    let bad = |why: &str| invalid(field, format!("{text:?} {why}"));
    let (scheme, rest) = text
        .split_once("://")
        .filter(|(s, _)| matches!(*s, "http" | "https"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (address, after) = inner
            .split_once(']')
            .ok_or_else(|| bad("has an unclosed IPv6 address"))?;
        let address: std::net::Ipv6Addr = address
            .parse()
            .map_err(|_| bad("has an invalid IPv6 address"))?;
        (format!("[{address}]"), after.strip_prefix(':'))
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        let host = match host.parse::<std::net::Ipv4Addr>() {
            Ok(address) => address.to_string(),
            Err(_) => {
                Hostname::parse(field, host)
                    .map_err(|_| bad("must name a host such as api.example.com"))?
                    .0
            }
        };
        (host, port)
    };
    let port = match port {
        None => String::new(),
        Some(port) => {
            let number: u16 = port
                .parse()
                .ok()
                .filter(|p| *p > 0 && port.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| bad("has an invalid port"))?;
            format!(":{number}")
        }
    };
    if !path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._~-/".contains(&b))
    {
        return Err(bad(
            "has a path with characters other than letters, digits and ._~-/",
        ));
    }
    Ok(format!("{scheme}://{host}{port}{path}"))
}

/// A Kubernetes object name or namespace, as written into comments and log fields.
pub fn object_name(field: &str, text: &str) -> Result<String, Invalid> {
    let ok = !text.is_empty()
        && text.len() <= 253
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(text.to_owned())
    } else {
        Err(invalid(
            field,
            format!("{text:?} is not a valid object name"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What people try to smuggle into configuration files.
    const INJECTIONS: [&str; 9] = [
        "a\nb", "a;b", "a{b", "a}b", "a\"b", "a'b", "a#b", "a$host", "a\\",
    ];

    #[test]
    fn hostnames_accept_dns_names_and_wildcards_only() {
        assert_eq!(
            Hostname::parse("h", "shop.example.com").unwrap().as_str(),
            "shop.example.com"
        );
        assert_eq!(
            Hostname::parse("h", "*.example.com").unwrap().as_str(),
            "*.example.com"
        );
        for bad in [
            "",
            "Shop.example.com",
            "-a.com",
            "a..com",
            "a.*.com",
            "a b",
            "*.",
        ] {
            assert!(Hostname::parse("h", bad).is_err(), "{bad:?}");
        }
        for bad in INJECTIONS {
            assert!(Hostname::parse("h", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cidrs_are_parsed_and_written_canonically() {
        assert_eq!(
            Cidr::parse("c", "10.0.0.0/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            Cidr::parse("c", "192.168.1.7").unwrap().to_string(),
            "192.168.1.7/32"
        );
        assert_eq!(Cidr::parse("c", "::1").unwrap().to_string(), "::1/128");
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "all",
            "10.0.0.0/+8",
            "10.0.0.0/8;",
        ] {
            assert!(Cidr::parse("c", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_and_sizes_are_rewritten_from_their_values() {
        assert_eq!(duration_ms("t", "1m30s").unwrap(), 90_000);
        assert!(duration_ms("t", "0s").is_err());
        assert!(duration_ms("t", "5 m").is_err());
        assert_eq!(size("s", "10M").unwrap(), "10m");
        assert_eq!(size("s", "512").unwrap(), "512");
        for bad in ["", "m", "10x", "10mb", "1.5m", "10m;"] {
            assert!(size("s", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn header_values_are_quoted_and_what_nginx_would_interpret_refused() {
        assert_eq!(
            header_value("v", "default-src 'self'; img-src *").unwrap(),
            "\"default-src 'self'; img-src *\""
        );
        assert_eq!(
            header_value("v", "say \"hi\" \\o/").unwrap(),
            r#""say \"hi\" \\o/""#
        );
        assert!(header_value("v", "a\nb").is_err());
        assert!(header_value("v", "a\rb").is_err());
        assert!(header_value("v", "$host").is_err());
        assert!(header_value("v", "é").is_err());
        for injection in INJECTIONS {
            if let Ok(quoted) = header_value("v", injection) {
                // Whatever is accepted stays one quoted string: an unescaped quote never
                // appears inside it.
                let inner = &quoted[1..quoted.len() - 1];
                let mut escaped = false;
                for c in inner.chars() {
                    assert!(escaped || c != '"', "{quoted}");
                    escaped = !escaped && c == '\\';
                }
                assert!(!escaped, "{quoted} ends inside an escape");
            }
        }
        assert!(header_name("n", "X-Frame-Options").is_ok());
        for bad in INJECTIONS.into_iter().chain(["", "a b", "a:b"]) {
            assert!(header_name("n", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn upstream_urls_are_rebuilt_from_checked_parts() {
        assert_eq!(
            upstream_url("u", "http://api.internal:8080/v1/").unwrap(),
            "http://api.internal:8080/v1/"
        );
        assert_eq!(
            upstream_url("u", "https://10.0.0.5").unwrap(),
            "https://10.0.0.5"
        );
        assert_eq!(
            upstream_url("u", "http://[::1]:9000").unwrap(),
            "http://[::1]:9000"
        );
        for bad in [
            "ftp://x",
            "http://",
            "http://a:0",
            "http://a:99999",
            "http://a/b c",
            "http://a/b;c",
            "http://a/$uri",
            "http://a\n",
            "http://user@a/",
        ] {
            assert!(upstream_url("u", bad).is_err(), "{bad:?}");
        }
    }
}

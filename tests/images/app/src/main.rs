//! The upstream container of the end-to-end tests.
//!
//! It answers every request with the name of its container, so a test can tell which container
//! a proxy reached. A few paths help later tests: `/status/NNN` answers with that status code,
//! `/headers` echoes the request headers. The name comes from `APP_NAME`, or else from the
//! container's hostname; it listens on `0.0.0.0:$PORT` (default 8080) inside its container.
//!
//! Written with the standard library alone so that it links statically and its image holds one
//! file; an HTTP framework would add nothing a test needs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

fn main() -> std::io::Result<()> {
    let name = app_name();
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".to_owned());
    let listener = TcpListener::bind(format!("0.0.0.0:{port}"))?;
    eprintln!("app {name} listening on port {port}");
    for stream in listener.incoming().flatten() {
        let name = name.clone();
        thread::spawn(move || {
            if let Err(error) = serve(stream, &name) {
                eprintln!("connection failed: {error}");
            }
        });
    }
    Ok(())
}

fn app_name() -> String {
    std::env::var("APP_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|| "app".to_owned())
}

/// Reads one request and answers it; the connection is closed afterwards, which keeps the
/// server free of keep-alive bookkeeping.
fn serve(stream: TcpStream, name: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = Vec::new();
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        let line = line.trim_end().to_owned();
        if let Some((key, value)) = line.split_once(':')
            && key.eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse().unwrap_or(0);
        }
        headers.push(line);
    }
    // Drain a request body so the client sees a clean close.
    std::io::copy(
        &mut reader.by_ref().take(content_length as u64),
        &mut std::io::sink(),
    )?;

    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = respond(path, name, &headers);
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len}\r\nX-App-Name: {name}\r\nConnection: close\r\n\r\n{body}",
        reason = reason(status),
        len = body.len(),
    )?;
    stream.flush()
}

fn respond(path: &str, name: &str, headers: &[String]) -> (u16, String) {
    if let Some(code) = path.strip_prefix("/status/") {
        match code.parse::<u16>() {
            Ok(code @ 200..=599) => (code, format!("{name}\n")),
            _ => (400, "bad status code\n".to_owned()),
        }
    } else if path == "/headers" {
        (200, headers.iter().map(|h| format!("{h}\n")).collect())
    } else {
        (200, format!("{name}\n"))
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::respond;

    #[test]
    fn answers_with_its_name_on_any_path() {
        assert_eq!(respond("/", "web-1", &[]), (200, "web-1\n".to_owned()));
        assert_eq!(respond("/a/b?c=d", "web-1", &[]).1, "web-1\n");
    }

    #[test]
    fn status_path_sets_the_code_and_rejects_nonsense() {
        assert_eq!(respond("/status/503", "x", &[]).0, 503);
        assert_eq!(respond("/status/abc", "x", &[]).0, 400);
        assert_eq!(respond("/status/99", "x", &[]).0, 400);
    }

    #[test]
    fn headers_path_echoes_the_request_headers() {
        let headers = vec!["Host: a.example".to_owned(), "X-Test: 1".to_owned()];
        assert_eq!(
            respond("/headers", "x", &headers).1,
            "Host: a.example\nX-Test: 1\n"
        );
    }
}

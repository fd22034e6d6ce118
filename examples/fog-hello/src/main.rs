//! fog-hello: the sample fog service.
//!
//! Answers `GET /` with `{"hostname": ..., "arch": ..., "version": ...,
//! "labels": {...}}` so a test or an operator can see which device (and which
//! image variant) served a request. Labels come from `FOG_LABELS` (`key=value`
//! pairs separated by commas or newlines), which a deployment fills from the
//! node's labels; the version from `FOG_VERSION`, which an image build sets.
//!
//! `GET /call/HOST:PORT` asks another service (by its swarm DNS name) for its
//! `/` and answers `{"via": HOSTNAME, "answer": ...}`: the smallest proof that
//! services of a stack reach each other over their overlay network.
//!
//! std only (plus libc's bindings for one signal handler) and single-threaded
//! on purpose: the binary goes into a scratch image on small boards, and
//! every dependency costs bytes there.
//!
//! For the tests of swarm's service features it also: reports the command
//! line it was started with (`"argv"`), so a service's entrypoint and
//! arguments show; serves `GET /file/PATH` (a file's mode, owner and
//! content: secrets, configs and mounts as the task sees them) and
//! `GET /open/PATH` (whether the task may open a device node); counts its
//! starts in `FOG_COUNTER_FILE` when set (`"starts"`: data that outlives a
//! task); answers `/healthz` with 503 once `GET /sick` was called or when
//! `FOG_UNHEALTHY` is set; and has two subcommands: `fog-hello health`
//! (a healthcheck command for images without a shell) and `fog-hello once
//! [WORDS]` (prints a line and exits: a job's task).
//!
//! It exits at once on SIGTERM. As a container's PID 1 it would otherwise
//! ignore the signal (the kernel applies no default action to a namespace's
//! init), and every stop, rolling update or move off a relabelled device
//! would wait out Docker's 10 s grace period before SIGKILL.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Set by `GET /sick` (or `FOG_UNHEALTHY`): `/healthz` answers 503.
static SICK: AtomicBool = AtomicBool::new(false);

/// Largest request head we read before answering 431; keeps a misbehaving
/// client from growing our memory.
const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Exits on SIGTERM: only async-signal-safe work (`_exit`).
extern "C" fn on_terminate(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe and takes no pointers.
    #[allow(unsafe_code)]
    unsafe {
        libc::_exit(0)
    }
}

fn exit_on_terminate() {
    let handler: extern "C" fn(libc::c_int) = on_terminate;
    // SAFETY: installs a handler that only calls _exit, before any thread.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

fn main() {
    exit_on_terminate();
    let args: Vec<String> = std::env::args().collect();
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".to_string());
    match args.get(1).map(String::as_str) {
        Some("health") => {
            std::process::exit(match fetch_path(&format!("127.0.0.1:{port}"), "/healthz") {
                Ok(_) => 0,
                Err(e) => {
                    eprintln!("fog-hello: unhealthy: {e}");
                    1
                }
            })
        }
        Some("once") => {
            println!("fog-hello: once on {}: {}", hostname(), args[2..].join(" "));
            return;
        }
        _ => {}
    }
    SICK.store(
        std::env::var_os("FOG_UNHEALTHY").is_some(),
        Ordering::Relaxed,
    );
    let starts = count_start();
    let addr = format!("0.0.0.0:{port}");
    let listener = match TcpListener::bind(&addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fog-hello: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    let mut body = response_body(
        &hostname(),
        std::env::consts::ARCH,
        &std::env::var("FOG_VERSION").unwrap_or_default(),
        &std::env::var("FOG_LABELS").unwrap_or_default(),
    );
    // The extra facts go in before the closing brace.
    body.truncate(body.trim_end().len() - 1);
    body.push_str(&format!(
        ",\"argv\":[{}],\"starts\":{starts}}}\n",
        args.iter()
            .map(|a| json_string(a))
            .collect::<Vec<_>>()
            .join(",")
    ));
    eprintln!("fog-hello: listening on {addr}");
    for stream in listener.incoming().flatten() {
        // One bad client must not take the service down: errors end that
        // connection only.
        let _ = serve(stream, &body);
    }
}

fn serve(mut stream: TcpStream, body: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain the header block so the client sees a clean close.
    let mut seen = request_line.len();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line)?;
        seen += n;
        if n == 0 || line == "\r\n" || line == "\n" || seen > MAX_HEAD_BYTES {
            break;
        }
    }
    let (status, content) = match call_target(&request_line) {
        Some(target) => call(target),
        None if path_of(&request_line).is_some_and(|p| p.starts_with("/file/")) => {
            file(&path_of(&request_line).unwrap_or_default()["/file".len()..])
        }
        None if path_of(&request_line).is_some_and(|p| p.starts_with("/open/")) => {
            open(&path_of(&request_line).unwrap_or_default()["/open".len()..])
        }
        None => {
            let (status, content) = route(&request_line, seen > MAX_HEAD_BYTES, body);
            (status, content.to_string())
        }
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{content}",
        content.len()
    )?;
    stream.flush()
}

/// The `HOST:PORT` of a `GET /call/HOST:PORT` request line.
fn call_target(request_line: &str) -> Option<&str> {
    let mut parts = request_line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(path)) => path.strip_prefix("/call/").filter(|t| !t.is_empty()),
        _ => None,
    }
}

fn path_of(request_line: &str) -> Option<String> {
    let mut parts = request_line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(path)) => Some(path.to_string()),
        _ => None,
    }
}

/// A file as the task sees it: mode, owner and content.
fn file(path: &str) -> (&'static str, String) {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), std::fs::read(path)) {
        (Ok(meta), Ok(content)) => (
            "200 OK",
            format!(
                "{{\"path\":{},\"mode\":\"{:04o}\",\"uid\":{},\"gid\":{},\"content\":{}}}\n",
                json_string(path),
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid(),
                json_string(&String::from_utf8_lossy(&content))
            ),
        ),
        (Err(e), _) | (_, Err(e)) => (
            "404 Not Found",
            format!("{{\"error\":{}}}", json_string(&format!("{path}: {e}"))),
        ),
    }
}

/// Opens a path for reading and writing, as a program talking to a
/// device would, and says whether that worked: how a test tells a granted
/// device (opened) from one the engine's rules deny ("Operation not
/// permitted") or one the task does not have ("No such file").
fn open(path: &str) -> (&'static str, String) {
    let result = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path);
    let body = match result {
        Ok(_) => format!("{{\"path\":{},\"opened\":true}}\n", json_string(path)),
        Err(e) => format!(
            "{{\"path\":{},\"opened\":false,\"errno\":{},\"error\":{}}}\n",
            json_string(path),
            e.raw_os_error().unwrap_or(0),
            json_string(&e.to_string())
        ),
    };
    ("200 OK", body)
}

/// Adds one to the number in `FOG_COUNTER_FILE` (when set) and answers
/// it: how many times a task started on this data.
fn count_start() -> u64 {
    let Ok(path) = std::env::var("FOG_COUNTER_FILE") else {
        return 0;
    };
    let starts = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    if let Err(e) = std::fs::write(&path, format!("{starts}\n")) {
        eprintln!("fog-hello: cannot write {path}: {e}");
    }
    starts
}

/// Fetches `/` from `target` and wraps the answer; 502 when it fails.
fn call(target: &str) -> (&'static str, String) {
    match fetch(target) {
        Ok(answer) => (
            "200 OK",
            format!(
                "{{\"via\":{},\"answer\":{}}}\n",
                json_string(&hostname()),
                answer.trim()
            ),
        ),
        Err(e) => (
            "502 Bad Gateway",
            format!(
                "{{\"error\":{}}}",
                json_string(&format!("calling {target}: {e}"))
            ),
        ),
    }
}

fn fetch(target: &str) -> std::io::Result<String> {
    fetch_path(target, "/")
}

fn fetch_path(target: &str, path: &str) -> std::io::Result<String> {
    use std::io::Read;
    use std::net::ToSocketAddrs;
    let addr = target
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {target}\r\n\r\n")?;
    let mut response = String::new();
    stream.take(64 * 1024).read_to_string(&mut response)?;
    match response.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") =>
        {
            Ok(body.to_string())
        }
        Some((head, _)) => Err(std::io::Error::other(format!(
            "answered {}",
            head.lines().next().unwrap_or_default()
        ))),
        None => Err(std::io::Error::other("no HTTP answer")),
    }
}

/// Picks the status line and body for a request line.
fn route<'a>(request_line: &str, head_too_large: bool, body: &'a str) -> (&'static str, &'a str) {
    let mut parts = request_line.split_whitespace();
    match (parts.next(), parts.next()) {
        _ if head_too_large => (
            "431 Request Header Fields Too Large",
            "{\"error\":\"request head too large\"}",
        ),
        (Some("GET"), Some("/")) => ("200 OK", body),
        (Some("GET"), Some("/healthz")) if SICK.load(Ordering::Relaxed) => {
            ("503 Service Unavailable", "{\"status\":\"sick\"}")
        }
        (Some("GET"), Some("/healthz")) => ("200 OK", "{\"status\":\"ok\"}"),
        (Some("GET"), Some("/sick")) => {
            SICK.store(true, Ordering::Relaxed);
            ("200 OK", "{\"status\":\"sick from now on\"}")
        }
        (Some(_), Some(_)) => ("404 Not Found", "{\"error\":\"not found\"}"),
        _ => ("400 Bad Request", "{\"error\":\"bad request line\"}"),
    }
}

/// The kernel's host name: in a container, the container's.
fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Parses `k=v` pairs separated by commas or newlines; entries without `=`
/// become labels with an empty value, as `docker node update --label-add k`
/// does.
fn parse_labels(spec: &str) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = spec
        .split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|entry| match entry.split_once('=') {
            Some((k, v)) => (k.trim().to_string(), v.trim().to_string()),
            None => (entry.to_string(), String::new()),
        })
        .collect();
    labels.sort();
    labels.dedup_by(|a, b| a.0 == b.0);
    labels
}

fn response_body(hostname: &str, arch: &str, version: &str, labels: &str) -> String {
    let labels = parse_labels(labels)
        .iter()
        .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "{{\"hostname\":{},\"arch\":{},\"version\":{},\"labels\":{{{labels}}}}}\n",
        json_string(hostname),
        json_string(arch),
        json_string(version)
    )
}

/// A JSON string literal (RFC 8259 escaping).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_carries_hostname_arch_and_sorted_labels() {
        let body = response_body(
            "dev1",
            "aarch64",
            "v2",
            "zone=b, temperature_sensor=1\nflag",
        );
        assert_eq!(
            body,
            "{\"hostname\":\"dev1\",\"arch\":\"aarch64\",\"version\":\"v2\",\"labels\":{\"flag\":\"\",\"temperature_sensor\":\"1\",\"zone\":\"b\"}}\n"
        );
    }

    #[test]
    fn empty_labels_give_an_empty_object() {
        assert!(response_body("h", "x86_64", "", "").ends_with("\"labels\":{}}\n"));
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\u{1}"), "\"a\\\"b\\\\c\\u0001\"");
    }

    #[test]
    fn routes() {
        assert_eq!(route("GET / HTTP/1.1\r\n", false, "B").1, "B");
        assert_eq!(route("GET /x HTTP/1.1\r\n", false, "B").0, "404 Not Found");
        assert_eq!(route("garbage\r\n", false, "B").0, "400 Bad Request");
        assert!(route("GET / HTTP/1.1\r\n", true, "B").0.starts_with("431"));
    }

    #[test]
    fn call_targets() {
        assert_eq!(
            call_target("GET /call/web:8080 HTTP/1.1\r\n"),
            Some("web:8080")
        );
        assert_eq!(call_target("GET /call/ HTTP/1.1\r\n"), None);
        assert_eq!(call_target("GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn calls_another_service_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().expect("accept");
            serve(s, "{\"hostname\":\"other\"}\n").expect("serve");
        });
        let (status, body) = call(&addr.to_string());
        server.join().expect("server thread");
        assert_eq!(status, "200 OK");
        assert!(
            body.contains("\"answer\":{\"hostname\":\"other\"}"),
            "{body}"
        );
        let (status, body) = call("127.0.0.1:1");
        assert_eq!(status, "502 Bad Gateway", "{body}");
    }

    #[test]
    fn serves_over_real_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().expect("accept");
            serve(s, "{\"ok\":1}").expect("serve");
        });
        let mut client = TcpStream::connect(addr).expect("connect");
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut out = String::new();
        std::io::Read::read_to_string(&mut client, &mut out).expect("read");
        server.join().expect("server thread");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.ends_with("{\"ok\":1}"), "{out}");
    }
}

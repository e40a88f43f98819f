//! `testapp`: a tiny HTTP workload for Wharf's tests, built statically so it runs in a `FROM scratch`
//! image. Configured from the environment (see `Config`); `testapp check <url>` is its health probe,
//! `testapp post <url>` sends a POST (e.g. to `/fail-health`), `testapp resolve <name>` prints
//! the addresses the container's resolver gives for a name.

use parking_lot::Mutex;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::exit;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tiny_http::{Header, Method, Request, Response, Server};

struct Config {
    port: u16,
    version: String,
    start_delay_ms: u64,
    fail_health: bool,
    crash_after_ms: Option<u64>,
    crash_code: i32,
    /// Up to this much more before the crash, chosen at start (a job whose runs vary).
    crash_jitter_ms: u64,
    tick_ms: Option<u64>,
}

fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

impl Config {
    fn from_env() -> Config {
        Config {
            port: env_num("PORT").unwrap_or(8080),
            version: std::env::var("VERSION").unwrap_or_else(|_| "v1".to_string()),
            start_delay_ms: env_num("START_DELAY_MS").unwrap_or(0),
            fail_health: std::env::var("FAIL_HEALTH").is_ok_and(|v| v == "1" || v == "true"),
            crash_after_ms: env_num("CRASH_AFTER_MS"),
            crash_code: env_num("CRASH_CODE").unwrap_or(3),
            crash_jitter_ms: env_num("CRASH_JITTER_MS").unwrap_or(0),
            tick_ms: env_num("TICK_MS").filter(|ms| *ms > 0),
        }
    }
}

struct State {
    version: String,
    failing: AtomicBool,
    reason: Mutex<String>,
}

/// `testapp resolve <name>`: the addresses the system resolver gives for `name`, one per line,
/// sorted; exit code 1 when it resolves to none.
fn resolve(name: &str) -> i32 {
    match (name, 0).to_socket_addrs() {
        Ok(addrs) => {
            let mut ips: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
            ips.sort();
            ips.dedup();
            for ip in &ips {
                println!("{ip}");
            }
            if ips.is_empty() { 1 } else { 0 }
        }
        Err(e) => {
            eprintln!("cannot resolve {name}: {e}");
            1
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // One-shot commands (health checks, probes): `testapp check|post <url>`, `resolve <name>`.
    type Command = (&'static str, fn(&str) -> i32);
    let command: Option<Command> = match args.get(1).map(String::as_str) {
        Some("check") => Some(("check <url>", check)),
        Some("post") => Some(("post <url>", |url| request("POST", url))),
        Some("resolve") => Some(("resolve <name>", resolve)),
        _ => None,
    };
    if let Some((usage, run)) = command {
        match args.get(2) {
            Some(arg) => exit(run(arg)),
            None => {
                eprintln!("usage: testapp {usage}");
                exit(2);
            }
        }
    }
    install_signal_handlers();
    let cfg = Config::from_env();
    if cfg.start_delay_ms > 0 {
        println!("starting in {} ms", cfg.start_delay_ms);
        std::thread::sleep(Duration::from_millis(cfg.start_delay_ms));
    }
    if let Some(ms) = cfg.crash_after_ms {
        let code = cfg.crash_code;
        // The clock's nanoseconds are random enough for a test workload.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::from(d.subsec_nanos()))
            .unwrap_or(0);
        let ms = ms + nanos % (cfg.crash_jitter_ms + 1);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            say(&format!("crashing with exit code {code}"));
            exit(code);
        });
    }
    if let Some(ms) = cfg.tick_ms {
        std::thread::spawn(move || {
            let mut n: u64 = 0;
            loop {
                n += 1;
                say(&format!("tick {n}"));
                std::thread::sleep(Duration::from_millis(ms));
            }
        });
    }
    let server = match Server::http(("0.0.0.0", cfg.port)) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("cannot listen on 0.0.0.0:{}: {e}", cfg.port);
            exit(1);
        }
    };
    let state = Arc::new(State {
        version: cfg.version.clone(),
        failing: AtomicBool::new(cfg.fail_health),
        reason: Mutex::new(if cfg.fail_health {
            "FAIL_HEALTH=1".to_string()
        } else {
            String::new()
        }),
    });
    say(&format!(
        "listening on 0.0.0.0:{} version {}",
        cfg.port, cfg.version
    ));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let server = server.clone();
            let state = state.clone();
            std::thread::spawn(move || {
                loop {
                    match server.recv() {
                        Ok(req) => handle(&state, req),
                        Err(e) => eprintln!("accept failed: {e}"),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}

/// Print a line to stdout and flush, so logs show up at once even when stdout is a pipe.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

extern "C" fn on_terminate(_sig: libc::c_int) {
    // SAFETY: `_exit` is async-signal-safe; nothing else is done in the handler.
    #[allow(unsafe_code)]
    unsafe {
        libc::_exit(0)
    }
}

/// As PID 1 in a container, SIGTERM is ignored unless handled: exit 0 at once so stops are fast.
fn install_signal_handlers() {
    let handler = on_terminate as extern "C" fn(libc::c_int);
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: installs a handler that only calls the async-signal-safe `_exit`.
        #[allow(unsafe_code)]
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap_or_else(|_| {
        Header::from_bytes(&b"X-Invalid"[..], &b"1"[..]).expect("a static header is valid")
    })
}

fn text(code: u16, body: impl Into<String>) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(body.into())
        .with_status_code(code)
        .with_header(header("Content-Type", "text/plain; charset=utf-8"))
}

fn handle(state: &State, req: Request) {
    let url = req.url().to_string();
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (url.clone(), String::new()),
    };
    let method = req.method().clone();
    let resp = match (&method, path.as_str()) {
        (Method::Get, "/") => text(200, format!("{}\n", state.version))
            .with_header(header("X-Version", &state.version)),
        (Method::Get, "/healthz") => {
            if state.failing.load(Ordering::SeqCst) {
                let reason = state.reason.lock().clone();
                text(503, format!("unhealthy: {reason}\n"))
            } else {
                text(200, "ok\n")
            }
        }
        (Method::Post, "/fail-health") => {
            let reason =
                query_param(&query, "reason").unwrap_or_else(|| "failed on request".to_string());
            *state.reason.lock() = reason;
            state.failing.store(true, Ordering::SeqCst);
            say("health now failing");
            text(200, "health now failing\n")
        }
        (Method::Post, "/recover") => {
            state.failing.store(false, Ordering::SeqCst);
            say("health recovered");
            text(200, "recovered\n")
        }
        (Method::Post, "/crash") => {
            let code = query_param(&query, "code")
                .and_then(|c| c.parse().ok())
                .unwrap_or(3);
            say(&format!("crashing with exit code {code}"));
            exit(code);
        }
        (Method::Post, "/log") => {
            let msg = query_param(&query, "msg").unwrap_or_default();
            say(&msg);
            text(200, "logged\n")
        }
        (Method::Get, p) if p.starts_with("/file/") => {
            let path = format!("/{}", percent_decode(&p["/file/".len()..]));
            match std::fs::read(&path) {
                Ok(v) => Response::from_data(v).with_status_code(200),
                Err(e) => text(404, format!("{path}: {e}\n")),
            }
        }
        (Method::Get, p) if p.starts_with("/stat/") => {
            use std::os::unix::fs::MetadataExt;
            let path = format!("/{}", percent_decode(&p["/stat/".len()..]));
            match std::fs::metadata(&path) {
                Ok(m) => text(
                    200,
                    format!("{:o} {} {}", m.mode() & 0o7777, m.uid(), m.gid()),
                ),
                Err(e) => text(404, format!("{path}: {e}\n")),
            }
        }
        (Method::Get, p) if p.starts_with("/env/") => {
            let name = percent_decode(&p["/env/".len()..]);
            match std::env::var(&name) {
                Ok(v) => text(200, v),
                Err(_) => text(404, format!("{name} is not set\n")),
            }
        }
        _ => text(404, format!("no route for {method} {path}\n")),
    };
    let _ = req.respond(resp);
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `testapp check <url>`: exit 0 when the URL answers 2xx, else print why and exit 1.
fn check(url: &str) -> i32 {
    request("GET", url)
}

/// `check` with any method; prints the body of a 2xx answer.
fn request(method: &str, url: &str) -> i32 {
    match fetch(method, url) {
        Ok((status, body)) if (200..300).contains(&status) && method != "GET" => {
            print!("{body}");
            0
        }
        Ok((status, _)) if (200..300).contains(&status) => 0,
        Ok((status, body)) => {
            println!("status {status}: {}", body.trim_end());
            1
        }
        Err(e) => {
            println!("check failed: {e}");
            1
        }
    }
}

fn fetch(method: &str, url: &str) -> Result<(u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// urls are supported: {url}"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr_text = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let addr = addr_text
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr_text}: {e}"))?
        .next()
        .ok_or_else(|| format!("no address for {addr_text}"))?;
    let timeout = Duration::from_secs(5);
    let mut conn = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = conn.set_read_timeout(Some(timeout));
    let _ = conn.set_write_timeout(Some(timeout));
    write!(
        conn,
        "{method} {path} HTTP/1.0\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("cannot send request: {e}"))?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)
        .map_err(|e| format!("cannot read response: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next().unwrap_or("");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("malformed response: {status_line:?}"))?;
    Ok((status, body.to_string()))
}

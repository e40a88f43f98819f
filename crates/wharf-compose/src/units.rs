//! Parsing of Compose value syntaxes: durations, byte sizes, CPU amounts, ports, restart policies.

use wharf_types::{PortSpec, Protocol};

/// A non-negative decimal as `mantissa / 10^scale`.
fn decimal(s: &str) -> Option<(u128, u32)> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.chars().all(|c| c.is_ascii_digit()) || !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if int.len() + frac.len() > 30 {
        return None;
    }
    let digits = format!("{int}{frac}");
    let mantissa: u128 = digits.parse().ok()?;
    Some((mantissa, u32::try_from(frac.len()).ok()?))
}

/// `mantissa / 10^scale * mult`, rounded to nearest; `None` on overflow.
fn scaled(mantissa: u128, scale: u32, mult: u128) -> Option<u128> {
    let div = 10u128.checked_pow(scale)?;
    let n = mantissa.checked_mul(mult)?;
    Some(n.checked_add(div / 2)? / div)
}

/// The one duration grammar of Wharf, for stack files and the CLI alike: Go-style units
/// (`1m30s`, `10s`, `500ms`, `2h`, `1.5s`, `250us`, `10ns`) plus days (`90d`), or a bare whole
/// number of seconds (`30`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration: use e.g. 90s, 5m, 1h30m, 500ms or 90d".into());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    let mut total: u128 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("invalid duration {s:?}"));
        }
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        // Nanoseconds per unit.
        let per: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            "" => return Err(format!("invalid duration {s:?}: missing unit")),
            u => return Err(format!("invalid duration {s:?}: unknown unit {u:?}")),
        };
        let (m, sc) = decimal(num).ok_or_else(|| format!("invalid duration {s:?}"))?;
        let ns = scaled(m, sc, per).ok_or_else(|| format!("duration {s:?} is too large"))?;
        total = total
            .checked_add(ns)
            .ok_or_else(|| format!("duration {s:?} is too large"))?;
        rest = next;
    }
    let secs =
        u64::try_from(total / 1_000_000_000).map_err(|_| format!("duration {s:?} is too large"))?;
    let nanos = u32::try_from(total % 1_000_000_000).unwrap_or(0);
    Ok(std::time::Duration::new(secs, nanos))
}

/// [`parse_duration`] in whole milliseconds (sub-millisecond parts are dropped).
pub(crate) fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let d = parse_duration(s)?;
    u64::try_from(d.as_millis()).map_err(|_| format!("duration {s:?} is too large"))
}

/// The one size grammar of Wharf: "512M", "1g", "1024k", "1.5gb", "2MiB", "300" (bytes); units
/// are powers of 1024, case-insensitive.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u128 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => return Err(format!("invalid size {s:?}: unknown unit {u:?}")),
    };
    let (m, sc) = decimal(num).ok_or_else(|| format!("invalid size {s:?}"))?;
    let v = scaled(m, sc, mult).ok_or_else(|| format!("size {s:?} is too large"))?;
    u64::try_from(v).map_err(|_| format!("size {s:?} is too large"))
}

/// Parse a CPU amount ("0.5", "2") into nano-CPUs.
pub fn parse_nano_cpus(s: &str) -> Result<u64, String> {
    let (m, sc) = decimal(s.trim()).ok_or_else(|| format!("invalid cpus value {s:?}"))?;
    let v = scaled(m, sc, 1_000_000_000).ok_or_else(|| format!("cpus value {s:?} is too large"))?;
    if v == 0 {
        return Err(format!("cpus value {s:?} must be greater than 0"));
    }
    u64::try_from(v).map_err(|_| format!("cpus value {s:?} is too large"))
}

/// Parse a ratio in 0..=1 into parts per thousand.
pub fn parse_permille(s: &str) -> Result<u32, String> {
    let (m, sc) = decimal(s.trim()).ok_or_else(|| format!("invalid ratio {s:?}"))?;
    let v = scaled(m, sc, 1000).ok_or_else(|| format!("invalid ratio {s:?}"))?;
    if v > 1000 {
        return Err(format!("ratio {s:?} must be between 0 and 1"));
    }
    u32::try_from(v).map_err(|_| format!("invalid ratio {s:?}"))
}

fn port_number(s: &str, what: &str, spec: &str) -> Result<u16, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("invalid port {spec:?}: {what} {s:?} is not a number"))?;
    if n == 0 || n > 65535 {
        return Err(format!(
            "invalid port {spec:?}: {what} port {n} is out of range 1-65535"
        ));
    }
    // The range check above makes this conversion infallible.
    u16::try_from(n).map_err(|_| format!("invalid port {spec:?}"))
}

fn port_range(s: &str, what: &str, spec: &str) -> Result<(u16, u16), String> {
    match s.split_once('-') {
        Some((a, b)) => {
            let a = port_number(a, what, spec)?;
            let b = port_number(b, what, spec)?;
            if b < a {
                return Err(format!(
                    "invalid port {spec:?}: {what} range {a}-{b} is reversed"
                ));
            }
            Ok((a, b))
        }
        None => {
            let p = port_number(s, what, spec)?;
            Ok((p, p))
        }
    }
}

pub fn parse_protocol(p: &str, spec: &str) -> Result<Protocol, String> {
    match p.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        other => Err(format!(
            "invalid port {spec:?}: protocol {other:?} is not supported (use tcp or udp)"
        )),
    }
}

/// Parse the short port syntax: `80`, `8080:80`, `127.0.0.1:8080:80`, `[::1]:8080:80`,
/// `8080:80/udp`, `8000-8001:80-81`, `127.0.0.1::80`.
pub fn parse_port_short(spec: &str) -> Result<Vec<PortSpec>, String> {
    let (body, protocol) = match spec.rsplit_once('/') {
        Some((b, p)) => (b, parse_protocol(p, spec)?),
        None => (spec, Protocol::Tcp),
    };
    let (host_ip, rest) = if let Some(r) = body.strip_prefix('[') {
        let Some((ip, after)) = r.split_once(']') else {
            return Err(format!(
                "invalid port {spec:?}: missing \"]\" after the IPv6 address"
            ));
        };
        let Some(after) = after.strip_prefix(':') else {
            return Err(format!(
                "invalid port {spec:?}: expected \":\" after the host address"
            ));
        };
        (Some(ip.to_string()), after)
    } else {
        (None, body)
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (host_ip, published, target) = match (host_ip, parts.as_slice()) {
        (None, [t]) => (None, None, *t),
        (None, [p, t]) => (None, Some(*p), *t),
        (None, [ip, p, t]) => (Some((*ip).to_string()), Some(*p), *t),
        (Some(ip), [p, t]) => (Some(ip), Some(*p), *t),
        _ => {
            return Err(format!(
                "invalid port {spec:?}: expected [[host_ip:]published:]target[/protocol]"
            ));
        }
    };
    if let Some(ip) = &host_ip
        && (ip.is_empty() || ip.parse::<std::net::IpAddr>().is_err())
    {
        return Err(format!(
            "invalid port {spec:?}: {ip:?} is not an IP address"
        ));
    }
    let (t0, t1) = port_range(target, "target", spec)?;
    let published = match published {
        None | Some("") => None,
        Some(p) => Some(port_range(p, "published", spec)?),
    };
    let mut out = Vec::new();
    match published {
        None => {
            for t in t0..=t1 {
                out.push(PortSpec {
                    target: t,
                    published: None,
                    host_ip: host_ip.clone(),
                    protocol,
                });
            }
        }
        Some((p0, p1)) => {
            if p1 - p0 != t1 - t0 {
                return Err(format!(
                    "invalid port {spec:?}: the published range and the target range must have the same size"
                ));
            }
            for (t, p) in (t0..=t1).zip(p0..=p1) {
                out.push(PortSpec {
                    target: t,
                    published: Some(p),
                    host_ip: host_ip.clone(),
                    protocol,
                });
            }
        }
    }
    Ok(out)
}

/// Parse a single port number (long syntax `target` / `published`).
pub fn parse_port_number(s: &str, what: &str) -> Result<u16, String> {
    port_number(s, what, s)
}

/// Parse an `expose` entry ("3000", "3000/udp", "3000-3002") into "port" / "port/proto" strings.
pub fn parse_expose(spec: &str) -> Result<Vec<String>, String> {
    let (body, proto) = match spec.rsplit_once('/') {
        Some((b, p)) => (b, Some(parse_protocol(p, spec)?)),
        None => (spec, None),
    };
    let (a, b) = port_range(body, "exposed", spec)?;
    Ok((a..=b)
        .map(|p| match proto {
            Some(Protocol::Udp) => format!("{p}/udp"),
            _ => p.to_string(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (s, ms) in [
            ("1m30s", 90_000),
            ("10s", 10_000),
            ("500ms", 500),
            ("2h", 7_200_000),
            ("1.5s", 1500),
            ("0", 0),
            ("1h2m3s4ms", 3_723_004),
            ("10", 10_000),
            ("2d", 172_800_000),
            ("1m500us", 60_000),
        ] {
            assert_eq!(parse_duration_ms(s), Ok(ms), "{s}");
        }
        assert_eq!(
            parse_duration("1s250us"),
            Ok(std::time::Duration::from_micros(1_000_250))
        );
        for s in ["", "1.5", "1x", "s", "1..2s", "-1s", "10 s"] {
            assert!(parse_duration_ms(s).is_err(), "{s}");
        }
    }

    #[test]
    fn sizes_and_cpus() {
        for (s, b) in [
            ("512M", 512 << 20),
            ("1g", 1 << 30),
            ("1024k", 1 << 20),
            ("300", 300),
            ("1.5gb", 3 << 29),
            ("2MiB", 2 << 20),
        ] {
            assert_eq!(parse_size(s), Ok(b), "{s}");
        }
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("999999999999999999999999999999t").is_err());
        assert!(parse_duration_ms("999999999999999999999999999999h").is_err());
        assert!(parse_size("-1").is_err());
        assert_eq!(parse_nano_cpus("0.5"), Ok(500_000_000));
        assert_eq!(parse_nano_cpus("2"), Ok(2_000_000_000));
        assert!(parse_nano_cpus("0").is_err());
        assert!(parse_nano_cpus("lots").is_err());
        assert_eq!(parse_permille("0.25"), Ok(250));
        assert!(parse_permille("1.5").is_err());
    }

    #[test]
    fn ports() {
        let p = |s: &str| parse_port_short(s);
        assert_eq!(p("80").map(|v| v.len()), Ok(1));
        let v = p("127.0.0.1:8080:80/udp").expect("valid");
        assert_eq!(
            v[0],
            PortSpec {
                target: 80,
                published: Some(8080),
                host_ip: Some("127.0.0.1".into()),
                protocol: Protocol::Udp
            }
        );
        let v = p("8000-8001:80-81").expect("valid");
        assert_eq!((v[1].published, v[1].target), (Some(8001), 81));
        let v = p("[::1]:53:53").expect("valid");
        assert_eq!(v[0].host_ip.as_deref(), Some("::1"));
        assert_eq!(p("127.0.0.1::80").expect("valid")[0].published, None);
        for bad in [
            "99999:80",
            "abc",
            "80:0",
            "1-2:3",
            "a:b:c:d",
            "80/sctp",
            "foo:80:80",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_expose("3000-3001/udp"),
            Ok(vec!["3000/udp".into(), "3001/udp".into()])
        );
    }
}

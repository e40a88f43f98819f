//! `ports:`, short (`8080:80/udp`) and long form.

use wharf_types::PortSpec;

use crate::units;
use crate::yaml::{Kind, Node, Pos};

use super::keys::*;
use super::{Cx, Entries, fields};

impl Cx<'_> {
    pub(super) fn ports(&mut self, n: &Node, path: &str) -> Vec<PortSpec> {
        let hint = "write a list such as [\"8080:80\"]";
        self.list(n, path, hint, |cx, it, ip, out| match &it.kind {
            Kind::Scalar(s) => match units::parse_port_short(s.text.trim()) {
                Ok(v) => out.extend(v),
                Err(e) => cx.error(
                    it.pos,
                    format!("{ip}: {e}"),
                    "write [[host_ip:]published:]target[/tcp|udp] with ports 1-65535, e.g. \"8080:80\"",
                ),
            },
            Kind::Map(entries) => {
                if let Some(p) = cx.port_long(entries, it.pos, ip) {
                    out.push(p);
                }
            }
            Kind::Seq(_) => cx.type_error(it, ip, "a port string or a mapping", "write \"8080:80\" or {target: 80, published: 8080}"),
        })
    }

    pub(super) fn port_long(
        &mut self,
        entries: &Entries,
        pos: Pos,
        path: &str,
    ) -> Option<PortSpec> {
        let mut target = None;
        let mut port = PortSpec {
            target: 0,
            published: None,
            host_ip: None,
            protocol: Default::default(),
        };
        let hint = "use a port number between 1 and 65535";
        for (k, v, p) in fields(entries, path) {
            match k.name.as_str() {
                "target" => {
                    let n = self.uint(v, &p)?;
                    match units::parse_port_number(&n.to_string(), "target") {
                        Ok(t) => target = Some(t),
                        Err(e) => self.error(v.pos, format!("{p}: {e}"), hint),
                    }
                }
                "published" => {
                    let s = self.string(v, &p)?;
                    match units::parse_port_number(s.trim(), "published") {
                        Ok(t) => port.published = Some(t),
                        Err(e) => self.error(v.pos, format!("{p}: {e}"), hint),
                    }
                }
                "host_ip" => {
                    let s = self.string(v, &p)?;
                    if s.parse::<std::net::IpAddr>().is_err() {
                        self.error(
                            v.pos,
                            format!("{p}: {s:?} is not an IP address"),
                            "write an address such as 127.0.0.1",
                        );
                    }
                    port.host_ip = Some(s);
                }
                "protocol" => {
                    let s = self.string(v, &p)?;
                    match units::parse_protocol(&s, &s) {
                        Ok(pr) => port.protocol = pr,
                        Err(_) => self.error(
                            v.pos,
                            format!("{p}: unsupported protocol {s:?}"),
                            "use tcp or udp",
                        ),
                    }
                }
                "mode" => {
                    let s = self.string(v, &p)?;
                    if !matches!(s.as_str(), "host" | "ingress") {
                        self.error(
                            v.pos,
                            format!("{p}: unknown mode {s:?}"),
                            "use host or ingress",
                        );
                    }
                }
                _ => self.other_key(k, path, &PORT),
            }
        }
        match target {
            Some(t) => {
                port.target = t;
                Some(port)
            }
            None => {
                self.error(
                    pos,
                    format!("{path}: missing target"),
                    "add `target: <container port>`",
                );
                None
            }
        }
    }
}

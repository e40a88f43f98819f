//! The node's end of the encrypted tunnel between hosts (WireGuard): its key pair, kept in the
//! data directory (mode 0600; the private key never leaves the node), and what the host's
//! WireGuard interface should be (`Device`, planned by `hostnet::plan` and applied through the
//! `hostnet::Host` seam: `ip` and `wg`, with the kernel's WireGuard where the host has it and
//! `wireguard-go` where it does not).
//!
//! Why `wireguard-go` and not an embedded userspace crate (boringtun): it is the reference
//! implementation, packaged by Debian, configured by the same `wg` tool as the kernel's (one code
//! path for both), and it runs as its own process, so an agent that crashes or restarts leaves
//! the tunnel and every flow through it untouched. See ARCHITECTURE.md and `bench/network`.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The interface's default name (`wharf agent --wireguard-interface`).
pub const DEFAULT_INTERFACE: &str = "wharf0";
/// The default UDP port (`wharf agent --wireguard-port`): WireGuard's own.
pub const DEFAULT_PORT: u16 = 51820;
/// The key file in the agent's data directory.
pub const KEY_FILE: &str = "wireguard.json";
/// Below the hosts' 1500 by WireGuard's overhead (IPv4 + UDP + WireGuard: 60 bytes, and room).
pub const MTU: u32 = 1420;

/// What the key file holds.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    /// Base64, as `wg` takes it.
    private_key: String,
    /// Raised by each rotation (`wharf node rotate-keys`).
    epoch: u64,
}

/// The node's key pair.
#[derive(Clone)]
pub struct Keys {
    file: PathBuf,
    private: String,
    public: String,
    epoch: u64,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("public", &self.public)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// A fresh private key (clamped as X25519 wants it) and its public key, both base64.
fn generate() -> (String, String) {
    let mut bytes: [u8; 32] = rand::random();
    bytes[0] &= 248;
    bytes[31] &= 127;
    bytes[31] |= 64;
    let secret = x25519_dalek::StaticSecret::from(bytes);
    let public = x25519_dalek::PublicKey::from(&secret);
    let b64 = base64::engine::general_purpose::STANDARD;
    (b64.encode(secret.to_bytes()), b64.encode(public.as_bytes()))
}

/// The public key of a base64 private key.
pub(crate) fn public_of(private: &str) -> Result<String, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let bytes: [u8; 32] = b64
        .decode(private.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("the private key is not 32 bytes of base64")?;
    let public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(bytes));
    Ok(b64.encode(public.as_bytes()))
}

impl Keys {
    /// The node's keys from `dir`, made (and written, mode 0600) on the first start.
    pub fn load_or_create(dir: &Path) -> Result<Keys, String> {
        let file = dir.join(KEY_FILE);
        match std::fs::read(&file) {
            Ok(bytes) => {
                let k: KeyFile = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                let public =
                    public_of(&k.private_key).map_err(|e| format!("{}: {e}", file.display()))?;
                Ok(Keys {
                    file,
                    private: k.private_key,
                    public,
                    epoch: k.epoch,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (private, public) = generate();
                let keys = Keys {
                    file,
                    private,
                    public,
                    epoch: 0,
                };
                keys.save()?;
                Ok(keys)
            }
            Err(e) => Err(format!("cannot read {}: {e}", file.display())),
        }
    }

    /// Replace the key pair by a new one of `epoch` (written before it is used: a crash leaves
    /// the old pair or the new one, never none).
    pub fn rotate(&mut self, epoch: u64) -> Result<(), String> {
        let (private, public) = generate();
        let next = Keys {
            file: self.file.clone(),
            private,
            public,
            epoch,
        };
        next.save()?;
        *self = next;
        Ok(())
    }

    /// Write the key file: a new file of mode 0600, synced, renamed over the old one.
    fn save(&self) -> Result<(), String> {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = self.file.with_extension("json.tmp");
        let body = serde_json::to_vec(&KeyFile {
            private_key: self.private.clone(),
            epoch: self.epoch,
        })
        .map_err(|e| e.to_string())?;
        let write = || -> std::io::Result<()> {
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.file)
        };
        write().map_err(|e| format!("cannot write {}: {e}", self.file.display()))
    }

    pub fn public(&self) -> &str {
        &self.public
    }

    /// The private key, base64 (for `wg set … private-key`, through a pipe: never on a
    /// command line).
    pub fn private(&self) -> &str {
        &self.private
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// How this agent runs its end of the tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setup {
    pub interface: String,
    pub port: u16,
}

/// One peer of the WireGuard interface.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    pub public_key: String,
    /// `address:port` of the peer's interface.
    pub endpoint: String,
    /// The peer's block: the only sources accepted from it, the only destinations sent to it.
    pub allowed: String,
}

/// What the WireGuard interface should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub interface: String,
    pub port: u16,
    /// The interface's own address (`a.b.c.d/32`): the first of the node's block, never given to
    /// a container (it is the network address of the block's first stack subnet). Host traffic to
    /// other blocks (the ingress) leaves from it, so replies come back through the tunnel too.
    pub address: String,
    pub peers: std::collections::BTreeSet<Peer>,
}

/// The WireGuard interface as the host has it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// `kernel` or `wireguard-go`.
    pub implementation: String,
    pub public_key: String,
    pub port: u16,
    pub up: bool,
    pub addresses: Vec<String>,
    pub peers: std::collections::BTreeSet<Peer>,
}

impl DeviceState {
    /// Whether the interface itself (key, port, address, up) needs setting up for `d`.
    pub fn needs_setup(&self, d: &Device, public_key: &str) -> bool {
        self.public_key != public_key
            || self.port != d.port
            || !self.up
            || !self.addresses.contains(&d.address)
    }
}

/// Read `wg show IFACE dump`: the interface's public key and port, and its peers.
pub fn parse_dump(dump: &str) -> (String, u16, std::collections::BTreeSet<Peer>) {
    let mut lines = dump.lines();
    let (mut public, mut port) = (String::new(), 0);
    if let Some(first) = lines.next() {
        let f: Vec<&str> = first.split('\t').collect();
        public = f.get(1).map(|s| s.to_string()).unwrap_or_default();
        if public == "(none)" {
            public.clear();
        }
        port = f.get(2).and_then(|p| p.parse().ok()).unwrap_or(0);
    }
    let peers = lines
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Some(Peer {
                public_key: f.first()?.to_string(),
                endpoint: f.get(2)?.to_string(),
                allowed: f.get(3)?.to_string(),
            })
        })
        .collect();
    (public, port, peers)
}

/// Read `ip -d -j addr show dev IFACE`: the implementation, whether it is up, its addresses.
pub fn parse_link(json: &str) -> Option<(String, bool, Vec<String>)> {
    #[derive(Deserialize)]
    struct Link {
        #[serde(default)]
        flags: Vec<String>,
        #[serde(default)]
        linkinfo: Option<LinkInfo>,
        #[serde(default)]
        addr_info: Vec<Addr>,
    }
    #[derive(Deserialize)]
    struct LinkInfo {
        #[serde(default)]
        info_kind: String,
    }
    #[derive(Deserialize)]
    struct Addr {
        #[serde(default)]
        local: String,
        #[serde(default)]
        prefixlen: u8,
    }
    let links: Vec<Link> = serde_json::from_str(json).ok()?;
    let l = links.into_iter().next()?;
    let kind = l.linkinfo.map(|i| i.info_kind).unwrap_or_default();
    let implementation = if kind == "wireguard" {
        "kernel"
    } else {
        "wireguard-go"
    };
    let up = l.flags.iter().any(|f| f == "UP");
    let addresses = l
        .addr_info
        .iter()
        .map(|a| format!("{}/{}", a.local, a.prefixlen))
        .collect();
    Some((implementation.to_string(), up, addresses))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_once_kept_private_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let k = Keys::load_or_create(dir.path()).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "the key file is the owner's only");
        let again = Keys::load_or_create(dir.path()).unwrap();
        assert_eq!(again.public(), k.public(), "the same key on the next start");
        assert_eq!(k.public().len(), 44, "base64 of 32 bytes: {}", k.public());
        assert!(
            !format!("{k:?}").contains(k.private()),
            "Debug hides the key"
        );

        let mut r = again;
        r.rotate(3).unwrap();
        assert_ne!(r.public(), k.public());
        let loaded = Keys::load_or_create(dir.path()).unwrap();
        assert_eq!((loaded.public(), loaded.epoch()), (r.public(), 3));
    }

    #[test]
    fn a_known_key_gives_the_public_key_wg_gives() {
        // `wg pubkey` of this private key (RFC 7748's Alice).
        let private = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
        assert_eq!(
            public_of(private).unwrap(),
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
        );
    }

    #[test]
    fn dumps_and_links_are_read() {
        let dump = "cHJpdg==\tPUB=\t51820\toff\n\
                    K1=\t(none)\t10.0.0.2:51820\t10.64.16.0/20\t0\t0\t0\t25\n";
        let (public, port, peers) = parse_dump(dump);
        assert_eq!((public.as_str(), port), ("PUB=", 51820));
        assert_eq!(
            peers.into_iter().collect::<Vec<_>>(),
            [Peer {
                public_key: "K1=".into(),
                endpoint: "10.0.0.2:51820".into(),
                allowed: "10.64.16.0/20".into()
            }]
        );
        let link = r#"[{"ifname":"wharf0","flags":["POINTOPOINT","NOARP","UP","LOWER_UP"],
            "linkinfo":{"info_kind":"tun"},"addr_info":[{"family":"inet","local":"10.64.0.0","prefixlen":32}]}]"#;
        assert_eq!(
            parse_link(link),
            Some((
                "wireguard-go".to_string(),
                true,
                vec!["10.64.0.0/32".to_string()]
            ))
        );
        assert_eq!(parse_link("[]"), None);
    }
}

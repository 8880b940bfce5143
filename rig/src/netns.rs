//! [`Netns`]: a network namespace joined to the host by a veth pair.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{anyhow, bail, Context as _};
use tokio::process::Command;

static NETNS_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A network namespace joined to the host by a veth pair, for tests that need
/// a client with an address other than loopback (or a link to break).
///
/// Each `Netns` gets its own /30 inside 198.51.100.0/24 (TEST-NET-2): the
/// first free one, so normally host side `198.51.100.1/30`, namespace side
/// `198.51.100.2/30`. Chosen this way (rather than one namespace shared by
/// the whole test process) because tests may run in parallel, in one process
/// (cargo test threads) or in several (nextest, other checkouts on the same
/// machine): slots are claimed under an exclusive lock on
/// `/tmp/relaytest-netns.lock` by reading which addresses the host already
/// has. Names: namespace `relaytest-<pid>-<n>`, interfaces `rt<pid>-<n>h`
/// (host) and `rt<pid>-<n>n` (namespace). Dropping it deletes the namespace
/// (which deletes the veth pair). Namespaces left by dead test processes
/// (killed before their Drop ran) are deleted by the next `create`.
///
/// Needs root (CAP_NET_ADMIN).
pub struct Netns {
    name: String,
    host_if: String,
    host_addr: Ipv4Addr,
    ns_addr: Ipv4Addr,
}

impl Netns {
    /// Creates the namespace and the veth pair, both ends up, `lo` up.
    pub async fn create() -> anyhow::Result<Netns> {
        if !is_root() {
            bail!(
                "Netns::create needs root (to create network namespaces and veth pairs); \
                 run the tests as root, or set RELAY_TEST_NO_NETNS=1 to skip tests that need one"
            );
        }
        let pid = std::process::id();
        let n = NETNS_SEQ.fetch_add(1, Ordering::SeqCst);
        let name = format!("relaytest-{pid}-{n}");
        let host_if = format!("rt{pid}-{n}h");
        let ns_if = format!("rt{pid}-{n}n");
        anyhow::ensure!(host_if.len() <= 15, "interface name {host_if} too long");

        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/tmp/relaytest-netns.lock")
            .context("opening /tmp/relaytest-netns.lock")?;
        let _lock = tokio::task::spawn_blocking(move || {
            nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| anyhow!("locking /tmp/relaytest-netns.lock: {e}"))
        })
        .await??;

        remove_stale_namespaces().await;
        let used = host_ipv4_addresses().await?;
        let slot = (0u8..64)
            .find(|k| (0..4).all(|i| !used.contains(&Ipv4Addr::new(198, 51, 100, 4 * k + i))))
            .ok_or_else(|| anyhow!("no free /30 left in 198.51.100.0/24"))?;
        let host_addr = Ipv4Addr::new(198, 51, 100, 4 * slot + 1);
        let ns_addr = Ipv4Addr::new(198, 51, 100, 4 * slot + 2);

        let netns = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            host_addr,
            ns_addr,
        };
        // From here on, dropping `netns` undoes whatever was done.
        ip(&["netns", "add", &name]).await?;
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &name,
        ])
        .await?;
        ip(&["addr", "add", &format!("{host_addr}/30"), "dev", &host_if]).await?;
        ip(&["link", "set", &host_if, "up"]).await?;
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{ns_addr}/30"),
            "dev",
            &ns_if,
        ])
        .await?;
        ip(&["-n", &name, "link", "set", &ns_if, "up"]).await?;
        ip(&["-n", &name, "link", "set", "lo", "up"]).await?;
        Ok(netns)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host end's address (what the namespace reaches the host at).
    pub fn host_addr(&self) -> Ipv4Addr {
        self.host_addr
    }

    /// The namespace end's address (what the host sees its clients as).
    pub fn ns_addr(&self) -> Ipv4Addr {
        self.ns_addr
    }

    /// The host end's interface name (to break the link: `ip link set X down`).
    pub fn host_if(&self) -> &str {
        &self.host_if
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = std::process::Command::new("ip")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        quiet(&["netns", "del", &self.name]);
        quiet(&["link", "del", &self.host_if]);
    }
}

async fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

async fn host_ipv4_addresses() -> anyhow::Result<BTreeSet<Ipv4Addr>> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .await
        .context("running ip addr")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "inet")
        .filter_map(|w| w[1].split('/').next()?.parse().ok())
        .collect())
}

/// Deletes `relaytest-<pid>-<n>` namespaces whose process is gone.
async fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output().await else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix("relaytest-") else {
            continue;
        };
        let Some((pid, n)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("[harness] deleting stale network namespace {name}");
        let _ = ip(&["netns", "del", name]).await;
        let _ = ip(&["link", "del", &format!("rt{pid}-{n}h")]).await;
    }
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Whether tests needing a network namespace were asked to skip
/// (`RELAY_TEST_NO_NETNS=1`, for non-root runs).
pub fn netns_skipped() -> bool {
    std::env::var_os("RELAY_TEST_NO_NETNS").is_some_and(|v| v != "0" && !v.is_empty())
}

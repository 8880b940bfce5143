//! CPU weights for the loaded run, as systemd's `CPUWeight=` sets them:
//! each group of processes gets a cgroup of its own with a weight, under
//! the cgroup v2 root (`cpu.weight`) or cgroup v1's cpu hierarchy
//! (`cpu.shares`, 1024 for weight 100, as systemd maps it). Needs root.
//! The groups are removed again, their processes moved back to the root,
//! when [`Groups`] is dropped.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

pub struct Groups {
    /// The hierarchy's root, where every process started.
    root: PathBuf,
    v2: bool,
    made: Vec<PathBuf>,
}

impl Groups {
    /// Creates `relay-bench-NAME` for each of `names`.
    pub fn create(names: &[&str]) -> anyhow::Result<Groups> {
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let root = if v2 {
            PathBuf::from("/sys/fs/cgroup")
        } else {
            PathBuf::from("/sys/fs/cgroup/cpu")
        };
        if v2 {
            std::fs::write(root.join("cgroup.subtree_control"), "+cpu")
                .context("enabling the cpu controller (cgroup v2; needs root)")?;
        }
        let mut groups = Groups {
            root,
            v2,
            made: Vec::new(),
        };
        for name in names {
            let dir = groups.dir(name);
            std::fs::create_dir(&dir)
                .with_context(|| format!("creating {} (needs root)", dir.display()))?;
            groups.made.push(dir);
        }
        Ok(groups)
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(format!("relay-bench-{name}"))
    }

    /// `CPUWeight=weight` for group `name` (100 is everyone's default).
    pub fn set_weight(&self, name: &str, weight: u32) -> anyhow::Result<()> {
        let (file, value) = if self.v2 {
            ("cpu.weight", weight)
        } else {
            ("cpu.shares", weight * 1024 / 100)
        };
        std::fs::write(self.dir(name).join(file), value.to_string())
            .with_context(|| format!("setting the weight of {name}"))
    }

    /// Moves process `pid` (all its threads) into group `name`; its
    /// children started from now on are born there.
    pub fn add(&self, name: &str, pid: u32) -> anyhow::Result<()> {
        std::fs::write(self.dir(name).join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {name}"))
    }

    /// Moves `root` and every descendant into group `name`.
    pub fn add_tree(&self, name: &str, root: u32) -> anyhow::Result<()> {
        self.add(name, root)?;
        for pid in crate::cpu::tree_ticks(root).into_keys() {
            // A child may have exited meanwhile.
            let _ = self.add(name, pid);
        }
        Ok(())
    }

    pub fn kind(&self) -> &'static str {
        if self.v2 {
            "cgroup v2 cpu.weight"
        } else {
            "cgroup v1 cpu.shares"
        }
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        let home = self.root.join("cgroup.procs");
        for dir in self.made.iter().rev() {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                let _ = std::fs::write(&home, pid);
            }
            let _ = std::fs::remove_dir(dir);
        }
    }
}

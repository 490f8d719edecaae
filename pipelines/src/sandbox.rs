//! A TaskRun's files, and the view its steps have of them. Tekton promises tasks the container
//! paths `/tekton/results`, `/tekton/steps`, `/tekton/home`, `/tekton/scripts`, `/tekton/run`
//! and `/workspace/NAME`; some scripts name them literally. Where the system allows it (root,
//! or a user namespace, with `unshare` from util-linux), each step runs in a private mount
//! namespace in which those paths are bind mounts of the run's directories: substitution then
//! gives the container paths, and literal ones work too. Elsewhere steps see the run's real
//! directories, which `$(results.NAME.path)` and the like substitute to; only scripts that
//! name `/tekton` or `/workspace` literally fail then, and the run says so.

use crate::plan::Paths;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The run's directories (`host`), what its steps see (`view`), and the bind mounts that make
/// the one the other (empty: no private view, `view` is `host`).
#[derive(Clone, Debug, PartialEq)]
pub struct Sandbox {
    pub host: Paths,
    pub view: Paths,
    /// (host directory, path in the step's view), in mount order.
    pub mounts: Vec<(PathBuf, PathBuf)>,
}

/// A workspace of the task: where it is on this machine (`None`: an optional one left
/// unbound) and where the task wants it (`mountPath`, default `/workspace/NAME`).
#[derive(Clone, Debug, PartialEq)]
pub struct WorkspaceDir {
    pub host: Option<PathBuf>,
    pub mount_path: Option<String>,
}

impl Sandbox {
    /// The sandbox of a TaskRun whose files go under `run_dir`, its directories created.
    pub fn new(
        run_dir: &Path,
        workspaces: &BTreeMap<String, WorkspaceDir>,
        private_view: bool,
    ) -> std::io::Result<Sandbox> {
        let tekton = run_dir.join("tekton");
        let host = Paths {
            results: tekton.join("results"),
            steps: tekton.join("steps"),
            home: tekton.join("home"),
            scripts: tekton.join("scripts"),
            workspaces: workspaces
                .iter()
                .map(|(n, w)| (n.clone(), w.host.clone()))
                .collect(),
        };
        for d in [&host.results, &host.steps, &host.home, &host.scripts] {
            std::fs::create_dir_all(d)?;
        }
        std::fs::create_dir_all(tekton.join("run"))?;
        if !private_view {
            return Ok(Sandbox {
                view: host.clone(),
                host,
                mounts: Vec::new(),
            });
        }
        let root = PathBuf::from("/tekton");
        let view = Paths {
            results: root.join("results"),
            steps: root.join("steps"),
            home: root.join("home"),
            scripts: root.join("scripts"),
            workspaces: workspaces
                .iter()
                .map(|(n, w)| {
                    let at = w
                        .mount_path
                        .clone()
                        .map_or_else(|| PathBuf::from("/workspace").join(n), PathBuf::from);
                    (n.clone(), w.host.as_ref().map(|_| at))
                })
                .collect(),
        };
        let own_workspace = run_dir.join("workspace");
        std::fs::create_dir_all(&own_workspace)?;
        let mut mounts = vec![(tekton, root), (own_workspace, PathBuf::from("/workspace"))];
        for (name, w) in workspaces {
            if let (Some(h), Some(Some(v))) = (&w.host, view.workspaces.get(name)) {
                mounts.push((h.clone(), v.clone()));
            }
        }
        Ok(Sandbox { host, view, mounts })
    }

    /// The command line that runs `program args` in the private view, in `working_dir` (as is
    /// without a private view: the caller sets the directory then).
    pub fn wrap(
        &self,
        program: &str,
        args: &[String],
        working_dir: Option<&str>,
    ) -> (String, Vec<String>) {
        if self.mounts.is_empty() {
            return (program.to_string(), args.to_vec());
        }
        // In a private mount namespace: each mount point made (inside what is already
        // mounted, so nothing but /tekton and /workspace appears on the host), bound, then
        // the working directory (made if needed, as a container runtime does), then the
        // step's program in the namespace's place.
        let script = "set -e\nwd=$1; shift\nwhile [ \"$1\" != -- ]; do mkdir -p \"$2\"; mount --bind \"$1\" \"$2\"; shift 2; done\nshift\nif [ -n \"$wd\" ]; then mkdir -p \"$wd\"; cd \"$wd\"; fi\nexec \"$@\"";
        let mut line = vec![
            "--mount".to_string(),
            "--propagation".to_string(),
            "private".to_string(),
            "--".to_string(),
            "/bin/sh".to_string(),
            "-c".to_string(),
            script.to_string(),
            "ferry-step".to_string(),
            working_dir.unwrap_or("").to_string(),
        ];
        for (h, v) in &self.mounts {
            line.push(h.to_string_lossy().into_owned());
            line.push(v.to_string_lossy().into_owned());
        }
        line.push("--".to_string());
        line.push(program.to_string());
        line.extend(args.iter().cloned());
        ("unshare".to_string(), line)
    }
}

/// Whether steps can have a private view here: `unshare` makes a mount namespace and
/// `/tekton` and `/workspace` exist (made empty on the host the first time). Checked once.
pub fn private_view_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::process::Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                "-c",
                "mkdir -p /tekton /workspace && mount -t tmpfs ferry-probe /tekton",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_view_maps_container_paths_to_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let ws: BTreeMap<String, WorkspaceDir> = [
            (
                "source".to_string(),
                WorkspaceDir {
                    host: Some(dir.path().join("shared")),
                    mount_path: None,
                },
            ),
            (
                "cache".to_string(),
                WorkspaceDir {
                    host: None,
                    mount_path: None,
                },
            ),
        ]
        .into();
        let s = Sandbox::new(&dir.path().join("run"), &ws, true).unwrap();
        assert_eq!(s.view.results, PathBuf::from("/tekton/results"));
        assert_eq!(
            s.view.workspaces["source"],
            Some(PathBuf::from("/workspace/source"))
        );
        assert_eq!(s.view.workspaces["cache"], None);
        assert!(s.host.results.is_dir());
        let (program, args) = s.wrap("echo", &["hi".to_string()], Some("/workspace/source"));
        assert_eq!(program, "unshare");
        assert_eq!(&args[args.len() - 3..], ["--", "echo", "hi"]);
        // Without a private view, steps see the run's directories.
        let plain = Sandbox::new(&dir.path().join("run2"), &ws, false).unwrap();
        assert_eq!(plain.view, plain.host);
        assert_eq!(plain.wrap("echo", &[], None), ("echo".to_string(), vec![]));
    }
}

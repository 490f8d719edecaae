//! The CLI's own configuration file: where the server is and how to reach it, so `--server`,
//! `--token` and `--ca-file` need not be repeated. `$FERRY_CLI_CONFIG`, else
//! `$XDG_CONFIG_HOME/ferry/config.yaml`, else `~/.config/ferry/config.yaml`; a missing file is no
//! configuration. Flags and env vars win over it.
//!
//! ```yaml
//! server: https://ferry.example.com:8081
//! token: ferry.me.XXXX          # or token-file: /path/to/token
//! ca-file: /etc/ferry/ca.pem
//! ```

use anyhow::{bail, Context};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CliConfig {
    pub server: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

/// Where the file is looked for.
pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FERRY_CLI_CONFIG") {
        return Some(PathBuf::from(p));
    }
    // An empty or relative XDG_CONFIG_HOME is ignored, as the XDG spec says.
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(base.join("ferry").join("config.yaml"))
}

impl CliConfig {
    /// The file at `path`, if there is one; an error names the file and what is wrong.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let config: Self = serde_yaml_ng::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if config.token.is_some() && config.token_file.is_some() {
            bail!("{}: give token or token-file, not both", path.display());
        }
        Ok(config)
    }

    /// The token it gives, read from `token-file` if that is how.
    pub fn token(&self, path: &Path) -> anyhow::Result<Option<String>> {
        match (&self.token, &self.token_file) {
            (Some(t), _) => Ok(Some(t.trim().to_string())),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map(|t| Some(t.trim().to_string()))
                .with_context(|| {
                    format!(
                        "{}: token-file: cannot read {}",
                        path.display(),
                        f.display()
                    )
                }),
            (None, None) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        assert!(
            CliConfig::read(&file).unwrap().server.is_none(),
            "missing: empty"
        );
        std::fs::write(dir.path().join("tok"), "ferry.me.abc\n").unwrap();
        std::fs::write(
            &file,
            format!(
                "server: https://f:8081\ntoken-file: {}\n",
                dir.path().join("tok").display()
            ),
        )
        .unwrap();
        let c = CliConfig::read(&file).unwrap();
        assert_eq!(c.server.as_deref(), Some("https://f:8081"));
        assert_eq!(c.token(&file).unwrap().as_deref(), Some("ferry.me.abc"));
        std::fs::write(&file, "servr: x\n").unwrap();
        let err = CliConfig::read(&file).unwrap_err().to_string();
        assert!(
            err.contains("config.yaml") && err.contains("servr"),
            "{err}"
        );
    }
}

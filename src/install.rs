//! `rustloop install`: writes the kernelspec Jupyter uses to start rustloop, and pre-builds
//! the compile cache so the first notebook starts fast (for `--sys-prefix`/`--prefix`, the
//! installation's shared cache, named in the kernelspec's `env`).

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};

const KERNEL_JSON: &str = include_str!("../kernelspec/kernel.json");
const FILES: &[(&str, &[u8])] = &[
    (
        "logo-32x32.png",
        include_bytes!("../kernelspec/logo-32x32.png"),
    ),
    (
        "logo-64x64.png",
        include_bytes!("../kernelspec/logo-64x64.png"),
    ),
    ("logo-svg.svg", include_bytes!("../kernelspec/logo-svg.svg")),
];
pub const KERNEL_NAME: &str = "rustloop";

/// Where to install, mirroring `jupyter kernelspec install`.
#[derive(Debug, Clone)]
pub enum Location {
    User,
    SysPrefix,
    Prefix(PathBuf),
}

/// The `kernels/` directory for a location.
pub fn kernels_dir(location: &Location) -> Result<PathBuf> {
    Ok(match location {
        Location::User => {
            let data = if let Some(dir) = std::env::var_os("JUPYTER_DATA_DIR") {
                PathBuf::from(dir)
            } else if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
                PathBuf::from(dir).join("jupyter")
            } else {
                let home = std::env::var_os("HOME").context("HOME is not set")?;
                PathBuf::from(home).join(".local/share/jupyter")
            };
            data.join("kernels")
        }
        Location::SysPrefix | Location::Prefix(_) => prefix(location)?
            .expect("a prefix")
            .join("share/jupyter/kernels"),
    })
}

/// The installation prefix of a `--sys-prefix` or `--prefix` install (`None` for `--user`).
pub fn prefix(location: &Location) -> Result<Option<PathBuf>> {
    Ok(match location {
        Location::User => None,
        Location::SysPrefix => Some(python_prefix()?),
        Location::Prefix(prefix) => Some(prefix.clone()),
    })
}

/// `sys.prefix` of the Python that runs Jupyter (the active virtualenv, if any).
fn python_prefix() -> Result<PathBuf> {
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        return Ok(PathBuf::from(venv));
    }
    let output = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.prefix)"])
        .output()
        .context("--sys-prefix needs python3 on PATH to find sys.prefix")?;
    if !output.status.success() {
        bail!("python3 could not report sys.prefix");
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
    ))
}

/// Writes the kernelspec (with `env` added to the kernel's environment); returns its directory.
pub fn write_kernelspec(
    location: &Location,
    executable: &Path,
    env: &[(&str, &Path)],
) -> Result<PathBuf> {
    let dir = kernels_dir(location)?.join(KERNEL_NAME);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut spec: Value =
        serde_json::from_str(KERNEL_JSON).expect("kernelspec/kernel.json is JSON");
    spec["argv"][0] = Value::String(executable.to_string_lossy().into_owned());
    if !env.is_empty() {
        let vars = env
            .iter()
            .map(|(k, v)| {
                (
                    (*k).to_owned(),
                    Value::from(v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        spec["env"] = Value::Object(vars);
    }
    std::fs::write(
        dir.join("kernel.json"),
        serde_json::to_string_pretty(&spec)? + "\n",
    )
    .with_context(|| format!("writing {}", dir.join("kernel.json").display()))?;
    for (name, bytes) in FILES {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_complete_kernelspec() {
        let prefix = std::env::temp_dir().join(format!("rustloop-install-{}", std::process::id()));
        let dir = write_kernelspec(
            &Location::Prefix(prefix.clone()),
            Path::new("/opt/rl/rustloop"),
            &[("RUSTLOOP_SHARED_CACHE", Path::new("/opt/rl/cache"))],
        )
        .unwrap();
        assert_eq!(dir, prefix.join("share/jupyter/kernels/rustloop"));
        let spec: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("kernel.json")).unwrap())
                .unwrap();
        assert_eq!(
            spec["argv"],
            serde_json::json!([
                "/opt/rl/rustloop",
                "kernel",
                "--connection-file",
                "{connection_file}"
            ])
        );
        assert_eq!(spec["display_name"], "Rust (rustloop)");
        assert_eq!(spec["env"]["RUSTLOOP_SHARED_CACHE"], "/opt/rl/cache");
        assert_eq!(spec["language"], "rust");
        for (name, _) in FILES {
            assert!(dir.join(name).exists(), "{name}");
        }
        std::fs::remove_dir_all(prefix).unwrap();
    }
}

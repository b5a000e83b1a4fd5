//! schemathesis, the schema fuzzer that `crates/monza-app/tests/schema_fuzz.rs` runs against
//! the real server: installed from PyPI into a virtual environment under the target
//! directory, at the versions pinned in `xtask/fuzz/requirements.txt`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::run;

/// The pinned requirements; the environment is rebuilt whenever they change.
const REQUIREMENTS: &str = include_str!("../fuzz/requirements.txt");

/// The environment variable naming `st` for the fuzz test.
pub const ENV: &str = "MONZA_SCHEMATHESIS";

/// The path of schemathesis's `st`, installing it first if this checkout's pinned versions
/// are not installed yet.
pub fn ensure_schemathesis() -> Result<PathBuf> {
    let target = target_dir();
    std::fs::create_dir_all(&target)?;
    // One environment per set of requirements: checkouts sharing a target directory with
    // different pins never disturb each other.
    let dir = target.join(format!("schemathesis-venv-{:016x}", fnv1a(REQUIREMENTS)));
    let st = dir.join("bin").join("st");
    let done = dir.join(".installed");
    if done.is_file() {
        eprintln!("xtask: schemathesis in {}", dir.display());
        return check(&st);
    }
    // One installer at a time (another checkout's xtask may be installing the same pins).
    let _lock = Lock::take(&dir.with_extension("lock"))?;
    if done.is_file() {
        return check(&st);
    }
    eprintln!("xtask: installing schemathesis into {}", dir.display());
    let _ = std::fs::remove_dir_all(&dir);
    run(Command::new(python()?).args(["-m", "venv"]).arg(&dir))
        .context("creating the virtual environment (on Debian: apt-get install python3-venv)")?;
    let requirements = dir.join("requirements.txt");
    std::fs::write(&requirements, REQUIREMENTS)?;
    run(Command::new(dir.join("bin").join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&requirements))
    .context("installing schemathesis from PyPI")?;
    let st = check(&st)?;
    // Written last: an interrupted install is never taken as done.
    std::fs::write(&done, "")?;
    Ok(st)
}

/// A directory made atomically as a lock, removed when dropped; one left by a killed run is
/// taken over after 10 minutes.
struct Lock(PathBuf);

impl Lock {
    fn take(path: &Path) -> Result<Self> {
        let start = Instant::now();
        loop {
            match std::fs::create_dir(path) {
                Ok(()) => return Ok(Self(path.to_path_buf())),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = std::fs::metadata(path)
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(600));
                    if stale {
                        let _ = std::fs::remove_dir(path);
                    } else if start.elapsed() > Duration::from_secs(900) {
                        bail!("{} is held by another install", path.display());
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn check(st: &Path) -> Result<PathBuf> {
    let out = Command::new(st)
        .arg("--version")
        .output()
        .with_context(|| format!("running {}", st.display()))?;
    if !out.status.success() {
        bail!("{} --version failed", st.display());
    }
    eprintln!("xtask: {}", String::from_utf8_lossy(&out.stdout).trim());
    Ok(st.to_path_buf())
}

fn python() -> Result<String> {
    for candidate in ["python3", "python"] {
        if Command::new(candidate)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok(candidate.to_owned());
        }
    }
    crate::env::apt_install(&["python3", "python3-venv"])?;
    Ok("python3".to_owned())
}

/// The cargo target directory: `CARGO_TARGET_DIR`, else `target` in the workspace.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir.join("..").join("target")
}

/// FNV-1a, to name an environment after its requirements (stable across Rust versions,
/// unlike `DefaultHasher`).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

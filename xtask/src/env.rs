//! Brings up what the tests need on a Debian machine, as root: a Docker engine, a
//! PostgreSQL server on 127.0.0.1:5432, and the locally built test images. Each step first
//! checks whether the thing already answers, so on a developer machine with its own setup
//! nothing is touched.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::run;

/// The busybox test image: `FROM scratch` with Debian's static busybox in /bin.
pub const BUSYBOX_IMAGE: &str = "monza-test/busybox:latest";

/// Bumped whenever the image's Dockerfile below changes, so existing machines rebuild it.
const BUSYBOX_IMAGE_VERSION: &str = "3";

/// The Debian test image: a `debootstrap --variant=minbase bookworm` root filesystem
/// (glibc, bash, coreutils) loaded with `docker import`, with a non-root user `vscode`
/// (1000:1000) that owns `/workspace`, as the official devcontainer images have.
pub const DEBIAN_IMAGE: &str = "monza-test/debian:bookworm";

/// Bumped whenever the Debian image's recipe below changes.
const DEBIAN_IMAGE_VERSION: &str = "1";

/// The PostgreSQL URL tests use unless `TEST_DATABASE_URL` says otherwise.
pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/postgres";

pub fn ensure_all() -> Result<()> {
    ensure_docker().context("bringing up the Docker engine")?;
    ensure_postgres().context("bringing up PostgreSQL")?;
    ensure_test_images().context("building the test images")?;
    Ok(())
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn have(program: &str) -> bool {
    quiet(Command::new("sh").args(["-c", &format!("command -v {program}")]))
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("{what} did not answer within {}s", timeout.as_secs())
}

pub(crate) fn apt_install(packages: &[&str]) -> Result<()> {
    if !have("apt-get") {
        bail!(
            "{} missing and this is not a Debian machine: install it by hand",
            packages.join(", ")
        );
    }
    eprintln!("xtask: installing {} with apt-get", packages.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq"])
        .args(packages))
}

fn docker_answers() -> bool {
    quiet(Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]))
}

fn ensure_docker() -> Result<()> {
    let socket =
        std::env::var_os("DOCKER_HOST").is_some() || Path::new("/var/run/docker.sock").exists();
    if socket && have("docker") && docker_answers() {
        eprintln!("xtask: Docker engine answers");
        return Ok(());
    }
    if !have("dockerd") {
        apt_install(&["docker.io"])?;
    }
    let log = std::env::temp_dir().join("monza-dockerd.log");
    eprintln!(
        "xtask: starting dockerd in the background (log: {})",
        log.display()
    );
    let log_file = std::fs::File::create(&log)?;
    // `setsid --fork` detaches dockerd from xtask at once: a test that stops the engine
    // (the fault suite) then sees it exit, instead of a zombie this process never reaps.
    let status = Command::new("setsid")
        .args(["--fork", "dockerd"])
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .status()
        .context("could not start dockerd")?;
    if !status.success() {
        bail!("could not start dockerd: setsid exited with {status}");
    }
    wait_for("dockerd", Duration::from_secs(90), docker_answers)
        .with_context(|| format!("see {}", log.display()))
}

fn postgres_answers(url: &str) -> bool {
    quiet(Command::new("psql").args([url, "-qtAc", "select 1"]))
}

fn ensure_postgres() -> Result<()> {
    let custom = std::env::var("TEST_DATABASE_URL").ok();
    let url = custom
        .clone()
        .unwrap_or_else(|| DEFAULT_TEST_DATABASE_URL.to_owned());
    if have("psql") && postgres_answers(&url) {
        eprintln!("xtask: PostgreSQL answers");
        return Ok(());
    }
    if custom.is_some() {
        bail!("TEST_DATABASE_URL is set but the server does not answer; start it yourself");
    }
    if !have("pg_ctlcluster") {
        apt_install(&["postgresql"])?;
    }
    let version = std::fs::read_dir("/etc/postgresql")
        .context("no cluster under /etc/postgresql")?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
        .context("no cluster under /etc/postgresql")?;
    eprintln!("xtask: starting PostgreSQL {version}");
    // A cluster that is already running makes `start` fail; what matters is that it answers.
    let _ = Command::new("pg_ctlcluster")
        .args([&version, "main", "start"])
        .status();
    wait_for("PostgreSQL", Duration::from_secs(60), || {
        quiet(Command::new("pg_isready").args(["-q", "-h", "127.0.0.1", "-p", "5432"]))
    })?;
    // The tests log in with a password over TCP; give the superuser the documented one.
    run(Command::new("su").args([
        "postgres",
        "-c",
        "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"",
    ]))?;
    wait_for("PostgreSQL login", Duration::from_secs(30), || {
        postgres_answers(&url)
    })
}

fn ensure_test_images() -> Result<()> {
    ensure_busybox_image()?;
    ensure_debian_image()
}

/// The `monza.image-version` label of a local image (empty when it is missing).
fn image_version(image: &str) -> String {
    Command::new("docker")
        .args([
            "image",
            "inspect",
            "--format",
            "{{index .Config.Labels \"monza.image-version\"}}",
            image,
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Builds [`DEBIAN_IMAGE`] unless it exists at its version: about a minute, once per
/// machine (the engine keeps it between runs).
fn ensure_debian_image() -> Result<()> {
    if image_version(DEBIAN_IMAGE) == DEBIAN_IMAGE_VERSION {
        eprintln!("xtask: {DEBIAN_IMAGE} exists");
        return Ok(());
    }
    if !have("debootstrap") {
        apt_install(&["debootstrap"])?;
    }
    let root = std::env::temp_dir().join(format!("monza-debian-{}", std::process::id()));
    let built = (|| {
        run(Command::new("debootstrap").args([
            "--variant=minbase",
            "bookworm",
            &root.display().to_string(),
            "http://deb.debian.org/debian",
        ]))?;
        let append = |file: &str, line: &str| -> Result<()> {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(root.join(file))
                .with_context(|| format!("opening {file} in the Debian root"))?;
            writeln!(f, "{line}")?;
            Ok(())
        };
        append(
            "etc/passwd",
            "vscode:x:1000:1000:vscode:/home/vscode:/bin/bash",
        )?;
        append("etc/group", "vscode:x:1000:")?;
        for dir in ["home/vscode", "workspace"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path)?;
            std::os::unix::fs::chown(&path, Some(1000), Some(1000))?;
        }
        let mut tar = Command::new("tar")
            .args(["--numeric-owner", "-C"])
            .arg(&root)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .context("running tar")?;
        let imported = Command::new("docker")
            .args([
                "import",
                "--change",
                "CMD [\"/bin/bash\"]",
                "--change",
                &format!("LABEL monza.image-version={DEBIAN_IMAGE_VERSION}"),
                "-",
                DEBIAN_IMAGE,
            ])
            .stdin(tar.stdout.take().context("tar's output")?)
            .stdout(Stdio::null())
            .status()
            .context("running docker import")?;
        let archived = tar.wait().context("waiting for tar")?;
        if !archived.success() || !imported.success() {
            bail!("packing the Debian root failed: tar {archived}, docker import {imported}");
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&root);
    built
}

fn ensure_busybox_image() -> Result<()> {
    if image_version(BUSYBOX_IMAGE) == BUSYBOX_IMAGE_VERSION {
        eprintln!("xtask: {BUSYBOX_IMAGE} exists");
        return Ok(());
    }
    let busybox = Path::new("/bin/busybox");
    let is_static = || {
        Command::new("sh")
            .args(["-c", "dpkg -s busybox-static >/dev/null 2>&1"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !busybox.exists() || !is_static() {
        apt_install(&["busybox-static"])?;
    }
    let dir = std::env::temp_dir().join(format!("monza-busybox-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::copy(busybox, dir.join("bin/busybox"))?;
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM scratch\n\
         COPY bin/busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         RUN [\"/bin/mkdir\", \"-p\", \"/tmp\", \"/root\", \"/etc\", \"/home/dev\"]\n\
         RUN [\"/bin/sh\", \"-c\", \"chmod 1777 /tmp && printf 'root:x:0:0:root:/root:/bin/sh\\nnobody:x:65534:65534:nobody:/:/bin/sh\\ndev:x:1000:1000:dev:/home/dev:/bin/sh\\n' > /etc/passwd && printf 'root:x:0:\\nnogroup:x:65534:\\ndev:x:1000:\\n' > /etc/group && chown 1000:1000 /home/dev\"]\n\
         CMD [\"/bin/sh\"]\n\
         LABEL monza.image-version={BUSYBOX_IMAGE_VERSION}\n",
        ),
    )?;
    let result = run(Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "-t", BUSYBOX_IMAGE])
        .arg(&dir));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

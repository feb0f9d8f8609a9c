//! The Docker side of the multi-host test: preconditions that fail loudly,
//! bounded `docker` and `docker-compose` calls, a free subnet, and a project
//! whose every container, network and volume is removed when it drops.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::process::Command;

/// Deadline of one `docker` call (a `docker build` gets [`BUILD_TIMEOUT`]).
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);

/// Deadline of the image build.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// The label every container the test starts by itself carries (compose labels its own).
pub const LABEL: &str = "ivy-multihost";

/// Candidate /24 prefixes for the private network; the first one no Docker
/// network uses is taken.
const PREFIXES: &[&str] = &["172.29.71", "172.29.72", "172.29.73", "10.77.0", "10.77.1", "192.168.171"];

/// Runs `program args` with `envs`, at most `timeout`; its stdout, or an error
/// naming the command and its stderr.
pub async fn run(program: &str, args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> Result<String> {
    let what = format!("{program} {}", args.join(" "));
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| anyhow!("{what}: no result within {timeout:?}"))?;
    let out = out.with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("{what} failed ({}): {}", out.status, err.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `docker ARGS` within [`DOCKER_TIMEOUT`].
pub async fn docker(args: &[&str]) -> Result<String> {
    run("docker", args, &[], DOCKER_TIMEOUT).await
}

/// Fails loudly unless the docker CLI, a running daemon and docker-compose are there.
pub async fn preconditions() -> Result<()> {
    run("docker", &["--version"], &[], DOCKER_TIMEOUT)
        .await
        .map_err(|e| anyhow!("the multi-host test needs Docker: the docker CLI does not run ({e})"))?;
    run("docker", &["info", "--format", "{{.ServerVersion}}"], &[], Duration::from_secs(20)).await.map_err(|e| {
        anyhow!("the multi-host test needs a running Docker daemon, and this user must be allowed to use it: {e}")
    })?;
    run("docker-compose", &["version", "--short"], &[], DOCKER_TIMEOUT)
        .await
        .map_err(|e| anyhow!("the multi-host test needs docker-compose (apt-get install docker-compose): {e}"))?;
    Ok(())
}

/// Builds the image `tag` from the `ivy` binary `bin` with deploy/docker/build.sh.
pub async fn build_image(root: &Path, bin: &Path, tag: &str, context: &Path) -> Result<()> {
    let script = root.join("deploy/docker/build.sh");
    let (bin, context) = (bin.display().to_string(), context.display().to_string());
    let envs = [("IVY_BIN", bin.as_str()), ("IVY_IMAGE", tag), ("IVY_STRIP", "1"), ("IVY_DOCKER_CONTEXT", &context)];
    run(&script.display().to_string(), &[], &envs, BUILD_TIMEOUT).await.context("building the image")?;
    Ok(())
}

/// The first candidate /24 no Docker network uses.
pub async fn free_prefix() -> Result<String> {
    let ids = docker(&["network", "ls", "-q"]).await?;
    let mut used = String::new();
    for id in ids.lines() {
        let fmt = "{{range .IPAM.Config}}{{.Subnet}} {{end}}";
        used.push_str(&docker(&["network", "inspect", "-f", fmt, id]).await.unwrap_or_default());
        used.push(' ');
    }
    let taken = |p: &&&str| used.split_whitespace().any(|s| s == format!("{p}.0/24"));
    PREFIXES
        .iter()
        .find(|p| !taken(p))
        .map(|p| p.to_string())
        .ok_or_else(|| anyhow!("every candidate subnet ({PREFIXES:?}, .0/24) is used by a Docker network; remove one"))
}

/// A compose project of the test: its name, compose file and variables.
pub struct Project {
    /// The compose project name (unique per run).
    pub name: String,
    /// The /24 prefix of its network.
    pub prefix: String,
    /// The image its services run.
    pub image: String,
    file: PathBuf,
}

impl Project {
    /// A project on `file` with the image `image` on the network `prefix`.0/24.
    pub fn new(name: String, file: PathBuf, prefix: String, image: String) -> Self {
        Project { name, prefix, image, file }
    }

    /// `docker-compose -p NAME -f FILE ARGS` with the project's variables.
    pub async fn compose(&self, args: &[&str]) -> Result<String> {
        let file = self.file.display().to_string();
        let mut all = vec!["-p", self.name.as_str(), "-f", file.as_str()];
        all.extend_from_slice(args);
        let envs = [("IVY_IMAGE", self.image.as_str()), ("IVY_NET_PREFIX", self.prefix.as_str())];
        run("docker-compose", &all, &envs, DOCKER_TIMEOUT * 2).await
    }

    /// The container id of compose service `service`.
    pub async fn container(&self, service: &str) -> Result<String> {
        let filter_p = format!("label=com.docker.compose.project={}", self.name);
        let filter_s = format!("label=com.docker.compose.service={service}");
        let id = docker(&["ps", "-aq", "--filter", &filter_p, "--filter", &filter_s]).await?;
        (!id.is_empty()).then_some(id).ok_or_else(|| anyhow!("no container for {service} in project {}", self.name))
    }

    /// The network's name.
    pub fn network(&self) -> String {
        format!("{}_ivy", self.name)
    }

    /// Removes everything of the project, whatever state it is in; blocking, so
    /// it can run from `Drop` and from a signal handler. Returns what was left
    /// over after `down` (empty when `down` removed everything).
    pub fn remove_all(&self) -> Vec<String> {
        let sync = |args: &[&str]| {
            std::process::Command::new("docker").args(args).stdin(Stdio::null()).stderr(Stdio::null()).output()
        };
        let listed =
            |args: &[&str]| sync(args).map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default();
        let ours = format!("label={LABEL}={}", self.name);
        let clients = listed(&["ps", "-aq", "--filter", &ours]);
        let clients: Vec<&str> = clients.split_whitespace().collect();
        if !clients.is_empty() {
            let _ = sync(&[&["rm", "-f", "-v"][..], &clients].concat());
        }
        let _ = std::process::Command::new("docker-compose")
            .args([
                "-p",
                &self.name,
                "-f",
                &self.file.display().to_string(),
                "down",
                "-v",
                "--remove-orphans",
                "-t",
                "2",
            ])
            .envs([("IVY_IMAGE", self.image.as_str()), ("IVY_NET_PREFIX", self.prefix.as_str())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let project = format!("label=com.docker.compose.project={}", self.name);
        let mut left = Vec::new();
        for (kind, rm) in [("ps -aq", "rm -f -v"), ("volume ls -q", "volume rm -f"), ("network ls -q", "network rm")] {
            let mut ls: Vec<&str> = kind.split(' ').collect();
            ls.extend(["--filter", &project]);
            for id in listed(&ls).split_whitespace() {
                left.push(format!("{} {id}", kind.split(' ').next().unwrap_or(kind)));
                let mut args: Vec<&str> = rm.split(' ').collect();
                args.push(id);
                let _ = sync(&args);
            }
        }
        left
    }
}

/// Removes the project when dropped (a failed or panicking test included).
pub struct Cleanup<'a>(pub &'a Project);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let left = self.0.remove_all();
        if !left.is_empty() {
            eprintln!("multihost: removed what docker-compose down left: {left:?}");
        }
    }
}

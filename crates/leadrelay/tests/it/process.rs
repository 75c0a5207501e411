//! Running the real binary: commands to completion, and `serve` as a child process whose
//! bound address is read from its first line of output (no sleeping until it is ready).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub const ADMIN_TOKEN: &str = "crash-test-admin-token-42";

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_leadrelay")
}

pub fn database_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("leadrelay.db").display())
}

/// Runs a command against the database in `dir` and returns its output.
pub fn run(dir: &Path, args: &[&str]) -> Output {
    run_on(&database_url(dir), dir, args)
}

/// Runs a command against the database at `url`, in `dir`.
pub fn run_on(url: &str, dir: &Path, args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .env("LEADRELAY_DATABASE_URL", url)
        .env("LEADRELAY_LOG", "warn")
        .current_dir(dir)
        .output()
        .expect("run leadrelay")
}

pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

pub const CONFIG: &str = r#"
flows:
  - id: solar
    fields:
      - {name: email, type: email}
      - {name: state, type: state, required: true}
    duplicates: {keys: [email], window_days: 30}
    filters:
      - name: geo
        rules: {all: [{field: state, op: in, value: [TX, CA]}]}
    # These tests read what intake writes: with no destination, a submission's timeline ends
    # with `flow.completed` at once (with one, it would follow the delivery).
    destinations: []
sources:
  - {id: web, flow_id: solar, price: 1.5}
destinations:
  # Held, and in no flow: no test calls beyond loopback.
  - {id: crm, url: "http://127.0.0.1:9/leads", enabled: false}
"#;

/// A flow `solar` with one email field and a source `web`, delivering to one destination
/// `crm` at `{receiver}/leads` with the given extra settings (YAML flow-map entries).
pub fn one_destination_config(receiver: &str, settings: &str) -> String {
    format!(
        r#"
flows:
  - id: solar
    fields: [{{name: email, type: email}}]
    destinations: [crm]
sources:
  - {{id: web, flow_id: solar}}
destinations:
  - {{id: crm, url: "{receiver}/leads", {settings}}}
"#
    )
}

/// A `serve` child process and the address it listens on.
pub struct Server {
    pub child: Child,
    pub address: String,
}

impl Server {
    pub fn start(dir: &Path) -> Server {
        Self::start_with(dir, &[])
    }

    /// Starts `serve` with extra arguments.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Server {
        Self::start_on(&database_url(dir), dir, extra)
    }

    /// Starts `serve` on the database at `url`, in `dir`, with extra arguments.
    pub fn start_on(url: &str, dir: &Path, extra: &[&str]) -> Server {
        let mut command = Command::new(binary());
        command.args(["serve", "--listen", "127.0.0.1:0"]).args(extra);
        Self::spawn(command, url, dir)
    }

    /// Starts `serve` on the database in `dir` with `LEADRELAY_ADMIN_TOKEN` set to `token`.
    pub fn start_with_admin_token(dir: &Path, token: &str) -> Server {
        let mut command = Command::new(binary());
        command.args(["serve", "--listen", "127.0.0.1:0"]).env("LEADRELAY_ADMIN_TOKEN", token);
        Self::spawn(command, &database_url(dir), dir)
    }

    /// Starts `serve` on the database in `dir` unable to grow any file past `bytes`, as on a
    /// full disk: writes past it fail (`EFBIG`; the signal that would kill the process is
    /// ignored) until `lift_file_size_limit`.
    pub fn start_with_file_size_limit(dir: &Path, bytes: u64) -> Server {
        let mut command = Command::new("sh");
        command.args([
            "-c",
            &format!("trap '' XFSZ; exec prlimit --fsize={bytes}:unlimited \"$0\" serve --listen 127.0.0.1:0"),
            binary(),
        ]);
        Self::spawn(command, &database_url(dir), dir)
    }

    /// Gives the server room again: its files may grow without limit.
    pub fn lift_file_size_limit(&self) {
        let pid = self.child.id().to_string();
        let lifted = Command::new("prlimit").args(["--pid", &pid, "--fsize=unlimited:unlimited"]).status();
        assert!(lifted.expect("run prlimit").success(), "prlimit --pid {pid}");
    }

    fn spawn(mut command: Command, url: &str, dir: &Path) -> Server {
        if !command.get_envs().any(|(name, _)| name == "LEADRELAY_ADMIN_TOKEN") {
            command.env("LEADRELAY_ADMIN_TOKEN", ADMIN_TOKEN);
        }
        let mut child = command
            .env("LEADRELAY_DATABASE_URL", url)
            .env("LEADRELAY_LOG", "warn")
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the listening line");
        let address = line
            .trim()
            .strip_prefix("leadrelay listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Server { child, address }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// An admin GET, answered with JSON.
    pub async fn get_json(&self, client: &reqwest::Client, path: &str) -> serde_json::Value {
        client.get(self.url(path)).bearer_auth(ADMIN_TOKEN).send().await.unwrap().json().await.unwrap()
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
        assert!(sent.success());
        self.child.wait().expect("wait")
    }

    /// Kills the process with SIGKILL and waits for it to be gone.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

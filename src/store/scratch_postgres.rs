//! A throwaway PostgreSQL cluster for tests and benchmarks: `initdb` into a temporary
//! directory, the server on a free local port with trust authentication for local connections
//! only, stopped and removed on drop, and by a watchdog process when this process dies without
//! dropping it (a `static` cluster, a SIGKILL).
//!
//! The server binaries come from `$EWTUNE_PG_BIN`, else `pg_config --bindir`, else the newest
//! `/usr/lib/postgresql/*/bin` (Debian's layout; `scripts/test.sh` installs the package when
//! missing). PostgreSQL refuses to run as root, so as root the server runs as the `postgres`
//! user that Debian's package creates.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running throwaway cluster.
#[derive(Debug)]
pub struct ScratchPostgres {
    dir: Option<tempfile::TempDir>,
    bin: PathBuf,
    port: u16,
    watchdog: Option<Child>,
}

impl ScratchPostgres {
    /// Starts a cluster. `durable = false` turns fsync off (tests: the machine never loses
    /// power mid-test); benchmarks pass `true` to measure what a deployment pays.
    pub fn start(durable: bool) -> io::Result<ScratchPostgres> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new().prefix("ewtune-pg-").tempdir()?;
        let data = dir.path().join("data");
        if as_root() {
            run(Command::new("chown").arg("postgres:").arg(dir.path()), "chown")?;
        }
        run(
            server_command(&bin, "initdb").args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync", "-D"]).arg(&data),
            "initdb",
        )?;
        let port = free_port()?;
        let mut options = format!("-p {port} -c listen_addresses=127.0.0.1 -k {} -c max_connections=200", dir.path().display());
        if !durable {
            options.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        run(
            server_command(&bin, "pg_ctl").arg("-D").arg(&data).args(["-w", "-t", "60", "-o", &options, "-l"]).arg(dir.path().join("server.log")).arg("start"),
            "pg_ctl start",
        )?;
        let watchdog = spawn_watchdog(&bin, dir.path()).ok();
        Ok(ScratchPostgres { dir: Some(dir), bin, port, watchdog })
    }

    /// The URL of database `name` on this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a new empty database with a random name and returns its URL.
    pub fn fresh_database(&self) -> io::Result<String> {
        let name = format!("ewtune_{}", crate::digest::hex(&rand::random::<[u8; 8]>()));
        let url = self.url("postgres");
        let created = crate::store::db::outside_runtime(|| -> Result<(), postgres::Error> {
            let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
            client.batch_execute(&format!("CREATE DATABASE {name}"))
        });
        created.map_err(|e| io::Error::other(format!("CREATE DATABASE {name}: {e}")))?;
        Ok(self.url(&name))
    }
}

impl Drop for ScratchPostgres {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = server_command(&self.bin, "pg_ctl").arg("-D").arg(dir.path().join("data")).args(["-m", "immediate", "stop"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
            drop(dir);
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

fn as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `tool` from the server's binaries, as the `postgres` user when this process is root.
fn server_command(bin: &Path, tool: &str) -> Command {
    if as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
}

fn run(cmd: &mut Command, what: &str) -> io::Result<()> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| io::Error::other(format!("{what}: {e} (is PostgreSQL's server package installed? scripts/test.sh installs it)")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!("{what} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))));
    }
    Ok(())
}

/// Where `initdb`, `pg_ctl` and `postgres` are.
fn bin_dir() -> io::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("EWTUNE_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| io::Error::other("no PostgreSQL server binaries (initdb): install Debian's postgresql package (scripts/test.sh does) or set EWTUNE_PG_BIN"))
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A shell that stops the cluster and removes its directory once this process is gone.
fn spawn_watchdog(bin: &Path, dir: &Path) -> io::Result<Child> {
    let pg_ctl = bin.join("pg_ctl");
    let stop = if as_root() { format!("runuser -u postgres -- {} -D {}/data -m immediate stop", pg_ctl.display(), dir.display()) } else { format!("{} -D {}/data -m immediate stop", pg_ctl.display(), dir.display()) };
    let script = format!("while kill -0 {} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {}", std::process::id(), dir.display());
    Command::new("sh").arg("-c").arg(script).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()
}

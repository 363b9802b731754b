//! pebble, Let's Encrypt's test ACME server (Debian's `pebble`), with `pebble-challtestsrv` as
//! its DNS so every name resolves to 127.0.0.1, validating HTTP-01 for real at a given port;
//! and the `https.acme` section pointing at it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, require_program, KillOnDrop, Originpull, TestCert};

/// pebble and its DNS, stopped when dropped.
pub struct Pebble {
    dir: tempfile::TempDir,
    port: u16,
    management: u16,
    /// Trust for pebble's own listener (made here: Debian ships no test certificates).
    pub listener_ca: PathBuf,
    _dns: KillOnDrop,
    _pebble: KillOnDrop,
}

impl Pebble {
    /// pebble validating HTTP-01 at `http_port` on 127.0.0.1, issuing certificates valid for
    /// `validity_secs`. `None` where pebble is missing and the run is not CI's.
    pub fn start(http_port: u16, validity_secs: u64) -> Option<Pebble> {
        let pebble = require_program("pebble", None)?;
        let challtestsrv = require_program("pebble-challtestsrv", None)?;
        let dir = tempfile::Builder::new()
            .prefix("originpull-pebble-")
            .tempdir()
            .unwrap();
        let cert = TestCert::new();
        let listener_ca = cert.write_ca(dir.path(), "pebble-listener-ca.pem");
        std::fs::write(dir.path().join("cert.pem"), &cert.cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &cert.key_pem).unwrap();
        let (port, management, dns, dns_management) =
            (free_port(), free_port(), free_port(), free_port());
        let dns_process = Command::new(challtestsrv)
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble-challtestsrv");
        let dns_process = KillOnDrop(dns_process);
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity_secs,
        }});
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.path().join("pebble.log")).unwrap();
        let pebble_process = Command::new(pebble)
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start pebble");
        let pebble_process = KillOnDrop(pebble_process);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "pebble did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Pebble {
            dir,
            port,
            management,
            listener_ca,
            _dns: dns_process,
            _pebble: pebble_process,
        })
    }

    pub fn directory_url(&self) -> String {
        format!("https://localhost:{}/dir", self.port)
    }

    /// pebble's root for the certificates it issues (made when it started), written to a file.
    pub fn issuing_root(&self) -> PathBuf {
        let path = self.dir.path().join("issuing-root.pem");
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "10", "--cacert"])
            .arg(&self.listener_ca)
            .arg(format!("https://localhost:{}/roots/0", self.management))
            .arg("-o")
            .arg(&path)
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        path
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }
}

/// The `acme:` lines (for [`super::tls::https_yaml`]) for `pebble`, keeping state in
/// `state_dir` (none: in the S3 store).
pub fn acme_yaml(pebble: &Pebble, state_dir: Option<&Path>) -> String {
    let state = state_dir.map_or(String::new(), |dir| {
        format!("  state_dir: {}\n", dir.display())
    });
    format!(
        "acme:\n  directory_url: {}\n  contact: mailto:ops@example.com\n{state}  ca_file: {}\n  renew_before_days: 30\n",
        pebble.directory_url(),
        pebble.listener_ca.display()
    )
}

/// `originpull_acme_orders_total{outcome}` of `server`.
pub async fn acme_orders(server: &Originpull, outcome: &str) -> f64 {
    server
        .metric("originpull_acme_orders_total", &[("outcome", outcome)])
        .await
}

//! Issue #11: the `originpull prefetch` command against a running server's admin API: a list of
//! keys (file or standard input) copied once, a second run copying nothing, bad keys listed
//! with exit 1, and `--rate` capping the copies started per second. Issue #19: keys with a
//! leading slash, and the progress bar on a terminal (through script(1)).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

const BUCKET: &str = "example-1250000000";
const TOKEN: &str = "prefetch-test-token";

struct Setup {
    server: Originpull,
    admin: String,
    token_path: PathBuf,
    dir: tempfile::TempDir,
}

fn start(origin: &TestOrigin) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("admin.token");
    std::fs::write(&token_path, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let admin_addr = format!("127.0.0.1:{}", free_port());
    let server = Originpull::start(
        OriginpullConfig::new()
            .with_bucket(BUCKET, &origin.authority())
            .with_extra_yaml(&format!(
                "admin_listen: {admin_addr}\nadmin_token_file: {}\nfill:\n  negative_ttl_secs: 0\n",
                token_path.display()
            )),
    );
    wait_listening(&admin_addr);
    Setup {
        server,
        admin: format!("http://{admin_addr}"),
        token_path,
        dir,
    }
}

fn wait_listening(addr: &str) {
    let addr = addr.parse().unwrap();
    for _ in 0..200 {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("admin listener {addr} never came up");
}

/// Runs `originpull prefetch` with `keys` given through a file (or stdin with `-`); returns
/// the exit code and stderr.
fn prefetch(setup: &Setup, keys: &str, extra: &[&str], use_stdin: bool) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_originpull"));
    command
        .arg("prefetch")
        .arg("--admin")
        .arg(&setup.admin)
        .arg("--token-file")
        .arg(&setup.token_path)
        .arg("--bucket")
        .arg(BUCKET)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if use_stdin {
        command.arg("-").stdin(Stdio::piped());
    } else {
        let path = keys_file(setup.dir.path(), keys);
        command.arg(path).stdin(Stdio::null());
    }
    let mut child = command.spawn().expect("spawn originpull prefetch");
    if use_stdin {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(keys.as_bytes()).unwrap();
    }
    let output = child.wait_with_output().expect("wait for prefetch");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn keys_file(dir: &Path, keys: &str) -> PathBuf {
    let path = dir.join(format!("keys-{}.txt", rand_suffix()));
    std::fs::write(&path, keys).unwrap();
    path
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

async fn head_status(server: &Originpull, path: &str) -> u16 {
    server
        .request(reqwest::Method::HEAD, BUCKET, path)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn fifty_keys_are_each_fetched_once_and_a_second_run_fetches_nothing() {
    let origin = TestOrigin::start();
    let keys: Vec<String> = (0..50).map(|i| format!("site/page-{i}.html")).collect();
    for key in &keys {
        origin.route(&format!("/{key}"), Behavior::ok(key.as_bytes().to_vec()));
    }
    let setup = start(&origin);
    let list = keys.join("\n") + "\n";

    let (code, stderr) = prefetch(&setup, &list, &[], true);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("50 copied"), "{stderr}");
    for key in &keys {
        assert_eq!(origin.hits(&format!("/{key}")), 1, "{key}");
        assert_eq!(head_status(&setup.server, &format!("/{key}")).await, 200);
    }

    let (code, stderr) = prefetch(&setup, &list, &[], false);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("0 copied"), "{stderr}");
    assert!(stderr.contains("50 already present"), "{stderr}");
    assert_eq!(origin.total_hits(), 50, "no new fetches");
}

#[tokio::test]
async fn bad_keys_make_it_exit_1_and_are_listed_with_their_reasons() {
    let origin = TestOrigin::start();
    origin.route("/good.txt", Behavior::ok("good"));
    origin.route("/forbidden.txt", Behavior::status(403));
    let setup = start(&origin);
    let list = "good.txt\nmissing.txt\nforbidden.txt\na/../b.txt\n";

    let (code, stderr) = prefetch(&setup, list, &[], false);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("failed: missing.txt: origin answered 404"),
        "{stderr}"
    );
    assert!(
        stderr.contains("failed: forbidden.txt: origin answered 403"),
        "{stderr}"
    );
    assert!(
        stderr.contains("failed: a/../b.txt: invalid key"),
        "{stderr}"
    );
    assert!(!stderr.contains("failed: good.txt"), "{stderr}");
    assert_eq!(head_status(&setup.server, "/good.txt").await, 200);

    // A wrong token is refused before anything is done.
    std::fs::write(&setup.token_path, "not-the-token\n").unwrap();
    let (code, stderr) = prefetch(&setup, "other.txt\n", &[], false);
    assert_eq!(code, 1);
    assert!(stderr.contains("401"), "{stderr}");
    assert_eq!(origin.hits("/other.txt"), 0);
}

#[tokio::test]
async fn rate_caps_the_copies_started_per_second() {
    let origin = TestOrigin::start();
    let keys: Vec<String> = (0..9).map(|i| format!("r/{i}")).collect();
    for key in &keys {
        origin.route(&format!("/{key}"), Behavior::ok("r"));
    }
    let setup = start(&origin);
    let (code, stderr) = prefetch(&setup, &keys.join("\n"), &["--rate", "4"], false);
    assert_eq!(code, 0, "{stderr}");
    let mut arrivals: Vec<_> = origin
        .all_requests()
        .iter()
        .map(|r| r.received_at)
        .collect();
    arrivals.sort();
    assert_eq!(arrivals.len(), 9);
    // Nine starts at four per second span at least two seconds (eight intervals of 250 ms);
    // without the cap they would all start at once. A little slack for timer granularity.
    let span = arrivals[8] - arrivals[0];
    assert!(
        span >= Duration::from_millis(1900),
        "9 copies within {span:?}"
    );
    for pair in arrivals.windows(5) {
        assert!(
            pair[4] - pair[0] >= Duration::from_millis(900),
            "5 copies started within {:?}",
            pair[4] - pair[0]
        );
    }
}

/// Issue #19: a line with a leading slash is the path it looks like (`/py/x.html` is the key
/// `py/x.html`), not a key starting with `/` fetched as `//py/x.html`.
#[tokio::test]
async fn a_line_with_a_leading_slash_is_the_path_it_is() {
    let origin = TestOrigin::start();
    origin.route("/py/x.html", Behavior::ok("x"));
    origin.route("/py/a%20b.html", Behavior::ok("a b"));
    let setup = start(&origin);
    let (code, stderr) = prefetch(&setup, "/py/x.html\n/py/a b.html\n", &[], false);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("2 copied"), "{stderr}");
    assert_eq!(origin.hits("/py/x.html"), 1);
    assert_eq!(origin.hits("/py/a%20b.html"), 1);
    assert_eq!(head_status(&setup.server, "/py/x.html").await, 200);
    assert_eq!(head_status(&setup.server, "/py/a%20b.html").await, 200);
}

/// Runs `originpull prefetch` on a terminal (a pseudo-terminal made by script(1), so stderr is
/// one and the progress bar is drawn); returns the exit code and everything drawn.
fn prefetch_on_a_terminal(setup: &Setup, keys: &str, extra: &[&str]) -> (i32, String) {
    let quote = |arg: &str| format!("'{}'", arg.replace('\'', r"'\''"));
    let mut command = vec![
        quote(env!("CARGO_BIN_EXE_originpull")),
        "prefetch".to_string(),
        "--admin".to_string(),
        quote(&setup.admin),
        "--token-file".to_string(),
        quote(&setup.token_path.to_string_lossy()),
        "--bucket".to_string(),
        BUCKET.to_string(),
    ];
    command.extend(extra.iter().map(|arg| quote(arg)));
    command.push(quote(&keys_file(setup.dir.path(), keys).to_string_lossy()));
    let output = Command::new("script")
        .args(["-q", "-e", "-f", "-c", &command.join(" "), "/dev/null"])
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .expect("run script(1) (util-linux; installed by .ci/setup)");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// The frames a terminal showed: each redraw of the bar, escape sequences removed.
fn frames(drawn: &str) -> Vec<String> {
    let mut plain = String::with_capacity(drawn.len());
    let mut chars = drawn.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, ending with a letter.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
        .split(['\r', '\n'])
        .filter(|line| line.contains(" objects"))
        .map(|line| line.trim().to_string())
        .collect()
}

/// Issue #19: every frame of the bar says as many bytes as the objects it counts hold (it once
/// drew "27/500 objects 0 B copied", the bytes one poll behind), and the rate is rounded
/// (it was "89.3963/s").
#[tokio::test]
async fn the_progress_bar_counts_objects_and_their_bytes_together_and_rounds_the_rate() {
    const SIZE: u64 = 1024;
    let origin = TestOrigin::start();
    let keys: Vec<String> = (0..40).map(|i| format!("bar/{i}.bin")).collect();
    for key in &keys {
        origin.route(&format!("/{key}"), Behavior::generated(SIZE));
    }
    let setup = start(&origin);
    let (code, drawn) = prefetch_on_a_terminal(&setup, &keys.join("\n"), &["--rate", "20"]);
    assert_eq!(code, 0, "{drawn}");
    let frames = frames(&drawn);
    let mut midway = 0;
    for frame in &frames {
        let words: Vec<&str> = frame.split_whitespace().collect();
        let objects = words
            .iter()
            .position(|w| *w == "objects")
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| words[i].split_once('/'))
            .and_then(|(done, total)| Some((done.parse::<u64>().ok()?, total.parse::<u64>().ok()?)))
            .unwrap_or_else(|| panic!("no object count in {frame:?}"));
        let (done, total) = objects;
        assert_eq!(total, 40, "{frame:?}");
        if 0 < done && done < total {
            midway += 1;
        }
        // The one byte figure of the frame: a number followed by a unit.
        let bytes = words
            .windows(2)
            .find_map(|pair| {
                let number = pair[0].trim_start_matches('(');
                let unit = pair[1].trim_end_matches([')', ',']);
                (number.parse::<f64>().is_ok() && matches!(unit, "B" | "KiB" | "MiB"))
                    .then(|| format!("{number} {unit}"))
            })
            .unwrap_or_else(|| panic!("no bytes in {frame:?}"));
        assert_eq!(
            bytes,
            indicatif::HumanBytes(done * SIZE).to_string(),
            "{done} objects of {SIZE} bytes each, in {frame:?}"
        );
        for rate in words.iter().filter_map(|w| w.strip_suffix("/s")) {
            let decimals = rate.split_once('.').map_or(0, |(_, d)| d.len());
            assert!(decimals <= 1, "rate {rate}/s in {frame:?}");
        }
    }
    assert!(
        midway >= 2,
        "the bar was drawn only {midway} times while copying: {frames:#?}"
    );
}

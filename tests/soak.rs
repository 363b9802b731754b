//! Issue #13: the 30-second version of `benches/soak.sh` (mixed load against an nginx origin
//! that flaps, a reload every 10 s; every answer checked, every stored object compared with
//! the origin's bytes). The script exits non-zero when a request failed or an object was stored
//! damaged; its full table is printed either way.

// A test (or benchmark) that unwraps fails loudly, which is what it should do.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn thirty_seconds_of_mixed_load_against_a_flapping_origin_fail_nothing() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/soak.sh");
    let output = Command::new("bash")
        .arg(script)
        .env("DURATION", "30")
        .env("ORIGINPULL_BIN", env!("CARGO_BIN_EXE_originpull"))
        .output()
        .expect("run benches/soak.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the soak failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("| failed requests | 0 | 0 |"), "{stdout}");
    assert!(stdout.contains("| objects damaged | 0 | 0 |"), "{stdout}");
}

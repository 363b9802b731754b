//! The disk store's eviction order at scale (issue #24): memory per tracked object, the time to
//! save it and to load it at start, and what a hit of a cache bucket costs in it, alone and with
//! another thread (the second worker) hitting too, and while a save holds it.
//!
//! `cargo bench --bench eviction_order` (`OBJECTS=` to change the 1,000,000; `DATA_DIR=` to keep
//! the saved order there, as a `data_dir` to start the server on). Plain timings, not criterion:
//! each figure is one pass over a million entries.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use originpull_config::CapacityLimits;
use originpull_store::capacity::Capacity;
use originpull_store::key::{FileHash, ObjectKey};

// The server's allocator, so memory per entry is what the server would spend.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BUCKET: &str = "img-1250000000";

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn per(elapsed: Duration, n: usize) -> String {
    format!("{:.0} ns", elapsed.as_nanos() as f64 / n as f64)
}

fn main() {
    let objects: usize = std::env::var("OBJECTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let hashes: Vec<FileHash> = (0..objects)
        .map(|i| FileHash::of(&ObjectKey::from_stored(&format!("static/{i}.jpg")).unwrap()))
        .collect();
    let temp = tempfile::tempdir().unwrap();
    let dir = std::env::var_os("DATA_DIR").map_or(temp.path().to_path_buf(), Into::into);
    let (capacity, _) = Capacity::open(&dir).unwrap();
    capacity.set_policy(CapacityLimits::default(), [BUCKET]);

    let before = rss_bytes();
    let started = Instant::now();
    for (i, hash) in hashes.iter().enumerate() {
        capacity.committed(BUCKET, hash, || 1024 + (i as u64 % 64) * 1024);
    }
    let admit = started.elapsed();
    let memory = rss_bytes().saturating_sub(before);
    println!("| objects | {objects} |");
    println!(
        "| memory per tracked object (RSS growth) | {} bytes |",
        memory / objects as u64
    );
    println!("| admit (commit) | {} |", per(admit, objects));

    // A hit records itself; eviction applies the records every 20 ms (here: every 50,000).
    let (mut recording, mut applying) = (Duration::ZERO, Duration::ZERO);
    for chunk in hashes.chunks(50_000) {
        let started = Instant::now();
        for hash in chunk {
            capacity.served(BUCKET, hash, 0);
        }
        recording += started.elapsed();
        let started = Instant::now();
        capacity.apply_uses();
        applying += started.elapsed();
    }
    println!(
        "| hit of a cache bucket: recorded by the request | {} |",
        per(recording, objects)
    );
    println!(
        "| hit of a cache bucket: applied to the order (background) | {} |",
        per(applying, objects)
    );
    // Two threads (the two workers) recording at once, 30,000 hits each between applies.
    let mut recording = Duration::ZERO;
    for pair in hashes.chunks(60_000) {
        let started = Instant::now();
        std::thread::scope(|scope| {
            for half in pair.chunks(30_000) {
                let capacity = &capacity;
                scope.spawn(move || {
                    for hash in half {
                        capacity.served(BUCKET, hash, 0);
                    }
                });
            }
        });
        recording += started.elapsed();
        capacity.apply_uses();
    }
    println!(
        "| hit of a cache bucket: recorded, two threads at once | {} per hit (wall) |",
        per(recording, objects)
    );
    let started = Instant::now();
    for hash in &hashes {
        capacity.served("keep-1250000000", hash, 0);
    }
    println!(
        "| hit of a keep bucket | {} |",
        per(started.elapsed(), objects)
    );

    // The longest a hit waits while a save copies the order.
    let capacity = Arc::new(capacity);
    let saving = Arc::new(AtomicBool::new(true));
    let longest = Arc::new(AtomicU64::new(0));
    let hitter = {
        let (capacity, saving, longest) = (capacity.clone(), saving.clone(), longest.clone());
        let hashes = hashes.clone();
        std::thread::spawn(move || {
            let mut i = 0;
            while saving.load(Ordering::Relaxed) {
                let started = Instant::now();
                capacity.served(BUCKET, &hashes[i % hashes.len()], 0);
                longest.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    capacity.save(true).unwrap();
    let save = started.elapsed();
    saving.store(false, Ordering::Relaxed);
    hitter.join().unwrap();
    let saved_bytes = std::fs::metadata(dir.join(".eviction").join("order"))
        .unwrap()
        .len();
    println!(
        "| save (serialize, write, fsync) | {:.0} ms, {saved_bytes} bytes |",
        save.as_secs_f64() * 1000.0
    );
    println!(
        "| longest hit during the save | {:.1} ms |",
        longest.load(Ordering::Relaxed) as f64 / 1000.0
    );
    drop(capacity);

    let started = Instant::now();
    let (loaded, start) = Capacity::open(&dir).unwrap();
    let open = started.elapsed();
    loaded.load_saved(start);
    println!(
        "| open at start (serving waits for this) | {:.1} ms |",
        open.as_secs_f64() * 1000.0
    );
    println!(
        "| load of the saved order (in the background) | {:.0} ms ({} entries) |",
        started.elapsed().as_secs_f64() * 1000.0,
        loaded.entries()
    );
    loaded.set_policy(CapacityLimits::default(), [BUCKET]);
    let victims = objects / 10;
    let started = Instant::now();
    for _ in 0..victims {
        loaded.take_victim().unwrap();
    }
    println!("| take a victim | {} |", per(started.elapsed(), victims));
    // Left for a server to start on: saved again, clean.
    loaded.save(true).unwrap();
}

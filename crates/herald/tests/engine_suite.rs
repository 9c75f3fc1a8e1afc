//! The engine conformance suite, run against the engines of this crate:
//! the checks every engine must pass live in the library
//! (`herald::engine::testkit`, feature `testkit`) and run here against
//! `memory` and `local` (both durabilities) through
//! [`herald::engine_conformance!`]; then tests only the durable `local`
//! engine can pass: retention, damaged files, crashes, a full disk.
//!
//! A new engine of this crate joins by adding a factory and one
//! `engine_conformance!` line; an engine in another crate does the same in
//! its own tests.

use std::sync::Arc;

use herald::engine::memory::MemoryEngine;
use herald::engine::testkit::EngineFactory;
use herald::engine::Engine;
#[cfg(feature = "local")]
use herald::engine::{
    local::{Durability, LocalConfig, LocalEngine},
    testkit::DurableEngineFactory,
};
#[cfg(feature = "local")]
use tempfile::TempDir;

/// A memory engine large enough never to evict during a check.
struct Memory;

impl EngineFactory for Memory {
    async fn fresh(&mut self) -> Arc<dyn Engine> {
        Arc::new(MemoryEngine::new(1_000_000))
    }
}

/// A local engine in a temporary directory that lives as long as the
/// factory (the whole check), reopened from the same directory.
#[cfg(feature = "local")]
struct Local {
    config: LocalConfig,
    _dir: TempDir,
}

#[cfg(feature = "local")]
impl Local {
    fn new(durability: Durability) -> Self {
        let dir = TempDir::new().unwrap();
        let config = LocalConfig {
            durability,
            ..LocalConfig::new(dir.path().join("store"))
        };
        Self { config, _dir: dir }
    }
}

#[cfg(feature = "local")]
impl EngineFactory for Local {
    async fn fresh(&mut self) -> Arc<dyn Engine> {
        Arc::new(LocalEngine::open(self.config.clone()).unwrap())
    }
}

#[cfg(feature = "local")]
impl DurableEngineFactory for Local {
    async fn reopen(&mut self) -> Arc<dyn Engine> {
        Arc::new(LocalEngine::open(self.config.clone()).unwrap())
    }
}

herald::engine_conformance!(memory, Memory);
#[cfg(feature = "local")]
herald::engine_conformance!(local, Local::new(Durability::Sync), durable);
#[cfg(feature = "local")]
herald::engine_conformance!(local_async, Local::new(Durability::Async), durable);

/// Tests only the durable `local` engine can pass.
#[cfg(feature = "local")]
mod local_only {
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use herald::engine::local::{Retention, STORE_FILE};
    use herald::engine::testkit::{self, eventually, read_all, update, updates};
    use herald::engine::{Bounds, EngineError, Position, Sink, Stored};
    use herald_protocol::Update;

    use super::*;

    fn config(dir: &Path) -> LocalConfig {
        LocalConfig::new(dir.join("store"))
    }

    fn open(config: &LocalConfig) -> LocalEngine {
        LocalEngine::open(config.clone()).unwrap()
    }

    fn open_err(config: &LocalConfig) -> String {
        match LocalEngine::open(config.clone()) {
            Ok(_) => panic!("open of {} should fail", config.path.display()),
            Err(EngineError::Unavailable(reason)) => reason,
            Err(other) => panic!("expected Unavailable, got {other:?}"),
        }
    }

    /// Dropping the engine without `close` still flushes: the testkit's
    /// restart check, on the drop path (not part of the contract).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restart_after_drop_without_close() {
        testkit::restart_after_drop_keeps_history(Local::new(Durability::Async)).await;
    }

    /// A sink that panics on its first delivery.
    #[derive(Debug, Default)]
    struct PanickySink(std::sync::atomic::AtomicBool);

    impl Sink for PanickySink {
        fn deliver(&self, _: &[Arc<Stored>]) {
            if !self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
                panic!("sink bug (expected by the test)");
            }
        }

        fn gap(&self, _: &str) {}
    }

    /// A bug in the sink must not stop the writer: later appends work.
    #[tokio::test]
    async fn a_panicking_sink_does_not_stop_the_engine() {
        let dir = TempDir::new().unwrap();
        let engine = open(&config(dir.path()));
        engine.start(Arc::new(PanickySink::default()));
        engine.append(updates(&["a"])).await.unwrap();
        let b = engine.append(updates(&["b"])).await.unwrap();
        assert_eq!(b[0].position, 2);
        engine.close().await.unwrap();
    }

    async fn retained(engine: &LocalEngine) -> (Bounds, Vec<Position>) {
        let bounds = engine.bounds().await.unwrap();
        let history = read_all(engine, 1000).await;
        (bounds, history.iter().map(|s| s.position).collect())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_by_count() {
        let dir = TempDir::new().unwrap();
        let config = LocalConfig {
            retention: Retention {
                max_updates: Some(10),
                ..Retention::default()
            },
            ..config(dir.path())
        };
        let engine = open(&config);
        for i in 1..=25 {
            engine.append(vec![update(&format!("u{i}"))]).await.unwrap();
        }
        let moved = eventually(Duration::from_secs(10), || async {
            engine.bounds().await.unwrap().first == Some(16)
        })
        .await;
        assert!(moved, "bounds: {:?}", engine.bounds().await.unwrap());
        let (bounds, positions) = retained(&engine).await;
        assert_eq!(bounds.last, 25);
        assert_eq!(positions, (16..=25).collect::<Vec<_>>());
        assert_eq!(engine.resolve("u1").await.unwrap(), None);
        assert_eq!(engine.resolve("u15").await.unwrap(), None);
        assert_eq!(engine.resolve("u16").await.unwrap(), Some(16));
        // A removed id may be used again, and positions keep going.
        let again = engine.append(updates(&["u1"])).await.unwrap();
        assert_eq!(again[0].position, 26);
        engine.close().await.unwrap();
        drop(engine);
        // The clean-up is durable.
        let engine = open(&config);
        let (bounds, _) = retained(&engine).await;
        assert_eq!(bounds.last, 26);
        assert!(bounds.first.unwrap() >= 16);
        assert!(
            eventually(Duration::from_secs(10), || async {
                engine.bounds().await.unwrap().first == Some(17)
            })
            .await
        );
        assert_eq!(engine.resolve("u1").await.unwrap(), Some(26));
    }

    /// Age limit; also shows that positions continue after a restart even
    /// when retention removed every update.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_by_age() {
        let dir = TempDir::new().unwrap();
        let config = LocalConfig {
            retention: Retention {
                max_age: Some(Duration::from_millis(1500)),
                ..Retention::default()
            },
            ..config(dir.path())
        };
        let engine = open(&config);
        for i in 1..=5 {
            engine
                .append(vec![update(&format!("old{i}"))])
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        for i in 1..=5 {
            engine
                .append(vec![update(&format!("new{i}"))])
                .await
                .unwrap();
        }
        // The old ones go first, while the new ones are still young.
        let moved = eventually(Duration::from_secs(10), || async {
            engine.bounds().await.unwrap().first != Some(1)
        })
        .await;
        assert!(moved);
        let first = engine.bounds().await.unwrap().first;
        assert!(first.is_none() || first >= Some(6), "{first:?}");
        for i in 1..=5 {
            assert_eq!(engine.resolve(&format!("old{i}")).await.unwrap(), None);
        }
        // Then everything expires.
        let emptied = eventually(Duration::from_secs(10), || async {
            engine.bounds().await.unwrap().first.is_none()
        })
        .await;
        assert!(emptied);
        assert_eq!(
            engine.bounds().await.unwrap(),
            Bounds {
                first: None,
                last: 10
            }
        );
        assert!(engine.read_after(0, 100).await.unwrap().is_empty());
        assert_eq!(engine.resolve("new5").await.unwrap(), None);
        engine.close().await.unwrap();
        drop(engine);
        let engine = open(&config);
        assert_eq!(
            engine.bounds().await.unwrap(),
            Bounds {
                first: None,
                last: 10
            }
        );
        let next = engine.append(updates(&["after-restart"])).await.unwrap();
        assert_eq!(next[0].position, 11);
        assert_eq!(engine.bounds().await.unwrap().first, Some(11));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_by_bytes() {
        let dir = TempDir::new().unwrap();
        let config = LocalConfig {
            retention: Retention {
                max_bytes: Some(20_000),
                ..Retention::default()
            },
            ..config(dir.path())
        };
        let engine = open(&config);
        for i in 1..=100 {
            let u = Update {
                data: "d".repeat(1000),
                ..update(&format!("b{i}"))
            };
            engine.append(vec![u]).await.unwrap();
        }
        let within = eventually(Duration::from_secs(10), || async {
            let history = read_all(&engine, 1000).await;
            history.iter().map(|s| s.update.data.len()).sum::<usize>() <= 20_000
        })
        .await;
        assert!(within);
        let (bounds, positions) = retained(&engine).await;
        // About 1,070 bytes each counted: 18 fit in 20,000.
        assert!(
            (15..=19).contains(&positions.len()),
            "{} retained",
            positions.len()
        );
        assert_eq!(bounds.last, 100);
        assert_eq!(bounds.first, positions.first().copied());
        assert_eq!(positions.last(), Some(&100));
        assert_eq!(engine.resolve("b1").await.unwrap(), None);
        assert_eq!(engine.resolve("b100").await.unwrap(), Some(100));
    }

    /// A store with some history, closed.
    async fn filled_store(dir: &Path, n: usize) -> (LocalConfig, PathBuf) {
        let config = config(dir);
        let engine = open(&config);
        for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
            let batch = chunk
                .iter()
                .map(|i| Update {
                    data: format!("{i:0>500}"),
                    ..update(&format!("f{i}"))
                })
                .collect();
            engine.append(batch).await.unwrap();
        }
        engine.close().await.unwrap();
        let file = engine.file().to_path_buf();
        drop(engine);
        (config, file)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn damaged_middle_is_an_error_and_the_file_is_kept() {
        let dir = TempDir::new().unwrap();
        let (config, file) = filled_store(dir.path(), 3000).await;
        // Control: the intact file opens.
        drop(open(&config));
        let mut bytes = std::fs::read(&file).unwrap();
        let len = bytes.len();
        assert!(len > 1_000_000, "store is {len} bytes");
        for b in &mut bytes[len / 3..2 * len / 3] {
            *b = 0x5a;
        }
        std::fs::write(&file, &bytes).unwrap();
        let reason = open_err(&config);
        println!("damaged store: {reason}");
        assert!(reason.contains(&file.display().to_string()), "{reason}");
        assert_eq!(std::fs::read(&file).unwrap(), bytes, "the file was changed");
        // And it stays an error: nothing was reset.
        let again = open_err(&config);
        assert!(again.contains(&file.display().to_string()), "{again}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn truncated_file_is_an_error_and_the_file_is_kept() {
        let dir = TempDir::new().unwrap();
        let (config, file) = filled_store(dir.path(), 2000).await;
        let bytes = std::fs::read(&file).unwrap();
        for keep in [bytes.len() / 2, 4096, 100, 0] {
            std::fs::write(&file, &bytes[..keep]).unwrap();
            let reason = open_err(&config);
            println!("truncated to {keep}: {reason}");
            assert!(reason.contains(&file.display().to_string()), "{reason}");
            assert_eq!(std::fs::metadata(&file).unwrap().len(), keep as u64);
        }
    }

    #[tokio::test]
    async fn foreign_file_is_an_error() {
        let dir = TempDir::new().unwrap();
        let config = config(dir.path());
        std::fs::create_dir_all(&config.path).unwrap();
        let file = config.path.join(STORE_FILE);
        let junk = b"this is not a database, but it is somebody's data\n".repeat(200);
        std::fs::write(&file, &junk).unwrap();
        let reason = open_err(&config);
        println!("foreign file: {reason}");
        assert!(reason.contains(&file.display().to_string()), "{reason}");
        assert_eq!(std::fs::read(&file).unwrap(), junk);
    }

    /// A path that cannot be a directory: works as root too.
    #[tokio::test]
    async fn unusable_directory_is_an_error() {
        let dir = TempDir::new().unwrap();
        let regular = dir.path().join("a-file");
        std::fs::write(&regular, b"x").unwrap();
        let config = LocalConfig::new(regular.join("store"));
        let reason = open_err(&config);
        println!("parent is a file: {reason}");
        assert!(reason.contains(&regular.display().to_string()), "{reason}");
    }

    /// A read-only directory. Root ignores permission bits, so as root the
    /// store directory is a read-only tmpfs mount instead, which stops root
    /// too.
    #[cfg(unix)]
    #[tokio::test]
    async fn read_only_directory_is_an_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap();
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o555)).unwrap();
        let writable = std::fs::write(store.join("probe"), b"x").is_ok();
        let _mount = if writable {
            let ro = dir.path().join("ro");
            std::fs::create_dir(&ro).unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
                .arg(&ro)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "running as root and cannot mount a read-only tmpfs");
            let unmount = Unmount(ro.clone());
            assert!(std::fs::write(ro.join("probe"), b"x").is_err());
            let reason = open_err(&LocalConfig::new(&ro));
            println!("read-only mount: {reason}");
            assert!(reason.contains(&ro.display().to_string()), "{reason}");
            Some(unmount)
        } else {
            let reason = open_err(&LocalConfig::new(&store));
            println!("read-only directory: {reason}");
            assert!(reason.contains(&store.display().to_string()), "{reason}");
            None
        };
    }

    /// Unmounts on drop.
    struct Unmount(std::path::PathBuf);

    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    #[tokio::test]
    async fn second_open_of_the_same_store_is_refused() {
        let dir = TempDir::new().unwrap();
        let config = config(dir.path());
        let first = open(&config);
        let reason = open_err(&config);
        assert!(reason.contains("already open"), "{reason}");
        first.close().await.unwrap();
        // close() releases the file.
        let second = open(&config);
        second.close().await.unwrap();
    }

    // --- crash safety: a child process appends, the test kills it -9 ---

    const CHILD_DIR: &str = "HERALD_ENGINE_SUITE_CHILD_DIR";
    const CHILD_MODE: &str = "HERALD_ENGINE_SUITE_CHILD_MODE";
    const CHILD_PREFIX: &str = "HERALD_ENGINE_SUITE_CHILD_PREFIX";

    /// Not a test: the child process of the crash tests. Appends from 8
    /// tasks and prints `ack <id> <position>` for every acknowledged
    /// update, until killed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "child process of the crash tests"]
    async fn crash_child() {
        use std::io::Write;
        let Some(dir) = std::env::var_os(CHILD_DIR) else {
            return;
        };
        let mode = std::env::var(CHILD_MODE).unwrap_or_default();
        let prefix = std::env::var(CHILD_PREFIX).unwrap_or_default();
        let durability = if mode == "async" {
            Durability::Async
        } else {
            Durability::Sync
        };
        let engine: Arc<LocalEngine> = Arc::new(
            LocalEngine::open(LocalConfig {
                durability,
                ..LocalConfig::new(PathBuf::from(dir))
            })
            .unwrap(),
        );
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let ack = |out: &std::sync::Mutex<std::io::Stdout>, stored: &[Arc<Stored>]| {
            let mut out = out.lock().unwrap();
            for s in stored {
                writeln!(out, "ack {} {}", s.update.id, s.position).unwrap();
            }
            out.flush().unwrap();
        };
        if mode == "async" {
            // Acknowledge 100, say so, then stay idle until killed.
            for i in 0..100 {
                let id = format!("{prefix}a{i}");
                let s = engine.append(vec![update(&id)]).await.unwrap();
                ack(&out, &s);
            }
            writeln!(out.lock().unwrap(), "idle").unwrap();
            out.lock().unwrap().flush().unwrap();
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let mut tasks = Vec::new();
        for t in 0..8 {
            let engine = engine.clone();
            let out = out.clone();
            let prefix = prefix.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let batch = vec![Update {
                        data: "y".repeat(100 + i % 300),
                        ..update(&format!("{prefix}c{t}-{i}"))
                    }];
                    let s = engine.append(batch).await.unwrap();
                    ack(&out, &s);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }

    /// Starts the child, reads acknowledgements until `enough` says stop,
    /// kills it with SIGKILL, returns the acknowledged (id, position).
    fn run_child_and_kill(
        dir: &Path,
        mode: &str,
        prefix: &str,
        mut enough: impl FnMut(&str, usize) -> bool,
    ) -> Vec<(String, Position)> {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "local_only::crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir)
            .env(CHILD_MODE, mode)
            .env(CHILD_PREFIX, prefix)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut acked = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            // libtest may print "test ... " in front of the first line.
            if let Some(at) = line.find("ack ") {
                let rest = &line[at + 4..];
                let (id, pos) = rest.rsplit_once(' ').unwrap();
                acked.push((id.to_owned(), pos.parse().unwrap()));
            }
            if enough(&line, acked.len()) {
                break;
            }
        }
        // Child::kill sends SIGKILL: no destructor, no flush, no close.
        child.kill().unwrap();
        child.wait().unwrap();
        acked
    }

    async fn assert_all_acknowledged_present(dir: &Path, acked: &[(String, Position)]) {
        let engine = LocalEngine::open(LocalConfig::new(dir)).unwrap();
        for (id, pos) in acked {
            assert_eq!(engine.resolve(id).await.unwrap(), Some(*pos), "lost {id}");
        }
        let history = read_all(&engine, 1000).await;
        let max = acked.iter().map(|a| a.1).max().unwrap();
        assert!(history.len() as u64 >= max);
        for (i, s) in history.iter().enumerate() {
            assert_eq!(s.position, i as u64 + 1, "gap in history");
        }
        let bounds = engine.bounds().await.unwrap();
        let id = format!("after-crash-{}", acked.len());
        let next = engine.append(updates(&[&id])).await.unwrap();
        assert_eq!(next[0].position, bounds.last + 1);
        engine.close().await.unwrap();
    }

    /// After `kill -9` in the middle of a stream of appends, the store opens
    /// and holds every acknowledged update (Sync durability).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kill_9_keeps_every_acknowledged_update() {
        let dir = TempDir::new().unwrap();
        let store = dir.path().join("store");
        let mut acked = Vec::new();
        for round in 0..3 {
            let prefix = format!("r{round}-");
            let more = run_child_and_kill(&store, "sync", &prefix, |_, n| n >= 1500);
            assert!(
                more.len() >= 1500,
                "round {round}: child acknowledged {}",
                more.len()
            );
            acked.extend(more);
            assert_all_acknowledged_present(&store, &acked).await;
        }
    }

    /// With Async durability, acknowledged updates reach the disk within
    /// the flush interval even if nothing else happens.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_durability_flushes_in_the_background() {
        let dir = TempDir::new().unwrap();
        let store = dir.path().join("store");
        let mut idle_at = None;
        let acked = run_child_and_kill(&store, "async", "", |line, _| {
            if line.ends_with("idle") {
                idle_at = Some(Instant::now());
                // Past FLUSH_INTERVAL plus one writer tick.
                std::thread::sleep(Duration::from_millis(2500));
                return true;
            }
            false
        });
        assert!(idle_at.is_some());
        assert_eq!(acked.len(), 100);
        assert_all_acknowledged_present(&store, &acked).await;
    }

    // --- a full disk ---

    /// A small tmpfs, unmounted on drop. Needs root (or CAP_SYS_ADMIN).
    struct SmallDisk(PathBuf);

    impl SmallDisk {
        fn mount(at: &Path, size: &str) -> Option<Self> {
            std::fs::create_dir_all(at).ok()?;
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(at)
                .stderr(std::process::Stdio::null())
                .status()
                .ok()?;
            status.success().then(|| Self(at.to_path_buf()))
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    /// When the disk fills, appends fail with `Unavailable`, the engine
    /// keeps running, and once space is back appends succeed again with
    /// nothing acknowledged lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_disk_fails_appends_and_the_engine_recovers() {
        let dir = TempDir::new().unwrap();
        let Some(disk) = SmallDisk::mount(&dir.path().join("disk"), "8m") else {
            println!("skipped: cannot mount a small tmpfs (needs root)");
            return;
        };
        let config = LocalConfig::new(disk.0.join("store"));
        let engine = open(&config);
        let mut acked = Vec::new();
        let mut failure = None;
        for i in 0..10_000 {
            let u = Update {
                data: "z".repeat(2000),
                ..update(&format!("d{i}"))
            };
            match engine.append(vec![u]).await {
                Ok(s) => acked.push((s[0].update.id.clone(), s[0].position)),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let failure = failure.expect("the disk never filled");
        println!("disk full after {} updates: {failure}", acked.len());
        assert!(
            matches!(failure, EngineError::Unavailable(_)),
            "{failure:?}"
        );
        // Still running: reads work (once the writer reopened the store,
        // which it does right after the failed commit: redb refuses reads
        // too until then), appends fail cleanly.
        let (id, pos) = acked[0].clone();
        let readable = eventually(Duration::from_secs(5), || async {
            engine.resolve(&id).await.ok().flatten() == Some(pos)
        })
        .await;
        assert!(readable, "reads still failing after the failed commit");
        assert!(matches!(
            engine.append(updates(&["while-full"])).await,
            Err(EngineError::Unavailable(_))
        ));
        // Make room: a retention-like clean-up by hand is not possible from
        // outside, so grow the disk instead.
        let status = std::process::Command::new("mount")
            .args(["-o", "remount,size=64m"])
            .arg(&disk.0)
            .status()
            .unwrap();
        assert!(status.success());
        let recovered = eventually(Duration::from_secs(20), || async {
            engine.append(updates(&["after-full"])).await.is_ok()
        })
        .await;
        assert!(recovered, "appends still failing after space came back");
        for (id, pos) in &acked {
            assert_eq!(engine.resolve(id).await.unwrap(), Some(*pos), "lost {id}");
        }
        let history = read_all(&engine, 1000).await;
        for (i, s) in history.iter().enumerate() {
            assert_eq!(s.position, i as u64 + 1, "gap in history");
        }
        assert_eq!(history.last().unwrap().update.id, "after-full");
        engine.close().await.unwrap();
        drop(engine);
        drop(disk);
    }
}

//! Cross-crate integration: what users build from several primitives at once, with real
//! processes, under the start method chosen by `MULTIPROC_START_METHOD`.
use libtest_mimic::{Arguments, Failed, Trial};
use multiproc::pipe::Address;
use multiproc::prelude::*;
use multiproc::{connect, get_start_method, Listener, RawValue};
use std::time::Duration;

type R = Result<(), Failed>;

fn ensure(cond: bool, msg: impl std::fmt::Display) -> R {
    if cond {
        Ok(())
    } else {
        Err(msg.to_string().into())
    }
}

// ---- a Queue that carries Connections -------------------------------------------------

/// Takes Connections out of a queue and answers each with the double of what it reads.
fn doubler(q: Queue<Option<Connection>>) -> Result<usize, String> {
    let mut served = 0;
    while let Some(mut c) = q.get().map_err(|e| e.to_string())? {
        let x: u64 = c.recv().map_err(|e| e.to_string())?;
        c.send(&(2 * x)).map_err(|e| e.to_string())?;
        served += 1;
    }
    Ok(served)
}

fn queue_carries_connections() -> R {
    let q = Queue::<Option<Connection>>::new()?;
    let mut p = Process::new(doubler, (q.clone(),)).start()?;
    let mut mine = Vec::new();
    for i in 0..5u64 {
        let (a, b) = pipe()?;
        q.put(Some(b)).map_err(|e| e.to_string())?;
        mine.push((i, a));
    }
    q.put(None).map_err(|e| e.to_string())?;
    for (i, c) in &mut mine {
        c.send(&(*i + 10))?;
        let back: u64 = c.recv()?;
        ensure(back == 2 * (*i + 10), format!("{i}: {back}"))?;
    }
    ensure(p.join()? == Ok(5), "served five connections")
}

// ---- Pool tasks that take a Lock and update shared Values ------------------------------

fn add_to_totals(lock: Lock, guarded: RawValue<i64>, total: Value<i64>, x: i64) -> i64 {
    total.update(|t| *t += x).map_err(|e| e.to_string()).ok();
    if let Ok(_g) = lock.lock() {
        // SAFETY: every writer of `guarded` holds `lock`.
        unsafe { guarded.set(guarded.get() + x) };
    }
    x * x
}

fn pool_tasks_update_shared_state() -> R {
    let pool = Pool::builder()
        .processes(2)
        .start_method(get_start_method())
        .build()?;
    let lock = Lock::new()?;
    let guarded = RawValue::new(0i64)?;
    let total = Value::new(0i64)?;
    let items: Vec<_> = (1..=200i64)
        .map(|x| (lock.clone(), guarded.clone(), total.clone(), x))
        .collect();
    let squares = pool.starmap(add_to_totals, items)?;
    ensure(
        squares.iter().sum::<i64>() == (1..=200i64).map(|x| x * x).sum::<i64>(),
        "results",
    )?;
    ensure(total.get()? == 20_100, format!("total {}", total.get()?))?;
    let _g = lock.lock();
    // SAFETY: we hold the lock and every task is done.
    let g = unsafe { guarded.get() };
    ensure(g == 20_100, format!("guarded {g}"))
}

// ---- a Queue as a pool task's argument ----------------------------------------------------

fn put_square(q: Queue<(u64, u64)>, x: u64) -> Result<(), String> {
    q.put((x, x * x)).map_err(|e| e.to_string())
}

fn pool_tasks_put_into_a_queue() -> R {
    let pool = Pool::builder()
        .processes(2)
        .start_method(get_start_method())
        .build()?;
    let q = Queue::<(u64, u64)>::new()?;
    let done = pool.starmap(put_square, (0..100u64).map(|x| (q.clone(), x)))?;
    ensure(done.iter().all(Result::is_ok), "every task put its item")?;
    let mut got: Vec<(u64, u64)> = (0..100)
        .filter_map(|_| q.get_timeout(Duration::from_secs(30)).ok())
        .collect();
    got.sort();
    ensure(
        got == (0..100u64).map(|x| (x, x * x)).collect::<Vec<_>>(),
        "all 100 squares, once each",
    )?;
    ensure(q.empty(), "nothing more")
}

// ---- a process tree three levels deep ---------------------------------------------------

fn level(depth: u32, go: Event, q: Queue<String>) -> Result<(), String> {
    if depth < 3 {
        let mut child = Process::new(level, (depth + 1, go.clone(), q.clone()))
            .start()
            .map_err(|e| e.to_string())?;
        child.join().map_err(|e| e.to_string())??;
    }
    if !go.wait(Some(Duration::from_secs(60))) {
        return Err("the event never came".into());
    }
    let parent = parent_process().map(|p| p.name).unwrap_or_default();
    q.put(format!(
        "{depth}:{} child of {parent}",
        current_process().name
    ))
    .map_err(|e| e.to_string())
}

fn three_level_tree_with_event_and_queue() -> R {
    let go = Event::new()?;
    let q = Queue::<String>::new()?;
    let mut top = Process::new(level, (1, go.clone(), q.clone())).start()?;
    // Nothing arrives before the event is set: the deepest level waits first.
    ensure(
        q.get_timeout(Duration::from_millis(300)).is_err(),
        "nothing before the event",
    )?;
    go.set();
    top.join()??;
    let mut got: Vec<String> = (0..3)
        .filter_map(|_| q.get_timeout(Duration::from_secs(30)).ok())
        .collect();
    got.sort();
    let n = top.name().to_string();
    let expect = vec![
        format!("1:{n} child of MainProcess"),
        format!("2:{n}:1 child of {n}"),
        format!("3:{n}:1:1 child of {n}:1"),
    ];
    ensure(got == expect, format!("{got:?} != {expect:?}"))
}

// ---- a Rust process and a Python process through Listener/Client ------------------------

const PY_ECHO_LISTENER: &str = r#"
import sys
from multiprocessing.connection import Listener
with Listener(sys.argv[1], authkey=b"tree-key") as l:
    print("ready", flush=True)
    with l.accept() as c:
        c.send_bytes(c.recv_bytes().upper())
"#;

fn rust_client(path: String) -> Result<Vec<u8>, String> {
    let mut c =
        connect(Address::Unix(path.into()), Some(b"tree-key")).map_err(|e| e.to_string())?;
    c.send_bytes(b"hello from a rust child process")
        .map_err(|e| e.to_string())?;
    c.recv_bytes().map_err(|e| e.to_string())
}

fn rust_child_talks_to_python_listener() -> R {
    let path = std::env::temp_dir().join(format!(
        "mp-int-{}-{}.sock",
        std::process::id(),
        get_start_method()
    ));
    let _ = std::fs::remove_file(&path);
    let mut py = match std::process::Command::new("python3")
        .arg("-c")
        .arg(PY_ECHO_LISTENER)
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("python3 unavailable ({e}): skipping");
            return Ok(());
        }
    };
    let mut line = [0u8; 6];
    let out = py.stdout.as_mut().ok_or("no stdout")?;
    std::io::Read::read_exact(out, &mut line)?;
    let mut p = Process::new(rust_client, (path.to_string_lossy().into_owned(),)).start()?;
    let reply = p.join()??;
    ensure(py.wait()?.success(), "python listener failed")?;
    ensure(
        reply == b"HELLO FROM A RUST CHILD PROCESS",
        String::from_utf8_lossy(&reply),
    )
}

fn rust_listener_serves_python_client() -> R {
    let path = std::env::temp_dir().join(format!(
        "mp-int2-{}-{}.sock",
        std::process::id(),
        get_start_method()
    ));
    let mut l = Listener::bind(Address::Unix(path.clone()), Some(b"k2"))?;
    let script = "import sys\nfrom multiprocessing.connection import Client\nwith Client(sys.argv[1], authkey=b'k2') as c:\n    c.send_bytes(c.recv_bytes()[::-1])\n";
    let mut py = match std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("python3 unavailable ({e}): skipping");
            return Ok(());
        }
    };
    let mut c = l.accept_timeout(Duration::from_secs(60))?;
    c.send_bytes(b"abc")?;
    let back = c.recv_bytes()?;
    ensure(py.wait()?.success(), "python client failed")?;
    ensure(back == b"cba", String::from_utf8_lossy(&back))
}

fn main() {
    multiproc::init();
    let args = Arguments::from_args();
    let method = get_start_method();
    let t = |name: &str, f: fn() -> R| Trial::test(format!("{method}::{name}"), f);
    let tests = vec![
        t("queue_carries_connections", queue_carries_connections),
        t(
            "pool_tasks_update_shared_state",
            pool_tasks_update_shared_state,
        ),
        t("pool_tasks_put_into_a_queue", pool_tasks_put_into_a_queue),
        t(
            "three_level_tree_with_event_and_queue",
            three_level_tree_with_event_and_queue,
        ),
        t(
            "rust_child_talks_to_python_listener",
            rust_child_talks_to_python_listener,
        ),
        t(
            "rust_listener_serves_python_client",
            rust_listener_serves_python_client,
        ),
    ];
    libtest_mimic::run(&args, tests).exit();
}

//! Rust and Python talking: a Rust `Listener` with an authkey serves a Python 3
//! `multiprocessing.connection.Client` (this machine's python3), exchanging raw bytes
//! (`send_bytes` / `recv_bytes`: the frames and the challenge are Python's own).
use multiproc::pipe::Address;
use multiproc::Listener;
use std::process::Command;
use std::time::Duration;

const PYTHON_CLIENT: &str = r#"
import sys
from multiprocessing.connection import Client
with Client(sys.argv[1], authkey=b"secret") as c:
    c.send_bytes(b"hello from Python " + sys.version.split()[0].encode())
    print("python got:", c.recv_bytes().decode())
"#;

#[multiproc::main]
fn main() -> anyhow::Result<()> {
    let path = std::env::temp_dir().join(format!("multiproc-interop-{}.sock", std::process::id()));
    let mut listener = Listener::bind(Address::Unix(path.clone()), Some(b"secret"))?;
    let mut python = match Command::new("python3")
        .arg("-c")
        .arg(PYTHON_CLIENT)
        .arg(&path)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            println!("python3 is not available ({e}): nothing to talk to");
            return Ok(());
        }
    };
    let mut conn = listener.accept_timeout(Duration::from_secs(30))?;
    let msg = conn.recv_bytes()?;
    println!("rust got: {}", String::from_utf8_lossy(&msg));
    conn.send_bytes(b"hello from Rust")?;
    anyhow::ensure!(python.wait()?.success(), "the Python client failed");
    Ok(())
}

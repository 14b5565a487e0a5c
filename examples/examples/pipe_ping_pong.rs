//! Seed 001, "Pipes: a two-way communication channel, useful for one-to-one
//! communication": a parent and a child talk over a duplex Pipe, typed messages one way
//! and raw bytes the other, until the parent says it is done.
use multiproc::{pipe, Connection, PipeError, Process};

/// Errors come back to the parent as text: a child's result travels serialized.
fn child(conn: Connection) -> Result<u32, String> {
    serve(conn).map_err(|e| e.to_string())
}

fn serve(mut conn: Connection) -> Result<u32, PipeError> {
    let mut handled = 0;
    loop {
        match conn.recv::<Option<String>>()? {
            Some(text) => {
                conn.send_bytes(text.to_uppercase().as_bytes())?;
                handled += 1;
            }
            None => return Ok(handled), // the parent's "no more" message
        }
    }
}

#[multiproc::main]
fn main() -> anyhow::Result<()> {
    let (mut parent_conn, child_conn) = pipe()?;
    let mut p = Process::new(child, (child_conn,)).start()?;
    for word in ["hello", "from", "the", "parent"] {
        parent_conn.send(&Some(word.to_string()))?;
        let reply = parent_conn.recv_bytes()?;
        println!(
            "sent {word:?}, got back {:?}",
            String::from_utf8_lossy(&reply)
        );
    }
    parent_conn.send(&None::<String>)?;
    println!(
        "the child handled {} messages",
        p.join()?.map_err(anyhow::Error::msg)?
    );
    // The child is gone: reading now is end of file, not a hang.
    println!(
        "after the child exited: {:?}",
        parent_conn.recv::<u8>().err()
    );
    Ok(())
}

//! `RemoteTarget` against a caller who alters or forges one: a value that arrives as
//! bytes never chooses the address that is called. Each attempt runs inside a child, so
//! a wild jump would show as a signal instead of killing the test binary.
use libtest_mimic::{Arguments, Failed, Trial};
use mp_process::*;
use std::time::Duration;

type R = Result<(), Failed>;

fn ensure(cond: bool, msg: impl std::fmt::Display) -> R {
    if cond {
        Ok(())
    } else {
        Err(msg.to_string().into())
    }
}

fn add(a: u32, b: u32) -> u32 {
    a + b
}

/// Set in a copy of this binary started as a separate program (its own process tree):
/// print a serialized target and exit.
const EMIT_ENV: &str = "MP_TARGETS_TEST_EMIT";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn call_add(t: &RemoteTarget) -> Result<u32, ProcessError> {
    let (args, fds) = mp_core::handles::encode(&(2u32, 3u32)).map_err(ProcessError::ArgsEncode)?;
    let (out, out_fds) = t.call(&args, fds)?;
    mp_core::handles::decode::<u32>(&out, out_fds).map_err(ProcessError::ResultDecode)
}

/// In a child: every single-byte change of a valid target that still decodes is
/// refused by `call`. Returns (altered targets tried, refused) or what went wrong.
fn alter_every_byte() -> Result<(usize, usize), String> {
    let t = RemoteTarget::of::<_, (u32, u32)>(add).map_err(|e| e.to_string())?;
    if call_add(&t).map_err(|e| e.to_string())? != 5 {
        return Err("the genuine target gave a wrong answer".into());
    }
    let bytes = postcard::to_allocvec(&t).map_err(|e| e.to_string())?;
    let (mut tried, mut refused) = (0, 0);
    for i in 0..bytes.len() {
        for delta in [1u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] = b[i].wrapping_add(delta);
            let Ok(forged) = postcard::from_bytes::<RemoteTarget>(&b) else {
                continue;
            };
            if forged == t {
                continue;
            }
            tried += 1;
            if call_add(&forged).is_err() {
                refused += 1;
            }
        }
    }
    Ok((tried, refused))
}

fn altered_targets_are_refused() -> R {
    let mut p = Process::new(alter_every_byte, ()).start()?;
    let res = p.join_timeout(Duration::from_secs(60));
    let (tried, refused) = res
        .map_err(|e| format!("child: {e}"))?
        .map_err(|e| format!("child: {e}"))?;
    ensure(tried > 10, format!("only {tried} altered targets decoded"))?;
    ensure(
        tried == refused,
        format!("{} of {tried} altered targets were called", tried - refused),
    )
}

fn targets_travel_within_the_tree() -> R {
    // A target made here and called in a child (as a pool does) works.
    fn call_it(t: RemoteTarget) -> Result<u32, String> {
        call_add(&t).map_err(|e| e.to_string())
    }
    let t = RemoteTarget::of::<_, (u32, u32)>(add)?;
    let got = Process::new(call_it, (t,)).start()?.join()?;
    ensure(got == Ok(5), format!("{got:?}"))
}

fn a_target_from_another_tree_is_refused() -> R {
    // The same executable, started as a separate program: its own process tree.
    let exe = std::env::current_exe()?;
    let out = std::process::Command::new(exe)
        .env(EMIT_ENV, "1")
        .env_remove(START_METHOD_ENV)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let bytes = unhex(text.trim()).ok_or_else(|| format!("bad output {text:?}"))?;
    let t: RemoteTarget = postcard::from_bytes(&bytes)?;
    match call_add(&t) {
        Err(ProcessError::Target(_)) => Ok(()),
        other => Err(format!("expected a refused target, got {other:?}").into()),
    }
}

fn main() {
    init();
    if std::env::var_os(EMIT_ENV).is_some() {
        let t = RemoteTarget::of::<_, (u32, u32)>(add).expect("target");
        println!("{}", hex(&postcard::to_allocvec(&t).expect("encode")));
        return;
    }
    let method = get_start_method();
    let t = |name: &str, f: fn() -> R| Trial::test(format!("{method}::{name}"), f);
    let tests = vec![
        t("altered_targets_are_refused", altered_targets_are_refused),
        t(
            "targets_travel_within_the_tree",
            targets_travel_within_the_tree,
        ),
        t(
            "a_target_from_another_tree_is_refused",
            a_target_from_another_tree_is_refused,
        ),
    ];
    libtest_mimic::run(&Arguments::from_args(), tests).exit();
}

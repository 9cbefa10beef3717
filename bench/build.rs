//! Compiles the benchmarks' trivial agent (`agent/probe.c`) into
//! `$OUT_DIR/oz-bench-probe`, which `oz-bench` embeds and writes out next to
//! each benchmark's timestamps.
//!
//! C rather than Rust because the probe's own start-up is counted as
//! dispatch latency and in the floor: a static C binary reaches its first
//! line after one exec and no loader. The C compiler is the one Rust already
//! links with (`$CC`, else `cc`); without a static libc it links
//! dynamically and says so.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=agent/probe.c");
    println!("cargo:rerun-if-env-changed=CC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let exe = out.join("oz-bench-probe");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let compile = |extra: &[&str]| {
        Command::new(&cc)
            .args(["-O2", "-Wall", "-Wextra", "-o"])
            .arg(&exe)
            .arg("agent/probe.c")
            .args(extra)
            .status()
    };
    // Results record how the probe was linked (`machine.agent_link`).
    match compile(&["-static"]) {
        Ok(s) if s.success() => println!("cargo:rustc-env=OZ_BENCH_PROBE_LINK=static"),
        _ => match compile(&[]) {
            Ok(s) if s.success() => {
                println!("cargo:rustc-env=OZ_BENCH_PROBE_LINK=dynamic");
                println!(
                    "cargo:warning=agent/probe.c linked dynamically (no static libc): \
                     the agent's start cost includes the loader"
                )
            }
            Ok(s) => panic!("{cc} failed to compile agent/probe.c ({s}); install a C compiler"),
            Err(e) => panic!("cannot run the C compiler {cc:?}: {e}; install one or set CC"),
        },
    }
}

//! SciStream's command-line spellings rewritten to ours: any argument list.
#![no_main]

use std::ffi::OsString;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let argv: Vec<OsString> = std::iter::once(OsString::from("s2cs"))
        .chain(data.split(|&b| b == 0).map(|a| {
            use std::os::unix::ffi::OsStrExt;
            std::ffi::OsStr::from_bytes(a).to_owned()
        }))
        .collect();
    if let Ok(t) = scistream_control::compat::translate(argv) {
        let _ = t;
    }
});

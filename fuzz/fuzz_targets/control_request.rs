//! The gRPC messages any caller sends s2cs (req, hello, update, release),
//! decoded from protobuf and checked as the service checks them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    scistream_control::fuzzing::control_message(data);
});

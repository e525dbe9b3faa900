//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, never
//! in a release build): the checks every caller's message goes through,
//! reachable without a server.

use prost::Message;
use scistream_protocol::pb;

use crate::auth::Identity;
use crate::sessions::Policy;
use crate::sessions::request::{HelloMsg, NewSession, TargetsUpdate, release_uid};

/// Decodes `data[1..]` as the message `data[0]` picks (req, hello, update,
/// release; marked or not) and checks it as the service does. Never panics.
pub fn control_message(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(r) = pb::Request::decode(body) {
                let policy = Policy::default();
                let _ = NewSession::parse(r, which & 4 != 0, &Identity::anonymous(), &policy);
            }
        }
        1 => {
            if let Ok(h) = pb::Hello::decode(body) {
                let _ = HelloMsg::parse(h);
            }
        }
        2 => {
            if let Ok(u) = pb::UpdateTargets::decode(body) {
                if let Ok(t) = TargetsUpdate::parse(u) {
                    for given in &t.given {
                        let _ = given.parse::<scistream_protocol::Endpoint>();
                    }
                }
            }
        }
        _ => {
            if let Ok(r) = pb::Release::decode(body) {
                let _ = release_uid(r);
            }
        }
    }
}

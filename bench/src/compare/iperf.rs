//! iperf3 as the load of `compare` (`--load iperf3`): a plain TCP client
//! and server of the shape real applications have, instead of s2bench's
//! verifying source and sink. One `iperf3 -s` serves every round; each
//! round runs `iperf3 -c ENTRY -P CONNS -t DURATION -J` and reads the
//! receiver's figures from its JSON.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::peers::{find_program, free_port, wait_listening};

/// A running `iperf3 -s`; killed when dropped.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    bin: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one iperf3 run measured at the receiver.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// Bytes the server received.
    pub bytes: u64,
    /// Seconds it received for.
    pub seconds: f64,
    /// Bits per second at the server.
    pub bits_per_second: f64,
}

impl Server {
    /// Starts `iperf3 -s` on a free loopback port.
    pub fn start() -> Result<Server, String> {
        let bin = find_program(&["iperf3"])
            .ok_or("iperf3 not installed (Debian: apt-get install iperf3)")?;
        let port = free_port().map_err(|e| e.to_string())?;
        let mut child = Command::new(&bin)
            .args(["-s", "-B", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start iperf3: {e}"))?;
        wait_listening(port, &mut child, "iperf3 -s")?;
        Ok(Server { child, port, bin })
    }

    /// One client run through `entry` (HOST:PORT) with `conns` streams.
    /// `rate_bps`: all streams together (iperf3's `-b` is per stream).
    pub fn run(
        &self,
        entry: &str,
        conns: usize,
        duration: Duration,
        rate_bps: Option<u64>,
    ) -> Result<Measured, String> {
        let per_stream = rate_bps.map(|r| (r / conns.max(1) as u64).max(1).to_string());
        let (host, port) = entry
            .rsplit_once(':')
            .ok_or_else(|| format!("'{entry}' is not HOST:PORT"))?;
        let secs = duration.as_secs().max(1).to_string();
        let mut last = String::new();
        // The server takes one test at a time; a previous one may still be closing.
        for _ in 0..20 {
            let out = Command::new(&self.bin)
                .args([
                    "-c",
                    host,
                    "-p",
                    port,
                    "-P",
                    &conns.to_string(),
                    "-t",
                    &secs,
                    "-J",
                ])
                .args(per_stream.iter().flat_map(|b| ["-b", b.as_str()]))
                .output()
                .map_err(|e| format!("cannot run iperf3: {e}"))?;
            let text = String::from_utf8_lossy(&out.stdout);
            match parse(&text) {
                Ok(m) if out.status.success() => return Ok(m),
                Ok(_) => last = format!("iperf3 exited with {}", out.status),
                Err(e) => last = e,
            }
            if !text.contains("busy") {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(last)
    }
}

/// The receiver's totals from `iperf3 -J` output.
pub fn parse(json: &str) -> Result<Measured, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("iperf3 printed no JSON: {e}"))?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return Err(format!("iperf3: {e}"));
    }
    let r = &v["end"]["sum_received"];
    let number = |k: &str| {
        r[k].as_f64()
            .ok_or_else(|| format!("iperf3's JSON lacks end.sum_received.{k}"))
    };
    Ok(Measured {
        bytes: number("bytes")? as u64,
        seconds: number("seconds")?,
        bits_per_second: number("bits_per_second")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_figures_are_read_and_errors_named() {
        let ok = r#"{"start":{},"end":{"sum_sent":{"bytes":10},"sum_received":{"bytes":1250000000,"seconds":1.0,"bits_per_second":1e10}}}"#;
        let m = parse(ok).unwrap();
        assert_eq!(m.bytes, 1_250_000_000);
        assert_eq!(m.bits_per_second, 1e10);
        let busy =
            r#"{"start":{},"end":{},"error":"the server is busy running a test. try again later"}"#;
        assert!(parse(busy).unwrap_err().contains("busy"));
        assert!(parse("not json").is_err());
    }
}

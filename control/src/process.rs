//! What every kind that runs local processes needs (Serving's instances, Pipelines' steps):
//! signals to a process group, and its output read line by line with a bound.

use rustix::process::{Pid, Signal};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Sends `sig` to the process group `pid` leads (each instance or step leads its own, so what
/// it started goes too). Nothing to do when the group is gone.
pub fn signal_group(pid: u32, sig: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

/// Reads `from` to its end, calling `line` with each line: any bytes (shown lossily), without
/// its line ending, cut at `max` bytes (the rest skipped, never held in memory).
pub async fn for_each_line(from: impl AsyncRead + Unpin, max: usize, mut line: impl FnMut(String)) {
    let mut reader = BufReader::new(from);
    let mut buf = Vec::new();
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(chunk) => chunk,
        };
        let (used, end) = match chunk.iter().position(|b| *b == b'\n') {
            Some(at) => (at + 1, true),
            None => (chunk.len(), false),
        };
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..used.min(room)]);
        reader.consume(used);
        if end {
            while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                buf.pop();
            }
            line(String::from_utf8_lossy(&buf).into_owned());
            buf.clear();
        }
    }
    if !buf.is_empty() {
        line(String::from_utf8_lossy(&buf).into_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_cut_and_read_lossily_to_the_end() {
        let input: &[u8] = b"short\r\n0123456789abcdef\n\xff\xfeok\nlast";
        let mut got = Vec::new();
        for_each_line(input, 8, |l| got.push(l)).await;
        assert_eq!(got, ["short", "01234567", "\u{fffd}\u{fffd}ok", "last"]);
    }
}

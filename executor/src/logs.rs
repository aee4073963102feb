//! Capture of an instance's stdout and stderr as invocation logs.
//!
//! Both streams of the instance write into one pipe, so the kernel keeps the order in which
//! the user wrote them. The bootstrap writes a marker (random per instance) after each
//! invocation; everything before the marker belongs to that invocation. Each segment is capped:
//! past the cap bytes are dropped and the segment is marked truncated, but the marker is still
//! found, so a noisy function cannot push its logs into the next invocation.

use std::collections::VecDeque;
use std::io::{PipeReader, Read};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

/// Logs of one invocation (or of an instance's start).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// The captured text (invalid UTF-8 replaced).
    pub text: String,
    /// Whether output was dropped because the segment was over the cap.
    pub truncated: bool,
}

/// Text appended to a truncated segment.
pub const TRUNCATION_MARKER: &str = "\n[kubefaas: log output truncated]\n";

#[derive(Debug, Default)]
struct State {
    current: Vec<u8>,
    truncated: bool,
    done: VecDeque<Segment>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Progress {
    segments: u64,
    eof: bool,
}

/// The reading end of an instance's log pipe, read by a thread of its own.
#[derive(Debug)]
pub(crate) struct LogCapture {
    state: Arc<Mutex<State>>,
    progress: watch::Receiver<Progress>,
    taken: u64,
}

impl LogCapture {
    /// Starts reading `pipe`, cutting segments at `marker`, each at most `limit` bytes.
    pub(crate) fn start(pipe: PipeReader, marker: Vec<u8>, limit: usize) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, rx) = watch::channel(Progress::default());
        let shared = Arc::clone(&state);
        std::thread::Builder::new()
            .name("kubefaas-logs".into())
            .spawn(move || read_loop(pipe, &marker, limit, &shared, &tx))?;
        Ok(Self { state, progress: rx, taken: 0 })
    }

    /// Waits up to `wait` for the next segment to end (the bootstrap wrote its marker) and
    /// takes it. If the pipe closes or the wait runs out, takes what was written so far.
    pub(crate) async fn next_segment(&mut self, wait: Duration) -> Segment {
        let wanted = self.taken + 1;
        let _ =
            tokio::time::timeout(wait, self.progress.wait_for(|p| p.segments >= wanted || p.eof))
                .await;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(segment) = state.done.pop_front() {
            self.taken += 1;
            return segment;
        }
        // No marker: the instance died or hangs. What it wrote so far is this invocation's.
        let text = String::from_utf8_lossy(&state.current).into_owned();
        let truncated = state.truncated;
        state.current.clear();
        state.truncated = false;
        Segment { text: finish(text, truncated), truncated }
    }
}

fn finish(mut text: String, truncated: bool) -> String {
    if truncated {
        text.push_str(TRUNCATION_MARKER);
    }
    text
}

fn read_loop(
    mut pipe: PipeReader,
    marker: &[u8],
    limit: usize,
    state: &Mutex<State>,
    progress: &watch::Sender<Progress>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    // Bytes not yet known not to start a marker.
    let mut carry: Vec<u8> = Vec::new();
    let mut segments = 0u64;
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        if n == 0 {
            append(&mut state, &carry, limit);
            drop(state);
            progress.send_replace(Progress { segments, eof: true });
            return;
        }
        carry.extend_from_slice(&buf[..n]);
        while let Some(at) = find(&carry, marker) {
            append(&mut state, &carry[..at], limit);
            let text = String::from_utf8_lossy(&state.current).into_owned();
            let truncated = state.truncated;
            state.done.push_back(Segment { text: finish(text, truncated), truncated });
            state.current.clear();
            state.truncated = false;
            carry.drain(..at + marker.len());
            segments += 1;
        }
        let keep = carry.len().min(marker.len().saturating_sub(1));
        let flush = carry.len() - keep;
        append(&mut state, &carry[..flush], limit);
        carry.drain(..flush);
        drop(state);
        progress.send_replace(Progress { segments, eof: false });
    }
}

fn append(state: &mut State, bytes: &[u8], limit: usize) {
    let room = limit.saturating_sub(state.current.len());
    if bytes.len() > room {
        state.current.extend_from_slice(&bytes[..room]);
        state.truncated = true;
    } else {
        state.current.extend_from_slice(bytes);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn segments_split_at_markers_even_across_writes() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let mut logs = LogCapture::start(reader, b"<<END>>".to_vec(), 1024).unwrap();
        writer.write_all(b"first line\n<<E").unwrap();
        writer.write_all(b"ND>>second").unwrap();
        writer.write_all(b" part<<END>>").unwrap();
        let wait = Duration::from_secs(5);
        assert_eq!(logs.next_segment(wait).await.text, "first line\n");
        assert_eq!(logs.next_segment(wait).await.text, "second part");
    }

    #[tokio::test]
    async fn oversized_segment_is_truncated_and_marked_but_the_next_one_is_intact() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let mut logs = LogCapture::start(reader, b"#M#".to_vec(), 10).unwrap();
        writer.write_all(b"0123456789abcdef#M#ok#M#").unwrap();
        let wait = Duration::from_secs(5);
        let first = logs.next_segment(wait).await;
        assert!(first.truncated);
        assert!(first.text.starts_with("0123456789"));
        assert!(first.text.contains("truncated"));
        assert!(!first.text.contains("abc"));
        let second = logs.next_segment(wait).await;
        assert_eq!((second.text.as_str(), second.truncated), ("ok", false));
    }

    #[tokio::test]
    async fn closed_pipe_yields_the_partial_segment() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let mut logs = LogCapture::start(reader, b"#M#".to_vec(), 100).unwrap();
        writer.write_all(b"dying wo").unwrap();
        drop(writer);
        assert_eq!(logs.next_segment(Duration::from_secs(5)).await.text, "dying wo");
    }
}

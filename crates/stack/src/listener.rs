//! Whether a port's listening socket belongs to a given process (Linux's
//! `/proc`): a restarted server reuses its port, and a connection that
//! succeeds may have reached whatever took the port while it was down.

use std::path::Path;

/// `Some(true)` when `pid` holds a socket listening on `port`, `Some(false)`
/// when it does not, `None` when `/proc` cannot tell (not Linux).
pub(crate) fn listens_on(pid: u32, port: u16) -> Option<bool> {
    let mut inodes = Vec::new();
    let mut read_any = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            read_any = true;
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if !read_any {
        return None;
    }
    let fds = std::fs::read_dir(Path::new("/proc").join(pid.to_string()).join("fd")).ok()?;
    let held = fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let target = target.to_string_lossy();
            (inodes.iter()).any(|inode| target == format!("socket:[{inode}]"))
        })
    });
    Some(held)
}

/// The inodes of the sockets a `/proc/net/tcp` table lists as listening
/// (state `0A`) on `port`.
fn listening_inodes(table: &str, port: u16) -> Vec<String> {
    let port = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit(':').next()?;
            (local_port == port && *fields.get(3)? == "0A")
                .then(|| fields.get(9).map(|s| (*s).to_owned()))?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_process_listening_and_not_once_closed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listens_on(std::process::id(), port), Some(true));
        drop(listener);
        assert_eq!(listens_on(std::process::id(), port), Some(false));
    }

    #[test]
    fn reads_only_listening_rows_of_the_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:6A3F 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1 0
   1: 0100007F:6A3F 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 222 1 0
   2: 0100007F:6A40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 333 1 0";
        assert_eq!(listening_inodes(table, 0x6A3F), vec!["111".to_owned()]);
    }
}

//! Switching the output: commands to the output FFmpeg's `zmq` filter.
//!
//! The filter is a ZMQ REP socket, so plain TCP (`nc`) does not work: we
//! speak ZMTP as a REQ client. Measured on FFmpeg 5.1 (ARCHITECTURE.md,
//! "Switching over ZMQ"): replies are text such as `0 Success`; a command
//! FFmpeg cannot parse gets NO reply and would leave a REQ socket stuck, so
//! every command uses a fresh socket and a timeout. Video and audio
//! switches are two separate commands because target matching stops at the
//! first matching filter.

use std::time::Duration;

use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

/// How long one command may take, connect included. The filter answers when
/// the next frame passes it, so well under a frame interval normally.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

pub use crate::policy::Input;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "no reply from the output's zmq filter on {endpoint} within {timeout:?} to {command:?}"
    )]
    Timeout {
        endpoint: String,
        command: String,
        timeout: Duration,
    },
    #[error("zmq {endpoint}: {source}")]
    Zmq {
        endpoint: String,
        #[source]
        source: zeromq::ZmqError,
    },
    #[error("the output refused {command:?}: {reply}")]
    Refused { command: String, reply: String },
}

/// A client for the output's zmq filter.
#[derive(Debug, Clone)]
pub struct Switch {
    endpoint: String,
    timeout: Duration,
}

impl Switch {
    pub fn new(port: u16) -> Switch {
        Switch {
            endpoint: format!("tcp://127.0.0.1:{port}"),
            timeout: COMMAND_TIMEOUT,
        }
    }

    /// Sends one raw command and returns FFmpeg's reply text.
    pub async fn command(&self, command: &str) -> Result<String, ControlError> {
        let attempt = async {
            let mut socket = zeromq::ReqSocket::new();
            socket.connect(&self.endpoint).await?;
            socket.send(ZmqMessage::from(command.to_string())).await?;
            let reply = socket.recv().await?;
            let text: Vec<String> = reply
                .into_vec()
                .iter()
                .map(|b| {
                    String::from_utf8_lossy(b)
                        .trim_end_matches('\0')
                        .to_string()
                })
                .collect();
            let _ = socket.close().await;
            Ok::<_, zeromq::ZmqError>(text.join(" "))
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(source)) => Err(ControlError::Zmq {
                endpoint: self.endpoint.clone(),
                source,
            }),
            Err(_) => Err(ControlError::Timeout {
                endpoint: self.endpoint.clone(),
                command: command.to_string(),
                timeout: self.timeout,
            }),
        }
    }

    /// Puts `input` on air: video first, then audio, each confirmed.
    pub async fn select(&self, input: Input) -> Result<(), ControlError> {
        let n = input as u8;
        for command in [
            format!("streamselect map {n}"),
            format!("astreamselect map {n}"),
        ] {
            let reply = self.command(&command).await?;
            if !reply.starts_with("0 ") && reply != "0" {
                return Err(ControlError::Refused { command, reply });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn switch_on(port: u16) -> Switch {
        Switch {
            endpoint: format!("tcp://127.0.0.1:{port}"),
            timeout: Duration::from_millis(500),
        }
    }

    /// Something on the port accepts connections and never says a word (a
    /// hung FFmpeg, or another program): the command times out, it does
    /// not hang.
    #[tokio::test]
    async fn a_silent_peer_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                kept.push(s);
            }
        });
        let err = switch_on(port).select(Input::Offline).await.unwrap_err();
        assert!(matches!(err, ControlError::Timeout { .. }), "{err}");
        held.abort();
    }

    /// Something that is not ZMQ answers with garbage: an error or a
    /// timeout, never a hang.
    #[tokio::test]
    async fn a_peer_speaking_garbage_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                    let mut buf = [0u8; 256];
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        });
        let result =
            tokio::time::timeout(Duration::from_secs(5), switch_on(port).select(Input::Live))
                .await
                .expect("select returned within its timeout");
        assert!(result.is_err());
        server.abort();
    }

    /// A ZMQ peer that answers something other than success: refused.
    #[tokio::test]
    async fn a_wrong_answer_is_refused() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut rep = zeromq::RepSocket::new();
        rep.bind(&format!("tcp://127.0.0.1:{port}")).await.unwrap();
        let server = tokio::spawn(async move {
            while rep.recv().await.is_ok() {
                if rep
                    .send(ZmqMessage::from("-22 Invalid argument".to_string()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let err = switch_on(port).select(Input::Live).await.unwrap_err();
        assert!(matches!(err, ControlError::Refused { .. }), "{err}");
        server.abort();
    }
}

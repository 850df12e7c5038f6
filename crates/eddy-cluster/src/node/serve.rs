//! The cluster listener: peers' connections (TLS, bounds) and the requests they carry.

use super::*;

impl Cluster {
    /// Accept peers' connections.
    pub(super) async fn serve(self: Arc<Self>, listener: TcpListener, quiet: Duration) {
        if !quiet.is_zero() {
            tracing::info!(
                ms = quiet.as_millis() as u64,
                "no cluster state here (new or wiped): waiting before taking part in elections"
            );
            tokio::time::sleep(quiet).await;
        }
        let slots = Arc::new(tokio::sync::Semaphore::new(
            crate::transport::MAX_PEER_CONNECTIONS,
        ));
        let mut warned: Option<tokio::time::Instant> = None;
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cluster listener: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // over the bound: closed at once (a warning at most every 10 s)
                if warned.is_none_or(|w| w.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(
                        %peer,
                        "cluster listener: {} connections open, refusing more",
                        crate::transport::MAX_PEER_CONNECTIONS
                    );
                    warned = Some(tokio::time::Instant::now());
                }
                continue;
            };
            let _ = stream.set_nodelay(true);
            tracing::debug!(%peer, "peer connected");
            let this = self.clone();
            tokio::spawn(async move {
                this.serve_peer(stream).await;
                drop(slot);
            });
        }
    }

    pub(super) async fn serve_peer(self: Arc<Self>, stream: tokio::net::TcpStream) {
        use tokio::io::AsyncWriteExt;
        let (mut rd, mut wr): crate::transport::Halves = match &self.cfg.tls {
            None => {
                let (rd, wr) = stream.into_split();
                (Box::new(rd), Box::new(wr))
            }
            Some(tls) => {
                let accepted = tokio::time::timeout(
                    crate::transport::TLS_HANDSHAKE,
                    tls.acceptor.accept(stream),
                )
                .await;
                match accepted {
                    Ok(Ok(s)) => {
                        let (rd, wr) = tokio::io::split(s);
                        (Box::new(rd), Box::new(wr))
                    }
                    Ok(Err(e)) => {
                        tracing::warn!("a peer's TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!("a peer's TLS handshake timed out");
                        return;
                    }
                }
            }
        };
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1024);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut buf = first;
                while buf.len() < crate::transport::COALESCE {
                    match rx.try_recv() {
                        Ok(more) => buf.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                if wr.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
        // at most this many requests of one peer are handled at once
        let slots = Arc::new(tokio::sync::Semaphore::new(1024));
        loop {
            let (id, group, rpc) = match read_frame::<Rpc>(&mut rd).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!("peer connection closed: {e}");
                    return;
                }
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let this = self.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let answer = this.handle(&group, rpc).await;
                let _ = tx.send(encode_frame(id, &group, &answer)).await;
                drop(permit);
            });
        }
    }

    pub(super) fn raft_of(&self, group: &str) -> Option<Raft<TypeConfig>> {
        if group == META_GROUP {
            Some(self.meta.clone())
        } else {
            self.groups.read().get(group).map(|g| g.raft.clone())
        }
    }

    pub(super) async fn handle(&self, group: &str, rpc: Rpc) -> Answer {
        if let Rpc::Status = rpc {
            return Answer::Status(self.local_status().to_string());
        }
        let Some(raft) = self.raft_of(group) else {
            return Answer::Refused(format!(
                "node {} has no group {group} (yet)",
                self.cfg.node_id
            ));
        };
        match rpc {
            Rpc::Append(r) => Answer::Append(raft.append_entries(r).await),
            Rpc::Vote(r) => Answer::Vote(raft.vote(r).await),
            Rpc::Snapshot(r) => Answer::Snapshot(raft.install_snapshot(r).await),
            Rpc::Forward(cmd) => {
                Answer::Forwarded(match raft.client_write(Command::Meta(cmd)).await {
                    Ok(r) => Ok((r.log_id.index, r.data)),
                    Err(e) => Err(e.to_string()),
                })
            }
            Rpc::Status => unreachable!("answered above"),
            Rpc::Membership(id, add) => Answer::Changed(
                self.change_membership_here(id, add)
                    .await
                    .map_err(|e| e.to_string()),
            ),
        }
    }
}

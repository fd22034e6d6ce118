//! A TCP path the test can cut and heal: a forwarder between a client and
//! a real server (a replica and its PostgreSQL, say), standing in for the
//! network between them. Cutting it closes every open connection and
//! refuses new ones, as a pulled cable or a firewall would.

use anyhow::Result;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct CuttableLink {
    /// Where clients connect.
    pub addr: SocketAddr,
    up: watch::Sender<bool>,
}

impl CuttableLink {
    /// Forwards connections made to [`addr`](Self::addr) to `target`.
    pub async fn start(target: SocketAddr) -> Result<CuttableLink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (up, watching) = watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut watching = watching.clone();
                if !*watching.borrow() {
                    continue; // dropped: refused
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watching.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Ok(CuttableLink { addr, up })
    }

    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn heal(&self) {
        self.up.send_replace(true);
    }
}

//! The membership fault: a follower replaced the documented way (removed,
//! emptied, started with --join, added back through `ivy member`), and its
//! testing-only broken twin (`unsafe_rejoin_empty`): voters emptied and started
//! again under their old id and command, never removed nor added back.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use tokio::time::Instant;

use super::rig::{ms, Rig};

/// How long one `ivy member` call may take (an add waits for the catch-up).
const MEMBER_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the fault waits for a leader to start from (after an earlier fault).
const LEADER_WITHIN: Duration = Duration::from_secs(5);

/// How long the fault keeps asking to add the replaced node back.
const ADD_BACK_WITHIN: Duration = Duration::from_secs(30);

impl Rig {
    /// Replaces a follower; see the module doc.
    pub(super) async fn membership(&self, rng: &mut StdRng) -> String {
        if self.unsafe_rejoin_empty {
            return self.rejoin_empty(rng).await;
        }
        let started = Instant::now();
        let Some(leader) = self.wait_leader(LEADER_WITHIN).await else {
            return "no membership change: no node leads".into();
        };
        let followers: Vec<u64> = self.cms.ids().into_iter().filter(|id| *id != leader).collect();
        let Some(&id) = followers.choose(rng) else {
            return "no membership change: no follower".into();
        };
        if let Err(err) = self.member(&["remove", "--id", &id.to_string()]).await {
            return format!("membership: CM {id} not removed: {err}");
        }
        let Some(cm) = self.cms.0.get(&id) else { return format!("membership: no CM {id}") };
        if let Err(err) = cm.wipe(true).await {
            return format!("membership: CM {id} removed, not emptied: {err}");
        }
        self.cms.restart(id);
        match self.add_back(id, &cm.addr).await {
            Ok(()) => format!(
                "CM {id} removed, emptied, started with --join and added back in {} ms",
                started.elapsed().as_millis()
            ),
            Err(err) => format!("membership: CM {id} removed and emptied, not added back: {err}"),
        }
    }

    /// `ivy member add` until it succeeds (the node may still be starting, or a
    /// leader change may interrupt the catch-up), within [`ADD_BACK_WITHIN`].
    async fn add_back(&self, id: u64, addr: &str) -> Result<()> {
        let give_up = Instant::now() + ADD_BACK_WITHIN;
        loop {
            match self.member(&["add", "--id", &id.to_string(), "--addr", addr]).await {
                Ok(_) => return Ok(()),
                Err(err) if Instant::now() > give_up => return Err(err),
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
    }

    /// Runs `ivy member ARGS --cm <every node>`.
    async fn member(&self, args: &[&str]) -> Result<String> {
        let cms: Vec<&str> = self.cms.0.values().map(|c| c.addr.as_str()).collect();
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("member").args(args).args(["--cm", &cms.join(",")]).kill_on_drop(true);
        let out = tokio::time::timeout(MEMBER_CALL_TIMEOUT, cmd.output())
            .await
            .map_err(|_| anyhow!("ivy member {args:?}: no answer within {MEMBER_CALL_TIMEOUT:?}"))??;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            bail!("ivy member {args:?}: {}", text.trim());
        }
        Ok(text)
    }

    /// The broken procedure: kill -9 the leader, empty both followers and start
    /// them under their old id and command, and only then the leader. With the
    /// only full copy down, the emptied pair, each a voter of its own
    /// membership, sets up a cluster without the acknowledged writes.
    async fn rejoin_empty(&self, rng: &mut StdRng) -> String {
        let leader = self.leader().await.unwrap_or(1);
        let emptied: Vec<u64> = self.cms.ids().into_iter().filter(|id| *id != leader).collect();
        self.cms.kill(leader).await;
        for id in &emptied {
            if let Some(cm) = self.cms.0.get(id) {
                if let Err(err) = cm.wipe(false).await {
                    tracing::warn!("emptying CM {id}: {err}");
                }
            }
            self.cms.restart(*id);
        }
        let held = ms(rng, 2000, 3000);
        tokio::time::sleep(held).await;
        self.cms.restart(leader);
        format!(
            "UNSAFE: CM {emptied:?} emptied and restarted under their old ids (not removed, not added), CM {leader} \
             down for {} ms",
            held.as_millis()
        )
    }
}

//! Consumer groups with Kafka's classic protocol: the group coordinator's state machine
//! (Empty → PreparingRebalance → CompletingRebalance → Stable), generations, the leader that
//! computes the assignment with the assignor the members agree on, session timeouts, and
//! committed offsets in the broker's [`eddy_broker::OffsetStore`].
//!
//! JoinGroup and SyncGroup calls park until the rebalance they belong to completes: a call
//! waits on the group's change counter and re-checks, with the rebalance deadline as timeout.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use parking_lot::Mutex;
use tokio::sync::watch;

/// Group phases, named as Kafka reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl Phase {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Empty => "Empty",
            Phase::PreparingRebalance => "PreparingRebalance",
            Phase::CompletingRebalance => "CompletingRebalance",
            Phase::Stable => "Stable",
        }
    }
}

pub(crate) struct Member {
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    /// (protocol name, subscription metadata), in the member's preference order.
    protocols: Vec<(String, Bytes)>,
    /// Has (re)joined during the current rebalance.
    joined: bool,
    /// The generation it last joined.
    join_generation: i32,
    last_seen: Instant,
    pub(crate) assignment: Bytes,
}

impl Member {
    pub(crate) fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

pub(crate) struct State {
    pub(crate) phase: Phase,
    pub(crate) generation: i32,
    pub(crate) protocol_type: String,
    pub(crate) protocol: Option<String>,
    pub(crate) leader: Option<String>,
    pub(crate) members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not joined yet.
    pending: HashMap<String, Instant>,
    deadline: Instant,
}

pub(crate) struct Group {
    pub(crate) st: Mutex<State>,
    changed: watch::Sender<u64>,
}

impl Group {
    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// What a JoinGroup call gets.
pub(crate) struct Joined {
    pub(crate) error: i16,
    pub(crate) generation: i32,
    pub(crate) protocol_type: String,
    pub(crate) protocol: Option<String>,
    pub(crate) leader: String,
    pub(crate) member_id: String,
    /// (member id, metadata): only for the leader.
    pub(crate) members: Vec<(String, Bytes)>,
}

impl Joined {
    fn error(code: i16, member_id: String) -> Joined {
        Joined {
            error: code,
            generation: -1,
            protocol_type: String::new(),
            protocol: None,
            leader: String::new(),
            member_id,
            members: Vec::new(),
        }
    }
}

/// A JoinGroup request, as the coordinator needs it.
pub(crate) struct JoinRequest {
    pub(crate) group: String,
    pub(crate) member_id: String,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) session_timeout_ms: i32,
    pub(crate) rebalance_timeout_ms: i32,
    pub(crate) protocol_type: String,
    pub(crate) protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a first join is answered MEMBER_ID_REQUIRED with an id to rejoin with.
    pub(crate) require_member_id: bool,
}

/// All consumer groups of the broker.
#[derive(Default)]
pub(crate) struct Groups {
    groups: Mutex<HashMap<String, Arc<Group>>>,
}

fn code(e: ResponseError) -> i16 {
    e.code()
}

impl Groups {
    pub(crate) fn get(&self, id: &str) -> Option<Arc<Group>> {
        self.groups.lock().get(id).cloned()
    }

    fn get_or_create(&self, id: &str) -> Arc<Group> {
        self.groups
            .lock()
            .entry(id.to_owned())
            .or_insert_with(|| {
                Arc::new(Group {
                    st: Mutex::new(State {
                        phase: Phase::Empty,
                        generation: 0,
                        protocol_type: String::new(),
                        protocol: None,
                        leader: None,
                        members: BTreeMap::new(),
                        pending: HashMap::new(),
                        deadline: Instant::now(),
                    }),
                    changed: watch::channel(0).0,
                })
            })
            .clone()
    }

    /// Ids of the groups with members or state.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.groups.lock().keys().cloned().collect()
    }

    /// Remove an empty group's membership state. Err: it has members.
    pub(crate) fn delete(&self, id: &str) -> Result<bool, i16> {
        let mut groups = self.groups.lock();
        let Some(g) = groups.get(id) else {
            return Ok(false);
        };
        if !g.st.lock().members.is_empty() {
            return Err(code(ResponseError::NonEmptyGroup));
        }
        groups.remove(id);
        Ok(true)
    }

    pub(crate) async fn join(&self, r: JoinRequest) -> Joined {
        if r.group.is_empty() {
            return Joined::error(code(ResponseError::InvalidGroupId), r.member_id);
        }
        if !(1_000..=3_600_000).contains(&r.session_timeout_ms) {
            return Joined::error(code(ResponseError::InvalidSessionTimeout), r.member_id);
        }
        if r.protocol_type.is_empty() || r.protocols.is_empty() {
            return Joined::error(code(ResponseError::InconsistentGroupProtocol), r.member_id);
        }
        let g = self.get_or_create(&r.group);
        let now = Instant::now();
        let member_id = {
            let mut st = g.st.lock();
            if !st.members.is_empty() {
                let all_speak = |name: &str| {
                    st.members
                        .values()
                        .all(|m| m.protocols.iter().any(|(n, _)| n == name))
                };
                if st.protocol_type != r.protocol_type
                    || !r.protocols.iter().any(|(n, _)| all_speak(n))
                {
                    return Joined::error(
                        code(ResponseError::InconsistentGroupProtocol),
                        r.member_id,
                    );
                }
            }
            let member_id = if r.member_id.is_empty() {
                let id = format!("{}-{}", r.client_id, unique_suffix());
                if r.require_member_id {
                    st.pending.insert(id.clone(), now);
                    return Joined::error(code(ResponseError::MemberIdRequired), id);
                }
                id
            } else {
                if !st.members.contains_key(&r.member_id) && !st.pending.contains_key(&r.member_id)
                {
                    return Joined::error(code(ResponseError::UnknownMemberId), r.member_id);
                }
                r.member_id.clone()
            };
            st.pending.remove(&member_id);
            let assignment = st
                .members
                .get(&member_id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default();
            st.members.insert(
                member_id.clone(),
                Member {
                    client_id: r.client_id.clone(),
                    client_host: r.client_host.clone(),
                    session_timeout: Duration::from_millis(r.session_timeout_ms as u64),
                    rebalance_timeout: Duration::from_millis(
                        r.rebalance_timeout_ms.max(r.session_timeout_ms) as u64,
                    ),
                    protocols: r.protocols.clone(),
                    joined: true,
                    join_generation: -1,
                    last_seen: now,
                    assignment,
                },
            );
            st.protocol_type = r.protocol_type.clone();
            if st.phase != Phase::PreparingRebalance {
                start_rebalance(&mut st, now, Some(&member_id));
            }
            member_id
        };
        g.bump();
        let mut changes = g.changed.subscribe();
        loop {
            let deadline = {
                let mut st = g.st.lock();
                let Some(m) = st.members.get(&member_id) else {
                    return Joined::error(code(ResponseError::UnknownMemberId), member_id);
                };
                let mine = m.join_generation;
                if st.phase == Phase::PreparingRebalance
                    && (st.members.values().all(|m| m.joined) || Instant::now() >= st.deadline)
                {
                    complete_join(&mut st);
                    drop(st);
                    g.bump();
                    continue;
                }
                let done = mine == st.generation
                    && matches!(st.phase, Phase::CompletingRebalance | Phase::Stable);
                if done {
                    return joined(&st, &member_id);
                }
                st.deadline
            };
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
    }

    pub(crate) async fn sync(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
    ) -> (i16, Bytes) {
        let Some(g) = self.get(group) else {
            return (code(ResponseError::UnknownMemberId), Bytes::new());
        };
        let mut assignments = Some(assignments);
        let mut changes = g.changed.subscribe();
        loop {
            let deadline = {
                let mut st = g.st.lock();
                let phase = st.phase;
                let gen = st.generation;
                let leader = st.leader.clone();
                let Some(m) = st.members.get_mut(member_id) else {
                    return (code(ResponseError::UnknownMemberId), Bytes::new());
                };
                if generation != gen {
                    return (code(ResponseError::IllegalGeneration), Bytes::new());
                }
                m.last_seen = Instant::now();
                match phase {
                    Phase::PreparingRebalance | Phase::Empty => {
                        return (code(ResponseError::RebalanceInProgress), Bytes::new())
                    }
                    Phase::Stable => return (0, m.assignment.clone()),
                    Phase::CompletingRebalance => {
                        if leader.as_deref() == Some(member_id) {
                            if let Some(a) = assignments.take() {
                                let given: HashMap<String, Bytes> = a.into_iter().collect();
                                for (id, m) in st.members.iter_mut() {
                                    m.assignment = given.get(id).cloned().unwrap_or_default();
                                }
                                st.phase = Phase::Stable;
                                drop(st);
                                g.bump();
                                continue;
                            }
                        }
                    }
                }
                // a follower waits for the leader's assignment, at most a rebalance timeout
                Instant::now() + m.rebalance_timeout
            };
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline.into()) => {
                    return (code(ResponseError::RebalanceInProgress), Bytes::new());
                }
            }
        }
    }

    pub(crate) fn heartbeat(&self, group: &str, generation: i32, member_id: &str) -> i16 {
        let Some(g) = self.get(group) else {
            return code(ResponseError::UnknownMemberId);
        };
        let mut st = g.st.lock();
        let phase = st.phase;
        let gen = st.generation;
        let Some(m) = st.members.get_mut(member_id) else {
            return code(ResponseError::UnknownMemberId);
        };
        m.last_seen = Instant::now();
        if generation != gen {
            return code(ResponseError::IllegalGeneration);
        }
        if phase == Phase::PreparingRebalance {
            return code(ResponseError::RebalanceInProgress);
        }
        0
    }

    /// Remove members; per member, an error code (0: left).
    pub(crate) fn leave(&self, group: &str, members: &[String]) -> Vec<i16> {
        let Some(g) = self.get(group) else {
            return members
                .iter()
                .map(|_| code(ResponseError::UnknownMemberId))
                .collect();
        };
        let mut out = Vec::new();
        {
            let mut st = g.st.lock();
            let mut any = false;
            for id in members {
                if st.members.remove(id).is_some() {
                    out.push(0);
                    any = true;
                } else {
                    out.push(code(ResponseError::UnknownMemberId));
                }
            }
            if any {
                tracing::debug!(group, ?members, "members left");
                members_gone(&mut st, Instant::now());
            }
        }
        g.bump();
        out
    }

    /// Check that a commit comes from a current member (generation >= 0) or from outside any
    /// group generation (a consumer that assigns partitions itself).
    pub(crate) fn check_commit(&self, group: &str, generation: i32, member_id: &str) -> i16 {
        let Some(g) = self.get(group) else {
            return if generation < 0 {
                0
            } else {
                code(ResponseError::IllegalGeneration)
            };
        };
        let mut st = g.st.lock();
        if generation < 0 {
            return if st.members.is_empty() {
                0
            } else {
                code(ResponseError::UnknownMemberId)
            };
        }
        let phase = st.phase;
        let gen = st.generation;
        let Some(m) = st.members.get_mut(member_id) else {
            return code(ResponseError::UnknownMemberId);
        };
        m.last_seen = Instant::now();
        if generation != gen {
            return code(ResponseError::IllegalGeneration);
        }
        if phase == Phase::PreparingRebalance {
            return code(ResponseError::RebalanceInProgress);
        }
        0
    }

    /// Drop members whose session timed out (and ids handed out but never used).
    pub(crate) fn expire(&self) {
        let now = Instant::now();
        let groups: Vec<(String, Arc<Group>)> = self
            .groups
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, g) in groups {
            let changed = {
                let mut st = g.st.lock();
                let preparing = st.phase == Phase::PreparingRebalance;
                let before = st.members.len();
                st.members.retain(|mid, m| {
                    // a member parked in a JoinGroup of this rebalance is alive
                    let alive = (preparing && m.joined) || now < m.last_seen + m.session_timeout;
                    if !alive {
                        tracing::info!(group = %id, member = %mid, "member's session timed out");
                    }
                    alive
                });
                st.pending
                    .retain(|_, at| now < *at + Duration::from_secs(300));
                let removed = st.members.len() != before;
                if removed {
                    members_gone(&mut st, now);
                }
                removed || (preparing && now >= st.deadline)
            };
            if changed {
                g.bump();
            }
        }
    }
}

/// Start a rebalance: every member but `joiner` (the one whose JoinGroup started it) must
/// rejoin before the deadline.
fn start_rebalance(st: &mut State, now: Instant, joiner: Option<&str>) {
    let timeout = st
        .members
        .values()
        .map(|m| m.rebalance_timeout)
        .max()
        .unwrap_or(Duration::from_secs(30));
    st.phase = Phase::PreparingRebalance;
    st.deadline = now + timeout;
    for (id, m) in st.members.iter_mut() {
        m.joined = Some(id.as_str()) == joiner;
    }
}

/// After members went away (left or timed out).
fn members_gone(st: &mut State, now: Instant) {
    if st.members.is_empty() {
        st.phase = Phase::Empty;
        st.leader = None;
        st.protocol = None;
        st.generation += 1;
        return;
    }
    match st.phase {
        Phase::Stable | Phase::CompletingRebalance => start_rebalance(st, now, None),
        Phase::PreparingRebalance | Phase::Empty => {}
    }
}

/// Close the join phase: drop members that did not rejoin, bump the generation, pick the
/// protocol and the leader.
fn complete_join(st: &mut State) {
    st.members.retain(|_, m| m.joined);
    if st.members.is_empty() {
        st.phase = Phase::Empty;
        st.leader = None;
        st.generation += 1;
        return;
    }
    st.generation += 1;
    let leader = match &st.leader {
        Some(l) if st.members.contains_key(l) => l.clone(),
        _ => st.members.keys().next().cloned().unwrap_or_default(),
    };
    // the leader's most preferred protocol that every member speaks
    let protocol = st.members[&leader]
        .protocols
        .iter()
        .map(|(n, _)| n.clone())
        .find(|n| {
            st.members
                .values()
                .all(|m| m.protocols.iter().any(|(x, _)| x == n))
        });
    st.protocol = protocol;
    st.leader = Some(leader);
    let gen = st.generation;
    let now = Instant::now();
    for m in st.members.values_mut() {
        m.join_generation = gen;
        m.joined = false;
        // as Kafka: a member's session starts over when the join completes (it may have
        // waited in JoinGroup longer than its session timeout)
        m.last_seen = now;
    }
    st.phase = Phase::CompletingRebalance;
}

fn joined(st: &State, member_id: &str) -> Joined {
    let leader = st.leader.clone().unwrap_or_default();
    let protocol = st.protocol.clone();
    let members = if leader == member_id {
        let p = protocol.clone().unwrap_or_default();
        st.members
            .iter()
            .map(|(id, m)| (id.clone(), m.metadata(&p)))
            .collect()
    } else {
        Vec::new()
    };
    Joined {
        error: 0,
        generation: st.generation,
        protocol_type: st.protocol_type.clone(),
        protocol,
        leader,
        member_id: member_id.to_owned(),
        members,
    }
}

/// A suffix no other member id of this broker's lifetime has (time of start + a counter).
fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static START: OnceLock<u128> = OnceLock::new();
    static N: AtomicU64 = AtomicU64::new(0);
    let start = START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    });
    format!("{start:x}-{}", N.fetch_add(1, Ordering::Relaxed))
}

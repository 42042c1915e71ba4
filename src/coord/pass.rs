//! What a pass does with the shared state (SPEC §12), once its own state
//! is committed: publish the decisions that reset an entry, claim in the
//! vault each slot claimed here, give up the runs another runner won, and
//! take over the expired claims and report their runs.

use std::collections::HashMap;

use jiff::Timestamp;

use super::{Claim, Claimed as Won, Coord, Shared};
use crate::engine::{Pass, Runtime, Verdict};
use crate::outbox::Open;
use crate::recover;

/// What a pass owes the shared state once its own is committed.
#[derive(Default)]
pub struct Sharing {
    /// Decisions that reset a job's entry: (job, entry, state note).
    pub publish: Vec<(String, crate::state::JobState, Option<Shared>)>,
    /// Runs claimed here that must be claimed in the vault too.
    pub claims: Vec<Pending>,
}

/// A run claimed locally, still to be claimed in the vault.
pub struct Pending {
    /// Its place in `Pass::claimed`.
    pub index: usize,
    pub slot: Timestamp,
    /// `checked_through` before the decision, restored if the vault could
    /// not be asked (the slot stays due).
    pub before: Option<Timestamp>,
    pub theirs: Option<Shared>,
}

/// Tells the vault what the pass decided (SPEC §12): publishes reset
/// entries, claims each locally claimed slot in the vault and gives up
/// the runs whose claim another runner won (their job locks released,
/// their `running` entries cleared).
pub fn share(rt: &Runtime, coord: &Coord, pass: &mut Pass, sharing: Sharing) {
    for (path, entry, theirs) in &sharing.publish {
        coord.publish(path, entry, theirs.as_ref());
    }
    // (index, why, checked_through to restore)
    let mut given_up: Vec<(usize, String, Option<Timestamp>)> = Vec::new();
    for p in sharing.claims {
        let Some(claimed) = pass.claimed.get_mut(p.index) else {
            continue;
        };
        let (schedule, zone) = (
            claimed.job.schedule_text.clone(),
            claimed.job.zone.name.clone(),
        );
        let mut theirs = p.theirs;
        // An expired claim first: taken over and its run reported, then
        // the slot claimed from what the note says after that.
        let mut tries = 0;
        let outcome = loop {
            tries += 1;
            match coord.claim(&claimed.info, p.slot, &schedule, &zone, theirs.take()) {
                Ok(Won::Orphan(shared)) if tries < 3 => match take_over_one(rt, coord, &shared) {
                    Ok(()) => match coord.read(&claimed.info.job_path) {
                        Ok(now) => theirs = now,
                        Err(e) => break Err(e.to_string()),
                    },
                    Err(why) => break Err(why),
                },
                Ok(Won::Orphan(_)) => {
                    break Err("the run of an expired claim is not reported yet".to_string());
                }
                Ok(other) => break Ok(other),
                Err(e) => break Err(e.to_string()),
            }
        };
        match outcome {
            Ok(Won::Won { lease }) => {
                lease.start();
                claimed.lease = Some(lease);
            }
            Ok(Won::Lost(why)) => given_up.push((p.index, why, None)),
            Ok(Won::Orphan(_)) => {}
            Err(e) => given_up.push((
                p.index,
                format!("cannot claim it in the vault: {e}"),
                p.before,
            )),
        }
    }
    if given_up.is_empty() {
        return;
    }
    // Cleared under the state lock, then the claims (and their job locks)
    // dropped.
    let mut dropped = Vec::new();
    given_up.sort_by_key(|(index, ..)| std::cmp::Reverse(*index));
    for (index, why, restore) in given_up {
        let claimed = pass.claimed.remove(index);
        if let Some(looked) = pass
            .looked
            .iter_mut()
            .find(|l| l.path == claimed.info.job_path)
        {
            looked.verdict = Verdict::Skipped(why);
        }
        dropped.push((claimed, restore));
    }
    let cleared = rt.store.lock().and_then(|mut locked| {
        for (claimed, restore) in &dropped {
            if let Some(entry) = locked.state.jobs.get_mut(&claimed.info.job_path) {
                if entry
                    .running
                    .as_ref()
                    .is_some_and(|r| r.run_id == claimed.info.run_id)
                {
                    entry.running = None;
                }
                if let Some(before) = restore {
                    entry.checked_through = *before;
                }
            }
        }
        locked.commit()
    });
    if let Err(e) = cleared {
        // The next pass finds the `running` entries with free locks and
        // clears them (claimed runs get no note from it).
        log::warn!("could not clear the runs other runners claimed: {e}");
    }
}

/// Takes over every expired claim (SPEC §12) no run of this process
/// holds, and reports its run.
pub fn take_over_expired(
    rt: &Runtime,
    coord: &Coord,
    shared: &HashMap<String, Shared>,
    pass: &Pass,
) {
    let now = rt.clock.now();
    for theirs in shared.values() {
        let Some(claim) = &theirs.claim else { continue };
        if !claim.expired(now)
            || crate::state::is_live_here(&claim.run_id)
            || pass
                .claimed
                .iter()
                .any(|c| c.info.job_path == theirs.job_path)
        {
            continue;
        }
        if let Err(why) = take_over_one(rt, coord, theirs) {
            log::warn!("{}: {why}", theirs.job_path);
        }
    }
}

/// Takes over the expired claim of one job's state note and reports its
/// run, then clears it. `Err` when the run could not be reported: the
/// claim is given back as it was, for the next pass to try again.
fn take_over_one(rt: &Runtime, coord: &Coord, theirs: &Shared) -> Result<(), String> {
    match coord.take_over(theirs) {
        Ok(Some((claim, updated_at))) => {
            if report_orphan(rt, &theirs.job_path, &claim) {
                coord.release(&theirs.job_path, &claim.run_id, updated_at);
                Ok(())
            } else {
                coord.give_back(&theirs.job_path, &claim, &updated_at);
                Err(format!(
                    "the run {} of an expired claim could not be reported yet",
                    claim.run_id
                ))
            }
        }
        // Not expired any more, or gone: nothing to report.
        Ok(None) => Ok(()),
        Err(e) => Err(format!("cannot take over an expired claim: {e}")),
    }
}

/// Reports the run of a claim taken over: its own note if this host's
/// outbox holds it, nothing if the vault has it already, else an
/// `interrupted` note. `false` when it cannot tell (the vault did not
/// answer): the claim is then left to expire again.
fn report_orphan(rt: &Runtime, job_path: &str, claim: &Claim) -> bool {
    let run_id = &claim.run_id;
    if rt.outbox.read(run_id).is_some() {
        let entry = rt.outbox.path_for(run_id);
        return !matches!(
            rt.outbox.deliver_entry(rt.vault.as_ref(), &entry, &Open),
            crate::outbox::Delivery::Failed(_)
        );
    }
    match recover::delivered(rt.vault.as_ref(), &claim.output_path, run_id) {
        Ok(Some(_)) => return true,
        Ok(None) => {}
        Err(e) => {
            log::warn!("{job_path}: cannot tell whether run {run_id} left a note ({e}); later");
            return false;
        }
    }
    let now = rt.clock.now();
    let reason = format!(
        "interrupted: its runner {} stopped before the run finished (its claim ran out at {:.0})",
        claim.host, claim.lease_until
    );
    let note = crate::note::interrupted(&claim.info(job_path), &reason, now);
    log::warn!("{job_path}: took over the expired claim of run {run_id}; reporting it interrupted");
    match rt.outbox.spool(job_path, false, &note, now, false) {
        Ok(entry) => {
            let _ = rt.outbox.deliver_entry(rt.vault.as_ref(), &entry, &Open);
        }
        Err(e) => {
            log::error!("{job_path}: could not queue the interrupted note of run {run_id}: {e}");
            if crate::deliver::deliver(rt.vault.as_ref(), &note, None).is_err() {
                return false;
            }
        }
    }
    rt.notifier.send(crate::alert::Message {
        notice: crate::health::Notice::Failed,
        job_path: job_path.to_string(),
        run_id: run_id.clone(),
        reason,
        output_path: format!("{}.failed", claim.output_path),
        cost_usd: None,
        note: crate::alert::cut(&note.content, crate::alert::STDIN_CAP),
    });
    true
}

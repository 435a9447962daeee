using LiveMigration.Coordinator.Migration;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using static LiveMigration.Coordinator.Tests.Simulation.SagaSimulator;
using static LiveMigration.Shared.Migration.MigrationStep;

namespace LiveMigration.Coordinator.Tests.Simulation;

/// <summary>
/// A bug the simulation found, with a minimal deterministic reproduction (a hand-written scenario on the simulator)
/// and a rule that says whether a failing seed of the sweep is explained by it. Set <see cref="Fixed"/> once the
/// saga is fixed: the reproduction then has to pass, and the sweep stops excusing its seeds.
/// </summary>
public sealed record KnownBug(
    string Id,
    string Title,
    string Invariant,
    string Reproduction,
    Func<SimResult> Reproduce,
    Func<SimResult, bool> Explains,
    bool Fixed = false);

/// <summary>The bugs found so far. The sweep reports their seeds apart from new failures, which fail it.</summary>
public static class KnownBugs
{
    private static readonly HashSet<string> DataHarm =
        ["rollback-deletes-running-destination", "blind-rollback-after-switch", "delete-open-chain", "lost-write"];

    /// <summary>The event that started the rollback, and the failure (if any) right before it in the same decision.</summary>
    private static (RollbackStarted? Rollback, StepFailed? Cause) RollbackCause(SimResult r)
    {
        var journal = r.Journal;
        for (var i = journal.Count - 1; i >= 0; i--)
            if (journal[i] is RollbackStarted rb)
                return (rb, i > 0 ? journal[i - 1] as StepFailed : null);
        return (null, null);
    }

    public static readonly IReadOnlyList<KnownBug> All =
    [
        new("B1-switch-failure-rolls-back",
            "A failed switch (Pivot / LiveSnapshotToDestination) is assumed not to have happened: the disk is rolled back and its destination deleted, though QEMU may already write there",
            "rollback-deletes-running-destination",
            "pre-copy, 1 disk: Pivot completes in QEMU, then QEMU dies before the HSM answers (VM_NOT_RUNNING); the saga rolls back, CancelReplication's VM_NOT_RUNNING counts as 'nothing to undo', DeleteDestinationImage deletes the chain the VM's record names",
            () => Scenario(MigrationStrategy.PreCopy, sim => sim.Script[(Pivot, 1)] = Fault.DoneThenVmDies),
            r => DataHarm.Contains(r.Violation!.Invariant) && !r.Notes.Contains("pivot-landed-late") && RollbackCause(r) is { Rollback.Kind: TerminationKind.Failure, Cause: { } f } && MigrationPlan.IsSwitch(f.Step),
            Fixed: true),

        new("B1b-live-snapshot-failure-rolls-back",
            "Post-copy flavour of B1: LiveSnapshotToDestination took effect but its read-back failed (QMP_ERROR); the rollback deletes the new leaf the VM writes on",
            "rollback-deletes-running-destination",
            "post-copy, 1 disk: the live snapshot is taken, the HSM answers QMP_ERROR; RollbackSteps = [DeleteDestinationImage] deletes Dst:new while the VM writes on it (the guest's next write is lost)",
            () => Scenario(MigrationStrategy.PostCopy, sim => sim.Script[(LiveSnapshotToDestination, 1)] = Fault.DoneThenQmpError),
            _ => false,
            Fixed: true),

        new("B1c-unknown-switch-outcome-not-asked",
            "DESIGN §7.4: after a switch fails with an unknown outcome (TIMEOUT/IO_ERROR three times), the saga rolls back blind instead of asking where the drive runs",
            "blind-rollback-after-switch",
            "pre-copy, 1 disk: Pivot attempts 1-3 each answer a transient failure without effect; budget spent, the saga deletes the destination without any probe (harmless here only by luck)",
            () => Scenario(MigrationStrategy.PreCopy, sim =>
            {
                for (var attempt = 1; attempt <= 3; attempt++) sim.Script[(Pivot, attempt)] = Fault.FailTransient;
            }),
            _ => false,
            Fixed: true),

        new("B2-terminate-rolls-back-a-switch-awaiting-retry",
            "Cancel (or another disk's failure) while a switch waits for its retry: DecideCancel only refuses when the switch is InFlight, and Terminate rolls back any disk not InFlight, so a pivot that did happen (answer TIMEOUT) is undone by deleting the destination",
            "rollback-deletes-running-destination",
            "pre-copy, 1 disk: Pivot takes effect but answers TIMEOUT (transient) → RetryScheduled; the operator cancels during the 1 s wait; Terminate → CancelReplication (no job: ok) → DeleteDestinationImage of the chain the VM runs on",
            () => Scenario(MigrationStrategy.PreCopy, sim =>
            {
                sim.Script[(Pivot, 1)] = Fault.DoneThenTimeout;
                sim.AfterEvent = (s, e) =>
                {
                    if (e is RetryScheduled { Step: Pivot }) s.OperatorIn(0.1, new CancelMigration(s.Id));
                };
            }),
            r => DataHarm.Contains(r.Violation!.Invariant),
            Fixed: true),

        new("B3-early-retry-timer-stalls",
            "A RetryDue that finds nothing due yet persists nothing, and MigrationActor.Handle then skips Dispatch: the single retry timer is not re-armed and the migration waits forever",
            "stall",
            "pre-copy, 1 disk: CloneImageStructure fails transiently → RetryScheduled (due +1 s); the retry timer fires 0.1 s later by the saga's wall clock (clock step / timer jitter); Decide returns nothing; no step in flight, no timer",
            () => Scenario(MigrationStrategy.PreCopy, sim =>
            {
                sim.Script[(CloneImageStructure, 1)] = Fault.FailTransient;
                sim.AfterEvent = (s, e) =>
                {
                    if (e is RetryScheduled) s.EarlyRetryTimerIn(0.1);
                };
            }),
            r => r.Violation!.Invariant == "stall" && r.Notes.Contains("early-retry-timer-ignored"),
            Fixed: true),

        new("B4-abandon-after-pivot-leaves-illegal-leaf",
            "Abandon is accepted for a pre-copy disk that pivoted but whose MarkDestinationLeafLegal never succeeded: the VM is left running on an ILLEGAL destination leaf that a restart refuses (DESIGN §7.2)",
            "abandoned-on-illegal-chain",
            "pre-copy, 1 disk: Pivot ok; MarkDestinationLeafLegal fails transiently 3 times → Suspended; the operator abandons; the drive runs on Dst:leaf, ILLEGAL",
            () => Scenario(MigrationStrategy.PreCopy, sim =>
            {
                for (var attempt = 1; attempt <= 3; attempt++) sim.Script[(MarkDestinationLeafLegal, attempt)] = Fault.FailTransient;
            }, new Chaos(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, MaxResumes: 0)),
            r => r.Violation!.Invariant == "abandoned-on-illegal-chain",
            Fixed: true),

        new("B5-abandon-during-rollback-leaves-mirror",
            "Abandon of a disk whose rollback could not cancel its mirror ends the migration with the mirror still running into the (ILLEGAL) destination leaf; nothing will stop or clean it",
            "leftover-mirror",
            "pre-copy, 1 disk: cancel after StartReplication; CancelReplication fails 3 times (permanent QMP_ERROR/JOB_FAILED are retried in a rollback) → Suspended; the operator abandons; the mirror runs on",
            () => Scenario(MigrationStrategy.PreCopy, sim =>
            {
                for (var attempt = 1; attempt <= 3; attempt++) sim.Script[(CancelReplication, attempt)] = Fault.FailPermanent;
                sim.AfterEvent = (s, e) =>
                {
                    if (e is StepCompleted { Step: StartReplication }) s.OperatorIn(0.01, new CancelMigration(s.Id));
                };
            }, new Chaos(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, MaxResumes: 0)),
            r => r.Violation!.Invariant == "leftover-mirror" && r.Ending.StartsWith("abandoned"),
            Fixed: true),

        new("B6-rollback-hides-a-suspended-disk",
            "RollbackStarted sets the status to RollingBack although another disk is Suspended: when the rolling-back disks finish, the suspended one keeps the migration unfinished, yet Resume and Abandon are refused (NOT_SUSPENDED): stuck for good",
            "stall",
            "pre-copy, 2 disks, parallel 2: d0 pivots, its MarkDestinationLeafLegal fails 3 times → MigrationSuspended; then d1's mirror fails (JOB_FAILED) → RollbackStarted (status RollingBack); d1 rolls back and finishes; d0 stays Suspended under a RollingBack status",
            () =>
            {
                var sim = new SagaSimulator(1, Chaos.None, MigrationStrategy.PreCopy, disks: 2, parallel: 2);
                var slow = sim.World.Disks.Keys.Last();
                sim.MirrorReadyAfter = d => d.Image == slow ? 10_000 : 1;
                for (var attempt = 1; attempt <= 3; attempt++) sim.Script[(MarkDestinationLeafLegal, attempt)] = Fault.FailTransient;
                sim.AfterEvent = (s, e) =>
                {
                    if (e is MigrationSuspended) s.FailMirrorIn(1, slow);
                };
                sim.Start();
                return sim.Drain();
            },
            r => r.Violation!.Invariant == "stall" && r.Violation.Detail.StartsWith("rolling back") && r.Violation.Detail.Contains(" Suspended "),
            Fixed: true),

        new("B7-failed-step-starts-its-rollback-twice",
            "Draft.Failed calls Terminate (which already begins this disk's rollback) and then BeginRollback again: the first rollback step is journaled twice with the same operation id (double StepStarted, double timing); harmless to the hosts, wrong in the journal and the views",
            "duplicate-step-started",
            "pre-copy, 1 disk: StartReplication fails permanently (QMP_ERROR) → RollbackStarted, StepStarted CancelReplication:1, StepStarted CancelReplication:1",
            () => Scenario(MigrationStrategy.PreCopy, sim => sim.Script[(StartReplication, 1)] = Fault.FailPermanent,
                Chaos.None with { StrictJournal = true }),
            r => r.Violation!.Invariant == "duplicate-step-started",
            Fixed: true),

        new("B8-probe-races-a-pivot-still-completing",
            "ProbeSwitch answers OnSource while the timed-out block-job-complete is still pending in QEMU; the pivot lands after the probe, CancelReplication then finds no job and answers ok, and DeleteDestinationImage deletes the chain QEMU now writes on. Also (seed 33654): the late pivot is never recorded, so after QEMU dies the host's record still names the source leaf and a restart runs on stale data",
            "rollback-deletes-running-destination",
            "pre-copy, 1 disk: Pivot issues block-job-complete but the job does not end within the HSM's command timeout (TIMEOUT, transient); ProbeSwitch reads QEMU on the source → OnSource → RollbackStarted; the pivot lands; CancelReplication: 'no mirror: nothing to cancel' (ok); DeleteDestinationImage of the running chain",
            () => Scenario(MigrationStrategy.PreCopy, sim =>
            {
                sim.Script[(Pivot, 1)] = Fault.TimeoutThenPivotLater;
                sim.AfterEvent = (s, e) =>
                {
                    if (e is StepCompleted { Step: ProbeSwitch } probed) s.LandPivotIn(0, probed.Image);
                };
            }),
            r => (DataHarm.Contains(r.Violation!.Invariant) || r.Violation.Invariant is "record-disagrees" or "completed-not-on-destination" or "rolled-back-not-on-source")
                 && r.Notes.Contains("pivot-landed-late"),
            Fixed: true),

        new("H1-stale-command-redone-after-host-restart",
            "Host side, not the decider: a late copy of an old command reaches an SPM/HSM that restarted and forgot its in-memory OperationLedger; it is executed again (CloneImageStructure after the rollback deleted the destination) and leaves volumes behind, or (a late switch) leaves the host's record showing a switch begun (DESIGN §7.6/§7.7: fencing by owner/generation, durable idempotency)",
            "leftover-volumes",
            "seed 571 with LSM_SIM_CHAOS=noswitch: rollback done, SPM restarts, CloneImageStructure:d0/1 delivered late recreates Dst:b0, Dst:leaf ILLEGAL",
            () => new SagaSimulator(571, new Chaos(SwitchFaults: false, KillVm: 0), trace: true).Run(),
            r => r.Notes.Contains("late-command-reexecuted")
                 && (r.Violation!.Invariant is "leftover-volumes" or "leftover-mirror" or "stale-switch-record" or "record-disagrees" or "rolled-back-not-on-source"
                     || DataHarm.Contains(r.Violation.Invariant) && FinishedBefore(r)),
            Fixed: true),

        new("H1b-late-switch-leaves-a-switch-begun",
            "The HSM half of H1: a late copy of a switch that took effect long ago (the migration completed) reaches a restarted HSM, which writes its intent (a switch begun) before asking QEMU; the read-back fails and nobody will probe any more: the record shows a switch in doubt forever and `vm start` refuses the disk (STALE_RECORD). Fixed in VmCatalog: a switch to the leaf the record names already is no switch begun (CatalogedVm.WithPending / PendingOf). The sweep's seeds (e.g. 245, 572, 1613 by default; 106, 408 heavy) were this, and the sim's hosts also wrote the intent before checking QEMU runs, which the real HSM does not (BeginSwitchAsync): mirrored now",
            "stale-switch-record",
            "post-copy, 1 disk, completed; the HSM restarts; an old copy of LiveSnapshotToDestination:1 arrives, QEMU answers 'taken already' but the read-back fails (QMP_ERROR); the record keeps a switch to Dst:new begun",
            () => Scenario(MigrationStrategy.PostCopy, sim =>
            {
                sim.AfterEvent = (s, e) =>
                {
                    if (e is not MigrationCompleted) return;
                    var image = s.World.Disks.Keys.Single();
                    s.Script[(LiveSnapshotToDestination, 1)] = Fault.DoneThenQmpError;
                    s.RestartHostIn(5, HostRole.Hsm);
                    s.ReplayLateIn(10, LiveSnapshotToDestination, image);
                };
            }),
            r => r.Violation!.Invariant == "stale-switch-record" && r.Notes.Contains("late-command-reexecuted"),
            Fixed: true),

        new("H1c-late-pivot-after-completion",
            "Pre-copy flavour of H1b: a late Pivot after the migration completed, with QEMU's read-back failing (DONE, then QMP_ERROR), left the record showing a pivot to Dst:leaf begun",
            "stale-switch-record",
            "pre-copy, 1 disk, completed; the HSM restarts; an old copy of Pivot:1 arrives: 'pivoted already' but QMP_ERROR; the record keeps a pivot to Dst:leaf begun",
            () => Scenario(MigrationStrategy.PreCopy, sim =>
            {
                sim.AfterEvent = (s, e) =>
                {
                    if (e is not MigrationCompleted) return;
                    var image = s.World.Disks.Keys.Single();
                    s.Script[(Pivot, 1)] = Fault.DoneThenQmpError;
                    s.RestartHostIn(5, HostRole.Hsm);
                    s.ReplayLateIn(10, Pivot, image);
                };
            }),
            r => false,
            Fixed: true),

        new("H1d-refused-late-switch-leaves-a-switch-begun",
            "A late switch that QEMU refuses (no mirror to pivot) while QEMU runs with no block job wrote its intent first and left it: nothing can land any more, yet the record shows a switch begun; when the migration ends without probing again (here: rolled back after a cancel), the VM is refused a start. Fixed in HsmActor.SettlingOnFailureAsync (and SimWorld.SettledSwitch): such a refusal settles the intent from what QEMU runs at once; with QEMU gone or a job still converging the intent stays for the probe",
            "stale-switch-record",
            "pre-copy, 1 disk: Pivot:1 fails transiently (not done); the operator cancels during the retry wait; the probe finds the source, CancelReplication ends the mirror; the HSM restarts; the old Pivot:1 arrives before DeleteDestinationImage writes the ended mark: intent written, NO_SUCH_JOB; the migration ends rolled back with the record showing a pivot begun",
            () => Scenario(MigrationStrategy.PreCopy, sim =>
            {
                sim.Script[(Pivot, 1)] = Fault.FailTransient;
                sim.AfterEvent = (s, e) =>
                {
                    if (e is RetryScheduled { Step: Pivot }) s.OperatorIn(0.1, new CancelMigration(s.Id));
                    if (e is StepCompleted { Step: CancelReplication } cancelled)
                    {
                        s.RestartHostIn(0, HostRole.Hsm);
                        s.ReplayLateIn(0, Pivot, cancelled.Image);
                    }
                };
            }),
            r => false,
            Fixed: true),

        new("B10-late-switch-during-a-suspended-rollback",
            "A rollback suspended at its delete (the destination failed it, so the domain's ended mark was never written) waits for an operator; meanwhile a late copy of the switch reaches a restarted HSM that forgot answering it and takes effect. Abandon (or resume) then deleted the destination on the probe read before the pause: the chain the VM now writes on (heavy seed 66750). Fixed in MigrationDecider.ProbesBeforeUndo: undoing after a pause reads the drive again first",
            "rollback-deletes-running-destination",
            "post-copy, 1 disk: LiveSnapshotToDestination:1 fails without effect, the probe finds the source, DeleteDestinationImage fails 3 times (not done) → suspended; the HSM restarts, the old LiveSnapshotToDestination:1 arrives and takes effect; the operator abandons → DeleteDestinationImage of Dst:new",
            () => LateSwitchWhileSuspended(MigrationStrategy.PostCopy, id => new AbandonMigration(id)),
            r => DataHarm.Contains(r.Violation!.Invariant) && r.Notes.Contains("late-command-reexecuted")
                 && r.Journal.Any(e => e is MigrationSuspended) && r.Journal.Any(e => e is StepCompleted { Step: ProbeSwitch }),
            Fixed: true),

        new("B10b-late-switch-during-a-suspended-rollback-resumed",
            "B10 with a resume instead of an abandon: the resumed delete removed the destination the late live snapshot had put the VM on",
            "rollback-deletes-running-destination",
            "as B10, the operator resumes instead",
            () => LateSwitchWhileSuspended(MigrationStrategy.PostCopy, id => new ResumeMigration(id)),
            _ => false,
            Fixed: true),

        new("B10c-late-pivot-during-a-suspended-rollback",
            "Pre-copy flavour of B10: the rollback's mirror cancel fails until it suspends (the mirror still runs); a late pivot lands at a restarted HSM; the resumed cancel finds no job ('nothing to undo') and the delete removes the chain the VM was pivoted to",
            "rollback-deletes-running-destination",
            "pre-copy, 1 disk: Pivot:1 fails without effect, the probe finds the source, CancelReplication fails 3 times (not done) → suspended; the HSM restarts, the old Pivot:1 arrives and pivots; the operator resumes → CancelReplication: NO_SUCH_JOB → DeleteDestinationImage of Dst:leaf",
            () => LateSwitchWhileSuspended(MigrationStrategy.PreCopy, id => new ResumeMigration(id)),
            _ => false,
            Fixed: true),

        new("B11-abandon-of-a-switch-in-doubt-leaves-an-illegal-leaf",
            "Abandon of a pre-copy disk suspended because its probe could not tell where the drive runs (the VM died meanwhile) left the disk as its host recorded it without asking again: the pivot had happened, the record names the destination leaf, and that leaf stays ILLEGAL, so the VM can never start again (heavy-durable seeds 17399, 83368, 100957, 107337, 132003). Fixed in DecideAbandon: the abandon probes once more; a pivot found done gets its leaf marked LEGAL",
            "abandoned-on-illegal-chain",
            "pre-copy, 1 disk: Pivot:1 takes effect but answers TIMEOUT; ProbeSwitch 1-2 fail transiently, 3 answers VM_NOT_RUNNING (QEMU died) → suspended at ProbeSwitch; the operator abandons → Abandoned at once, Dst:leaf ILLEGAL",
            () => Scenario(MigrationStrategy.PreCopy, sim =>
            {
                sim.Script[(Pivot, 1)] = Fault.DoneThenTimeout;
                sim.Script[(ProbeSwitch, 1)] = Fault.FailTransient;
                sim.Script[(ProbeSwitch, 2)] = Fault.FailTransient;
                sim.Script[(ProbeSwitch, 3)] = Fault.DoneThenVmDies;
                sim.AfterEvent = (s, e) =>
                {
                    if (e is MigrationSuspended { Step: ProbeSwitch }) s.OperatorIn(5, new AbandonMigration(s.Id));
                };
            }),
            r => false,
            Fixed: true),

        new("H2-late-delete-after-a-roll-forward",
            "A rollback's delete, sent and failed without effect, can be followed by a roll forward (B10: the probe after the pause found the drive on the destination). A late copy of that delete at an SPM that restarted and forgot answering it then deletes the volumes the migration owns on the destination: the disk's whole chain there, once its VM is stopped (a running QEMU's locks refuse it)",
            "delete-open-chain",
            "post-copy, 1 disk: B10b until completed (rolled forward after a resume); the VM stops, the SPM restarts, the old DeleteDestinationImage:1 arrives and deletes Dst:*",
            () => Scenario(MigrationStrategy.PostCopy, sim =>
            {
                sim.World.FencesSwitches = false; // B10b's world: the late switch lands
                sim.Script[(LiveSnapshotToDestination, 1)] = Fault.FailTransient;
                for (var attempt = 1; attempt <= 3; attempt++) sim.Script[(DeleteDestinationImage, attempt)] = Fault.FailTransient;
                sim.AfterEvent = (s, e) =>
                {
                    if (e is MigrationSuspended { Step: DeleteDestinationImage } suspended)
                    {
                        s.RestartHostIn(1, HostRole.Hsm);
                        s.ReplayLateIn(2, LiveSnapshotToDestination, suspended.Image);
                        s.OperatorIn(30, new ResumeMigration(s.Id));
                    }
                    if (e is MigrationFailed or MigrationCompleted)
                    {
                        s.KillVmIn(1);
                        s.RestartHostIn(2, HostRole.Spm);
                        s.ReplayLateIn(3, DeleteDestinationImage, s.World.Disks.Keys.Single());
                    }
                };
            }),
            _ => false,
            Fixed: true),

        new("B12-late-switch-before-the-rollback-delete",
            "A late copy of the switch lands at a restarted HSM between the probe that saw the source and the rollback's delete: the delete (mark first) meets the new leaf open in QEMU and deletes nothing (VOLUME_IN_USE); the saga decided the delete again and again while the VM wrote there (the QEMU's lock refused each; with QEMU dead the next would have deleted), and the ended mark left behind refused the roll forward a later probe would lead to (MIGRATION_ENDED). Fixed: a delete refused VOLUME_IN_USE on a disk whose switch was sent probes first (a pre-copy after cancelling its mirror again), and the first storage step of the roll forward takes back a mark over a switched leaf still there",
            "rollback-deletes-running-destination",
            "post-copy, 1 disk: LiveSnapshotToDestination:1 fails without effect; the probe finds the source; the HSM restarts and the old LiveSnapshotToDestination:1 takes effect before DeleteDestinationImage:1 arrives",
            () => Scenario(MigrationStrategy.PostCopy, sim =>
            {
                sim.World.FencesSwitches = false; // the late switch lands (a record that keeps no fence)
                sim.Script[(LiveSnapshotToDestination, 1)] = Fault.FailTransient;
                sim.AfterEvent = (s, e) =>
                {
                    if (e is not StepCompleted { Step: ProbeSwitch, Operation.Attempt: 1 } probed) return;
                    s.RestartHostIn(0, HostRole.Hsm);
                    s.ReplayLateIn(0, LiveSnapshotToDestination, probed.Image);
                };
            }),
            _ => false,
            Fixed: true),
    ];

    /// <summary>
    /// B10: the switch fails without effect, the probe sees the source, the rollback's delete fails until it suspends
    /// (nothing marked on the destination), the HSM restarts and an old copy of the switch lands; then the operator acts.
    /// </summary>
    /// <param name="fences">Whether the HSM's record fences the switch its probe answered (it does; the bug's world did not).</param>
    internal static SimResult LateSwitchWhileSuspended(MigrationStrategy strategy, Func<MigrationId, IMigrationCommand> then, bool fences = false) =>
        Scenario(strategy, sim =>
        {
            sim.World.FencesSwitches = fences;
            var switchStep = strategy == MigrationStrategy.PreCopy ? Pivot : LiveSnapshotToDestination;
            // A pre-copy's rollback cancels the mirror first: suspended there, the mirror still runs and a late pivot can land.
            var undo = strategy == MigrationStrategy.PreCopy ? CancelReplication : DeleteDestinationImage;
            sim.Script[(switchStep, 1)] = Fault.FailTransient;
            for (var attempt = 1; attempt <= 3; attempt++) sim.Script[(undo, attempt)] = Fault.FailTransient;
            sim.AfterEvent = (s, e) =>
            {
                if (e is not MigrationSuspended suspended || suspended.Step != undo) return;
                s.RestartHostIn(1, HostRole.Hsm);
                s.ReplayLateIn(2, switchStep, suspended.Image);
                s.OperatorIn(30, then(s.Id));
            };
        });

    /// <summary>The migration had ended before the violation: only stale commands acted then.</summary>
    private static bool FinishedBefore(SimResult r)
    {
        if (r.Journal.Count == 0) return false;
        var end = r.Journal.LastOrDefault(e => e is MigrationCompleted or MigrationFailed or MigrationCancelled or MigrationAbandoned);
        return end is not null && end.At - r.Journal[0].At < r.Violation!.At;
    }

    public static KnownBug? Classify(SimResult result) =>
        result.Failed ? All.FirstOrDefault(b => !b.Fixed && b.Explains(result)) : null;

    /// <summary>One migration of one disk, nothing random going wrong, what <paramref name="arrange"/> sets up; run to its end.</summary>
    private static SimResult Scenario(MigrationStrategy strategy, Action<SagaSimulator> arrange, Chaos? chaos = null)
    {
        var sim = new SagaSimulator(1, chaos ?? Chaos.None, strategy, disks: 1, parallel: 1);
        arrange(sim);
        sim.Start();
        return sim.Drain();
    }
}

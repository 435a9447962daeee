using System.Security.Cryptography;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;

namespace LiveMigration.Coordinator.Migration;

/// <summary>What a command leads to: events to persist (none for a duplicate or stale result), or a refusal that changes nothing.</summary>
public sealed record Decision(ValueList<IMigrationEvent> Events, string? RefusalCode = null, string? RefusalMessage = null)
{
    public bool Refused => RefusalCode is not null;
    public static Decision Accept(IEnumerable<IMigrationEvent> events) => new(events.ToValueList());
    public static readonly Decision Nothing = new(ValueList<IMigrationEvent>.Empty);
    public static Decision Refuse(string code, string message) => new(ValueList<IMigrationEvent>.Empty, code, message);
}

/// <summary>
/// The saga's rules (DESIGN §3): pure, so the persistent actor only persists what it returns and
/// sends what <see cref="MigrationActions.Next"/> then asks for.
/// </summary>
public static class MigrationDecider
{
    public static Decision Decide(MigrationState state, IMigrationCommand command, DateTimeOffset now)
    {
        if (command.MigrationId != state.Id)
            return Decision.Refuse(ErrorCodes.InvalidArgument, $"command {command.GetType().Name} for migration {command.MigrationId} reached migration {state.Id}");
        if (command is StartMigration start)
            return DecideStart(state, start, now);
        if (state.Status is MigrationStatus.New)
            return Decision.Refuse(MigrationErrorCodes.MigrationNotFound, $"migration {state.Id} was never started");

        return command switch
        {
            AdmitMigration => DecideAdmit(state, now),
            ReportStepSucceeded ok => Guard(state, ok.Operation, disk => new Draft(state, now).Succeeded(disk, ok.Outcome)),
            ReportStepFailed failed => Guard(state, failed.Operation, disk => new Draft(state, now).Failed(disk, failed.Code, failed.Message, failed.Transient)),
            ReportProgress p => Guard(state, p.Operation, disk => disk.Done == p.Done && disk.Total == p.Total
                ? Decision.Nothing
                : Decision.Accept([new ProgressReported(state.Id, disk.Image, disk.Step!.Value, p.Done, p.Total, now)])),
            RetryDue => new Draft(state, now).RetryDue(),
            CancelMigration cancel => DecideCancel(state, cancel, now),
            ResumeMigration => DecideResume(state, now),
            AbandonMigration => DecideAbandon(state, now),
            SetMigrationSpeed speed => DecideSpeed(state, speed, now),
            ReportVmStopped stopped => DecideVmStopped(state, stopped, now),
            _ => Decision.Refuse(ErrorCodes.InvalidArgument, $"migration {state.Id} does not know command {command.GetType().Name}"),
        };
    }

    /// <summary>
    /// A pre-copy disk copies its internal layers (or waits to retry that copy) while its mirror runs in the VM's QEMU:
    /// with the VM stopped, the mirror is gone and the pivot can never come, so the migration fails now, its copy in
    /// flight stopped (<see cref="MigrationActions.Stops"/>) and the disks undone, instead of copying for hours while the
    /// VM may not start (its disks are reserved). The other steps need no help: a mirror's wait and a pivot fail on their
    /// own with the VM gone, and a start of the mirror fails at once. A stale report costs only this migration: the
    /// rollback cancels a mirror that does run, as after any failure.
    /// </summary>
    private static Decision DecideVmStopped(MigrationState state, ReportVmStopped stopped, DateTimeOffset now)
    {
        if (state.Status is not MigrationStatus.Running || state.Termination is not null || state.Request is not { } request
            || request.Strategy != MigrationStrategy.PreCopy || request.Vm != stopped.Vm)
            return Decision.Nothing;
        var orphaned = state.Disks.FirstOrDefault(d => d is { PassedPointOfNoReturn: false, IsRollingBack: false, IsFinished: false }
                                                       && d.Step == MigrationStep.SyncInternalVolumes
                                                       && d.Phase is DiskPhase.InFlight or DiskPhase.RetryWaiting);
        if (orphaned is null) return Decision.Nothing;
        return new Draft(state, now).Terminate(TerminationKind.Failure, ErrorCodes.VmNotRunning,
            $"VM {stopped.Vm} stopped on host {stopped.HostId} during the pre-copy: the mirror of disk {orphaned.Image} ended with its QEMU, " +
            "so the pivot can never come; the copy is stopped and undone, and the VM starts on its source chain").Settle();
    }

    /// <summary>A speed change is recorded (so a step sent again after a restart carries it) unless the migration is over.</summary>
    private static Decision DecideSpeed(MigrationState state, SetMigrationSpeed speed, DateTimeOffset now)
    {
        if (state.Status.IsFinished)
            return Decision.Refuse(MigrationErrorCodes.MigrationFinished, $"migration {state.Id} is {Describe(state.Status)} already; there is no copy to speed up or slow down");
        if (speed.BytesPerSecond < 0)
            return Decision.Refuse(ErrorCodes.InvalidArgument, $"migration {state.Id}: speed must be 0 (unlimited) or positive, got {speed.BytesPerSecond} B/s");
        return state.Request!.BandwidthBytesPerSecond == speed.BytesPerSecond
            ? Decision.Nothing
            : Decision.Accept([new MigrationSpeedChanged(state.Id, speed.BytesPerSecond, now)]);
    }

    /// <summary>Results for anything but the step in flight (a repeat, an older attempt, another step) change nothing: that makes re-sending safe.</summary>
    private static Decision Guard(MigrationState state, OperationId operation, Func<DiskState, Decision> decide) =>
        state.Status.IsFinished || state.DiskAwaiting(operation) is not { } disk ? Decision.Nothing : decide(disk);

    private static Decision DecideStart(MigrationState state, StartMigration start, DateTimeOffset now)
    {
        if (state.Status is not MigrationStatus.New)
            return state.Request == start.Request
                ? Decision.Nothing
                : Decision.Refuse(MigrationErrorCodes.MigrationExists, $"migration {state.Id} exists already with another request");
        var refusal = Validate(start.MigrationId, start.Request, start.Facts, out var plans);
        return refusal ?? Decision.Accept([new MigrationRequested(state.Id, start.Request, plans, now)]);
    }

    /// <summary>
    /// The start's validation alone, for the API to run before it reserves the disks: a request the saga would refuse
    /// (an unknown VM or disk, a bad destination) then takes nothing, and journals no reservation and its release.
    /// </summary>
    public static Decision? RefusalOfStart(MigrationId id, MigrationRequest request, ValidationFacts facts) =>
        Validate(id, request, facts, out _);

    /// <summary>DESIGN §3 step 1, against what the inventory knew: a refusal changes nothing.</summary>
    private static Decision? Validate(MigrationId id, MigrationRequest request, ValidationFacts facts, out ValueList<DiskPlan> plans)
    {
        plans = ValueList<DiskPlan>.Empty;
        if (request.Disks.Count == 0)
            return Decision.Refuse(ErrorCodes.InvalidArgument, $"migration {id} names no disk to move");
        if (request.MaxParallelDisks < 1)
            return Decision.Refuse(ErrorCodes.InvalidArgument, $"migration {id}: parallel disks must be at least 1, got {request.MaxParallelDisks}");
        if (request.BandwidthBytesPerSecond < 0)
            return Decision.Refuse(ErrorCodes.InvalidArgument, $"migration {id}: bandwidth must be 0 (unlimited) or positive, got {request.BandwidthBytesPerSecond}");
        if (request.RetryPolicy.MaxAttempts < 1)
            return Decision.Refuse(ErrorCodes.InvalidArgument, $"migration {id}: retry attempts must be at least 1, got {request.RetryPolicy.MaxAttempts}");
        if (request.Disks.GroupBy(d => d.Image).FirstOrDefault(g => g.Count() > 1) is { } twice)
            return Decision.Refuse(ErrorCodes.InvalidArgument, $"migration {id} names disk {twice.Key} {twice.Count()} times");
        if (facts.Vm is not { } vm || vm.Id != request.Vm)
            return Decision.Refuse(ErrorCodes.VmNotFound, $"VM {request.Vm} is not in the inventory");
        if (!vm.Running)
            return Decision.Refuse(ErrorCodes.VmNotRunning, $"VM {request.Vm} is not running; a live migration needs it running");

        // "domain-b (dfe0aa63-…)": the name an operator types, and the id that is unique.
        string? NameOf(DomainId domain) => facts.Domains.FirstOrDefault(d => d.Id == domain)?.Name;
        string Named(DomainId domain) => NameOf(domain) is { Length: > 0 } name ? $"{name} ({domain})" : domain.ToString();
        string Typed(DomainId domain) => NameOf(domain) is { Length: > 0 } name ? name : domain.ToString();

        var result = new List<DiskPlan>();
        foreach (var wanted in request.Disks)
        {
            if (vm.Disks.FirstOrDefault(d => d.Image == wanted.Image) is not { } disk)
                return Decision.Refuse(ErrorCodes.ImageNotFound, $"VM {vm.Id} has no disk {wanted.Image}");
            // Busy before anything about its place: a disk that just moved may still be reported where it was.
            if (facts.DisksInActiveMigrations.Contains(disk.Image))
                return Decision.Refuse(MigrationErrorCodes.DiskBusy, $"disk {disk.Image} is already being moved by another migration");
            // A chain over two domains (an abandoned post-copy's) moves only one way: a post-copy to its leaf's domain, which
            // runs the abandoned post-copy's tail (DiskPlan.MakesWhole). Any other plan's copy would read the older layers from
            // another domain than the one it deletes at the end.
            var makesWhole = disk.OtherDomains is { Count: > 0 };
            if (disk.OtherDomains is { Count: > 0 } others
                && (others.Count > 1 || wanted.Destination != disk.Domain || request.Strategy != MigrationStrategy.PostCopy || disk.Leaf is null))
                return Decision.Refuse(MigrationErrorCodes.ChainSpansDomains,
                    $"disk {disk.Image} runs on a chain whose leaf is on domain {Named(disk.Domain)} and whose older layers are on {string.Join(", ", others.Select(Named))} " +
                    "(a post-copy abandoned before its backing switch leaves it so): it runs as it is and nothing is lost. " +
                    (others.Count > 1
                        ? "No migration moves a chain over more than two domains"
                        : $"A post-copy to its leaf's domain makes it whole first: `lsm migrate VM --to {Typed(disk.Domain)} --disk {disk.Image} --strategy post-copy`") +
                    "; `lsm migrate VM --disk IMAGE` moves the VM's other disks");
            if (!makesWhole && wanted.Destination == disk.Domain)
                return Decision.Refuse(ErrorCodes.InvalidArgument, $"disk {disk.Image} is already on domain {Named(disk.Domain)}");
            if (facts.Domains.FirstOrDefault(d => d.Id == wanted.Destination) is not { } destination)
                return Decision.Refuse(ErrorCodes.DomainNotFound, $"destination domain {wanted.Destination} of disk {disk.Image} is not in the inventory");
            if (!destination.Active)
                return Decision.Refuse(MigrationErrorCodes.DomainInactive, $"destination domain {Named(destination.Id)} of disk {disk.Image} is not active: " +
                    (destination.UnreachableFrom is { Count: > 0 } hosts ? $"not reachable from {string.Join(", ", hosts)}" : "its host reports it not reachable") +
                    " (e.g. unmounted; see `lsm domains`)");
            if (facts.DisksInActiveMigrations.Contains(disk.Image))
                return Decision.Refuse(MigrationErrorCodes.DiskBusy, $"disk {disk.Image} is already being moved by another migration");
            result.Add(makesWhole
                // The source is the older layers' domain, the new leaf the one the drive writes on already.
                ? new DiskPlan(disk.Image, disk.OtherDomains![0], disk.Domain, disk.SizeBytes, disk.Leaf!.Value, MakesWhole: true)
                : new DiskPlan(disk.Image, disk.Domain, wanted.Destination, disk.SizeBytes, NewLeafId(id, disk.Image), disk.Leaf));
        }
        foreach (var byDomain in result.GroupBy(p => p.Destination))
        {
            var free = facts.Domains.First(d => d.Id == byDomain.Key).FreeBytes;
            var needed = byDomain.Sum(p => p.SizeBytes);
            if (needed > free)
                return Decision.Refuse(ErrorCodes.NotEnoughSpace,
                    $"destination domain {Named(byDomain.Key)} has {free} bytes free, the disks moving there need {needed}");
        }
        plans = result.ToValueList();
        return null;
    }

    /// <summary>The post-copy leaf's id, derived from the migration and the disk so every replay and every retry names the same volume.</summary>
    public static VolumeId NewLeafId(MigrationId migration, ImageId image)
    {
        Span<byte> input = stackalloc byte[32];
        migration.Value.TryWriteBytes(input[..16]);
        image.Value.TryWriteBytes(input[16..]);
        Span<byte> hash = stackalloc byte[32];
        SHA256.HashData(input, hash);
        var bytes = hash[..16].ToArray();
        bytes[7] = (byte)((bytes[7] & 0x0F) | 0x80); // version 8 (custom), as little-endian Guid layout stores it
        bytes[8] = (byte)((bytes[8] & 0x3F) | 0x80); // RFC 4122 variant
        return new VolumeId(new Guid(bytes));
    }

    /// <summary>How many times a rollback cancels a disk's mirror again when its copy is still in use (see Draft.Failed).</summary>
    private const int MirrorCancelsAgain = 2;

    /// <summary>
    /// An attempt number this disk never used for <paramref name="step"/>: a step started again (a mirror cancelled again,
    /// a delete after it) must not reuse an operation id a host remembers the answer of.
    /// </summary>
    private static int FreshAttempt(DiskState disk, MigrationStep step) =>
        disk.StepTimings.Where(t => t.Step == step).Select(t => t.Attempt).DefaultIfEmpty(0).Max() + 1;

    /// <summary>The probes a rollback made after its delete began (a delete that found the copy in use asks where the drive runs).</summary>
    private static int ProbesAfterDelete(DiskState disk) =>
        disk.StepTimings.SkipWhile(t => t.Step != MigrationStep.DeleteDestinationImage).Count(t => t.Step == MigrationStep.ProbeSwitch);

    /// <summary>The mirror cancels a rollback started again after its delete began (the rollback's own, and its retries, not counted).</summary>
    private static int CancelsAfterDelete(DiskState disk) =>
        disk.StepTimings.SkipWhile(t => t.Step != MigrationStep.DeleteDestinationImage).Count(t => t.Step == MigrationStep.CancelReplication);

    private static Decision DecideAdmit(MigrationState state, DateTimeOffset now) =>
        state.Status is MigrationStatus.Queued
            ? new Draft(state, now).Emit(new MigrationAdmitted(state.Id, now)).Settle()
            : Decision.Nothing;

    private static Decision DecideCancel(MigrationState state, CancelMigration cancel, DateTimeOffset now)
    {
        if (state.Status.IsFinished)
            return Decision.Refuse(MigrationErrorCodes.MigrationFinished, $"migration {state.Id} is {Describe(state.Status)} already");
        if (state.Status is MigrationStatus.Queued)
            return Decision.Accept([new MigrationCancelled(state.Id, cancel.Reason, now)]);
        // A disk that has not started (one whose move makes a split chain whole counts as past from the start) is skipped.
        if (state.Disks.FirstOrDefault(d => d.Phase != DiskPhase.Pending && (d.PassedPointOfNoReturn || d.SwitchInFlight || d.SwitchOutcomeUnknown)) is { } past)
            return Decision.Refuse(MigrationErrorCodes.PointOfNoReturnPassed,
                $"migration {state.Id} cannot be cancelled: disk {past.Image} {(past.PassedPointOfNoReturn ? "passed" : "is at")} its point of no return ({past.Step}); it rolls forward, resume or abandon it if it is suspended");
        if (state.Termination is not null)
            return Decision.Nothing; // already rolling back
        return new Draft(state, now).Terminate(TerminationKind.Cancel, MigrationErrorCodes.Cancelled, cancel.Reason).Settle();
    }

    /// <summary>
    /// Abandon leaves each disk where it runs, so it is refused where that place is not safe to leave: a step still in
    /// flight (its effect would land after the saga stopped looking), a mirror a rollback has not cancelled yet (it
    /// would copy on into the destination for good), and a pivoted disk whose destination leaf is not LEGAL yet (the
    /// VM could never start again on it). Resume finishes those. An accepted abandon removes the side each disk does
    /// not run on (<see cref="AbandonStarted"/>); abandoning again while that removal is suspended leaves what is left,
    /// named in <see cref="MigrationAbandoned.LeftBehind"/>.
    /// </summary>
    private static Decision DecideAbandon(MigrationState state, DateTimeOffset now)
    {
        if (state.Status is not MigrationStatus.Suspended)
            return Decision.Refuse(MigrationErrorCodes.NotSuspended, $"migration {state.Id} is {Describe(state.Status)}; only a suspended migration can be abandoned");
        foreach (var disk in state.Disks.Where(d => !d.IsFinished))
        {
            if (disk.Phase is DiskPhase.InFlight or DiskPhase.RetryWaiting)
                return Decision.Refuse(MigrationErrorCodes.NotSuspended,
                    $"migration {state.Id} cannot be abandoned yet: disk {disk.Image} has {disk.Step} under way; wait until it ends");
            // Also when an abandon is suspended: its probe may have found the pivot done, and the leaf is not LEGAL yet.
            if (disk.Step == MigrationStep.MarkDestinationLeafLegal)
                return Decision.Refuse(MigrationErrorCodes.NotSuspended,
                    $"migration {state.Id} cannot be abandoned: disk {disk.Image} runs on its destination leaf, which is not marked LEGAL yet ({disk.LastError}); " +
                    "abandoned there its VM could not start again; resume it");
        }
        // Abandoned again while its removal is suspended: what is left stays, named per domain.
        if (state.Termination?.Kind == TerminationKind.Abandon)
            return Decision.Accept([new MigrationAbandoned(state.Id, now, LeftBehindOf(state))]);
        foreach (var disk in state.Disks.Where(d => !d.IsFinished))
        {
            // A mirror runs from StartReplication until the pivot, or until the rollback's CancelReplication succeeded.
            // A host that answered VM_NOT_RUNNING or SWITCH_OUTCOME_UNKNOWN (said only with QEMU gone) has no mirror left.
            var mirrorMayRun = disk.Started.Contains(MigrationStep.StartReplication) && !disk.PassedPointOfNoReturn
                               && !MirrorCancelled(disk)
                               && disk.LastErrorCode is not (ErrorCodes.VmNotRunning or ErrorCodes.SwitchOutcomeUnknown);
            if (mirrorMayRun)
                return Decision.Refuse(MigrationErrorCodes.NotSuspended,
                    $"migration {state.Id} cannot be abandoned: disk {disk.Image}'s mirror may still copy into the destination ({disk.Step}: {disk.LastError}); " +
                    "resume it so the mirror is pivoted or cancelled and the copy removed");
        }
        var draft = new Draft(state, now).Emit(new AbandonStarted(state.Id,
            $"abandoned by an operator while {Describe(state.Status)}: each disk stays where it runs; removing the copy on the other side", now));
        foreach (var disk in draft.State.Disks.Where(d => !d.IsFinished))
        {
            if (disk.Phase == DiskPhase.Pending)
                draft.Emit(new DiskFinished(state.Id, disk.Image, DiskOutcome.Skipped, now));
            else if (disk.SwitchOutcomeUnknown)
                // Where the drive runs was unknown when the migration suspended: asked once more (its host may answer by
                // now, from QEMU or its record), so the disk is left where it runs on a usable chain (a pivot found done
                // still gets its leaf marked LEGAL). A probe that still cannot tell suspends again; a second abandon then
                // leaves the disk as its host recorded it.
                draft.StartStep(disk, MigrationStep.ProbeSwitch, FreshAttempt(disk, MigrationStep.ProbeSwitch));
            else if (CleanupStepOf(disk, state.Request!) is { } step)
            {
                // Removing the copy after a pause: where the drive runs is read again first (see ProbesBeforeUndo).
                var first = step == MigrationStep.DeleteDestinationImage && ProbesBeforeUndo(disk) ? MigrationStep.ProbeSwitch : step;
                draft.StartStep(disk, first, FreshAttempt(disk, first));
            }
            else
                draft.Emit(new DiskFinished(state.Id, disk.Image, DiskOutcome.Abandoned, now));
        }
        return draft.Settle();
    }

    /// <summary>
    /// What removes the side an abandoned disk does not run on, or null when nothing can be removed safely. Before the
    /// switch the drive runs on the source: the destination's copy goes (the SPM deletes only volumes this migration
    /// owns). After it, the source chain goes once the whole chain is on the destination (the step asks the host first
    /// that no source volume is open). A post-copy disk between its live snapshot and its backing switch reads from
    /// both domains, and a switch in doubt leaves it unknown which side is in use: nothing is removed there.
    /// </summary>
    private static MigrationStep? CleanupStepOf(DiskState disk, MigrationRequest request)
    {
        if (disk.SwitchOutcomeUnknown) return null;
        if (!disk.PassedPointOfNoReturn)
            return MigrationPlan.RollbackSteps(disk.Started).Contains(MigrationStep.DeleteDestinationImage) ? MigrationStep.DeleteDestinationImage : null;
        return request.DeleteSource && disk.Step == MigrationStep.DeleteSourceImage ? MigrationStep.DeleteSourceImage : null;
    }

    /// <summary>The volumes an abandon leaves on the domains: per disk not finished, or finished without its clean-up done.</summary>
    private static ValueList<LeftBehind> LeftBehindOf(MigrationState state)
    {
        var left = new List<LeftBehind>();
        foreach (var disk in state.Disks.Where(d => d.Phase is not (DiskPhase.Completed or DiskPhase.RolledBack or DiskPhase.Skipped)))
        {
            var cleaned = disk.Step is MigrationStep.DeleteDestinationImage or MigrationStep.DeleteSourceImage
                          && disk.StepTimings.LastOrDefault() is { Outcome: "completed" } last && last.Step == disk.Step;
            // Computed once the disk is finished, so "its switch was in doubt" is read from the step it stopped at (a probe
            // that found the destination settled it).
            var switchInDoubt = disk.Step == MigrationStep.ProbeSwitch && !disk.PassedPointOfNoReturn;
            if (cleaned || (!disk.PassedPointOfNoReturn && !switchInDoubt
                            && !MigrationPlan.RollbackSteps(disk.Started).Contains(MigrationStep.DeleteDestinationImage)))
                continue;
            var plan = disk.Plan;
            var copy = $"the copy of disk {disk.Image} this migration made (each of its volumes carries OWNER={state.Id} in its .meta)";
            var cause = disk.LastError ?? "see the migration's steps";
            if (switchInDoubt)
            {
                const string which = "it is unknown whether the VM's drive had switched: its host's record decides the chain `lsm vm start` uses (`lsm vm show` names it)";
                const string remove = "remove the image folder of the chain the VM does not run on, once `lsm vm show` names the one it does";
                left.Add(new LeftBehind(disk.Image, plan.Source, $"the source chain of disk {disk.Image}; {which}", remove));
                left.Add(new LeftBehind(disk.Image, plan.Destination, $"{copy}; {which}", remove));
            }
            else if (!disk.PassedPointOfNoReturn && (disk.LastErrorCode == ErrorCodes.VolumeInUse
                                                     || disk.Started.Contains(MigrationStep.StartReplication) && !MirrorCancelled(disk)))
                left.Add(new LeftBehind(disk.Image, plan.Destination, copy,
                    $"a mirror of the VM's QEMU may still write into it ({cause}). Once `lsm vm show` and the host's QEMU " +
                    $"show no block job on disk {disk.Image} (stop the VM if need be), remove the image folder images/{disk.Image} of domain {plan.Destination}"));
            else if (!disk.PassedPointOfNoReturn)
                left.Add(new LeftBehind(disk.Image, plan.Destination, copy,
                    $"nothing uses it: once the cause ({cause}) is fixed, remove the image folder images/{disk.Image} of domain {plan.Destination}"));
            else if (disk.Step == MigrationStep.DeleteSourceImage)
                left.Add(new LeftBehind(disk.Image, plan.Source, $"the source chain of disk {disk.Image}; the VM runs on its copy on domain {plan.Destination}",
                    $"nothing uses it: once the cause ({cause}) is fixed, remove the image folder images/{disk.Image} of domain {plan.Source}"));
            else if (state.Request!.Strategy == MigrationStrategy.PreCopy)
                // Found pivoted when the abandon read the drive again (a late pivot): the whole chain is on the destination.
                left.Add(new LeftBehind(disk.Image, plan.Source, $"the source chain of disk {disk.Image}; the VM runs on its copy on domain {plan.Destination} (its pivot had taken effect)",
                    $"nothing uses it: once `lsm vm show` names the chain on domain {plan.Destination}, remove the image folder images/{disk.Image} of domain {plan.Source}"));
            else
            {
                // Post-copy between the live snapshot and the backing switch: the new leaf reads the older layers from the
                // source unless the switch took effect (its answer lost); copies of them may be on the destination.
                // Only a post-copy to the leaf's domain moves such a chain (DiskPlan.MakesWhole): it runs this one's tail.
                var both = $"the disk runs on a chain over both domains as it is (`lsm vm show` names it): keep both; " +
                           $"`lsm migrate VM --to {plan.Destination} --disk {disk.Image} --strategy post-copy` makes it whole (it takes over these copies, " +
                           $"copies the older layers to domain {plan.Destination} and removes them from domain {plan.Source})";
                left.Add(new LeftBehind(disk.Image, plan.Source,
                    $"the older layers of disk {disk.Image}, which its new leaf on domain {plan.Destination} reads unless the backing switch took effect ({disk.Step} did not finish)", both));
                left.Add(new LeftBehind(disk.Image, plan.Destination, plan.MakesWhole
                    ? $"the leaf disk {disk.Image} runs on and copies of its older layers, used only if the backing switch took effect (OWNER={state.Id} " +
                      "once its first step took them over from the post-copy that left the chain split, that one's id before)"
                    : $"copies of disk {disk.Image}'s older layers this migration made (OWNER={state.Id}), used only if the backing switch took effect", both));
            }
        }
        return left.ToValueList();
    }

    private static Decision DecideResume(MigrationState state, DateTimeOffset now)
    {
        if (state.Status is not MigrationStatus.Suspended)
            return Decision.Refuse(MigrationErrorCodes.NotSuspended, $"migration {state.Id} is {Describe(state.Status)}; only a suspended migration can be resumed");
        var draft = new Draft(state, now).Emit(new MigrationResumed(state.Id, now));
        foreach (var disk in state.Disks.Where(d => d.Phase == DiskPhase.Suspended))
        {
            if (disk.IsRollingBack && ProbesBeforeUndo(disk))
                draft.StartStep(draft.State.Disk(disk.Image), MigrationStep.ProbeSwitch, FreshAttempt(disk, MigrationStep.ProbeSwitch));
            else
                draft.StartStep(draft.State.Disk(disk.Image), disk.Step!.Value, disk.Attempt + 1);
        }
        return draft.Settle();
    }

    /// <summary>
    /// The rollback's last mirror cancel succeeded (its host ended the job, or had none): a re-cancel started since (a
    /// delete found the copy in use) or one that failed leaves the mirror possibly running.
    /// </summary>
    private static bool MirrorCancelled(DiskState disk) =>
        disk.StepTimings.LastOrDefault(t => t.Step == MigrationStep.CancelReplication) is { Outcome: "completed" };

    /// <summary>
    /// A disk whose switch was sent, undone after a pause (a suspension resumed or abandoned): its probe saw the source
    /// before the pause, but a late copy of the switch may have landed since at a host that had forgotten answering it
    /// (a restarted HSM; the domain's ended mark comes only with the delete). The drive is read again before the rollback
    /// cancels or deletes anything: found on the destination, the disk rolls forward (or, abandoned, stays there).
    /// </summary>
    private static bool ProbesBeforeUndo(DiskState disk) =>
        !disk.PassedPointOfNoReturn && disk.Started.Any(MigrationPlan.IsSwitch);

    public static string Describe(MigrationStatus status) => status switch
    {
        MigrationStatus.RollingBack { Kind: TerminationKind.Abandon } => "abandoning (removing the copy each disk does not run on)",
        MigrationStatus.RollingBack r => $"rolling back ({r.Code})",
        MigrationStatus.Suspended s => $"suspended at {s.Step} of disk {s.Image}",
        MigrationStatus.Failed f => $"failed ({f.Code})",
        _ => status.GetType().Name.ToLowerInvariant(),
    };

    /// <summary>Events in the making, each applied at once so later rules see the state they lead to.</summary>
    private sealed class Draft(MigrationState state, DateTimeOffset now)
    {
        private readonly List<IMigrationEvent> _events = [];
        public MigrationState State { get; private set; } = state;
        private MigrationRequest Request => State.Request!;

        public Draft Emit(IMigrationEvent e)
        {
            _events.Add(e);
            State = MigrationState.Apply(State, e);
            return this;
        }

        public void StartStep(DiskState disk, MigrationStep step, int attempt) =>
            Emit(new StepStarted(State.Id, disk.Image, step, new OperationId(State.Id, step, disk.Image, attempt), attempt, now));

        public Decision Succeeded(DiskState disk, StepOutcome outcome)
        {
            var step = disk.Step!.Value;
            Emit(new StepCompleted(State.Id, disk.Image, step, disk.Operation!.Value, outcome, now));
            if (step == MigrationStep.ProbeSwitch)
                return SwitchProbed(State.Disk(disk.Image), outcome);
            if (MigrationPlan.IsSwitch(step))
                Emit(new PointOfNoReturnPassed(State.Id, disk.Image, now));
            Continue(State.Disk(disk.Image));
            return Settle();
        }

        /// <summary>The probe's answer: the switch happened (roll forward from it) or never began (the rollback is safe).</summary>
        private Decision SwitchProbed(DiskState disk, StepOutcome outcome)
        {
            var switchStep = Request.Strategy == MigrationStrategy.PreCopy ? MigrationStep.Pivot : MigrationStep.LiveSnapshotToDestination;
            switch (outcome.Switch)
            {
                case SwitchFinding.OnDestination:
                    Emit(new PointOfNoReturnPassed(State.Id, disk.Image, now));
                    if (State.Termination?.Kind == TerminationKind.Abandon && Request.Strategy == MigrationStrategy.PostCopy)
                        // Abandoned where it runs: its new leaf reads the older layers from the source (LeftBehindOf says so).
                        Emit(new DiskFinished(State.Id, disk.Image, DiskOutcome.Abandoned, now));
                    else if (MigrationPlan.NextForwardStep(Request.Strategy, Request.DeleteSource, switchStep) is { } next)
                        // Abandoned after a pivot too: its leaf is marked LEGAL, or the VM could not start again.
                        StartStep(State.Disk(disk.Image), next, 1);
                    else
                        Emit(new DiskFinished(State.Id, disk.Image, DiskOutcome.Completed, now));
                    break;
                case SwitchFinding.OnSource:
                    if (State.Termination is null)
                        Terminate(TerminationKind.Failure, disk.LastErrorCode ?? ErrorCodes.JobFailed,
                            $"{switchStep} of disk {disk.Image} failed and never took effect ({disk.LastError}; {outcome.Detail})");
                    BeginRollbackOnce(State.Disk(disk.Image));
                    break;
                default:
                    Emit(new MigrationSuspended(State.Id, disk.Image, MigrationStep.ProbeSwitch,
                        $"the probe of disk {disk.Image}'s switch gave no finding ({outcome.Detail}); nothing was deleted", now));
                    break;
            }
            return Settle();
        }

        public Decision Failed(DiskState disk, string code, string message, bool transient)
        {
            var step = disk.Step!.Value;
            // A transient answer ("no host has reported the VM yet") says nothing about the mirror: a host that restarted
            // may not have adopted a QEMU that still mirrors into the destination. Only a host's own answer counts.
            if (!transient && MigrationPlan.IsRollback(step) && MigrationPlan.NothingToUndo(step, code))
                return Succeeded(disk, new StepOutcome(Detail: $"nothing to undo: {code}: {message}"));

            Emit(new StepFailed(State.Id, disk.Image, step, disk.Operation!.Value, code, message, transient, now));
            disk = State.Disk(disk.Image);
            var budgetLeft = disk.FailuresInRow < Request.RetryPolicy.MaxAttempts;
            var why = $"{step} of disk {disk.Image} failed ({code}: {message})";

            if (MigrationPlan.IsSwitch(step) && !disk.PassedPointOfNoReturn)
            {
                // DESIGN §7.4: a failed switch may still have happened (a timeout, QEMU gone, a lost answer).
                // Nothing is undone before a read-only probe says where the drive runs. (A disk past its point of no return
                // from the start, one whose move makes a split chain whole, has nothing to undo: it retries or waits.)
                StartStep(disk, MigrationStep.ProbeSwitch, 1);
                return Settle();
            }
            if (step == MigrationStep.ProbeSwitch)
            {
                // The probe only reads: asking again is always safe, until its host says nobody can tell.
                if (budgetLeft && code != ErrorCodes.SwitchOutcomeUnknown)
                    ScheduleRetry(disk);
                else
                    Emit(new MigrationSuspended(State.Id, disk.Image, step,
                        $"the outcome of the switch of disk {disk.Image} is unknown ({code}: {message}); nothing was deleted. " +
                        "Resume to probe again once its host and VM answer, or abandon to leave the disk as its host recorded it", now));
                return Settle();
            }

            if (step == MigrationStep.DeleteDestinationImage && code == ErrorCodes.VolumeInUse && !disk.PassedPointOfNoReturn
                && disk.Started.Contains(MigrationStep.StartReplication) && CancelsAfterDelete(disk) < MirrorCancelsAgain)
            {
                // A volume of the copy is open: a mirror may write into it again (a late start of it, at a host that had
                // forgotten it answered, came after the rollback cancelled it). Cancel the mirror again, then delete; a
                // delete refused only waits and suspends, and an abandon then would leave the mirror running for good.
                StartStep(disk, MigrationStep.CancelReplication, FreshAttempt(disk, MigrationStep.CancelReplication));
                return Settle();
            }
            if (step == MigrationStep.DeleteDestinationImage && code == ErrorCodes.VolumeInUse && ProbesBeforeUndo(disk)
                && ProbesAfterDelete(disk) < MirrorCancelsAgain)
            {
                // The copy is still open after that (or it has no mirror: a post-copy), and its switch was sent: the VM
                // itself may run on it (a late switch landed at a host that forgot answering it). Where the drive runs is
                // read before anything more is undone: found there, the disk rolls forward; found on the source, the
                // rollback starts again.
                StartStep(disk, MigrationStep.ProbeSwitch, FreshAttempt(disk, MigrationStep.ProbeSwitch));
                return Settle();
            }
            if (disk.IsRollingBack || disk.PassedPointOfNoReturn)
            {
                // Undoing, or past the point of no return: the only ways are forward, or wait for an operator.
                if (budgetLeft && code != ErrorCodes.VmNotRunning)
                    ScheduleRetry(disk);
                else
                    Emit(new MigrationSuspended(State.Id, disk.Image, step,
                        budgetLeft ? why : $"{why} after {disk.FailuresInRow} attempts", now));
            }
            else if (transient && budgetLeft && State.Termination is null)
                ScheduleRetry(disk);
            else
            {
                if (State.Termination is null)
                    Terminate(TerminationKind.Failure, code, transient ? $"{why} after {disk.FailuresInRow} attempts" : why);
                BeginRollbackOnce(State.Disk(disk.Image));
            }
            return Settle();
        }

        public Decision RetryDue()
        {
            foreach (var disk in State.Disks.Where(d => d.Phase == DiskPhase.RetryWaiting && d.RetryDueAt <= now))
                StartStep(disk, disk.Step!.Value, disk.Attempt + 1);
            return Settle();
        }

        /// <summary>Record the end the migration heads for and start undoing every disk that can be undone now.</summary>
        public Draft Terminate(TerminationKind kind, string code, string message)
        {
            Emit(new RollbackStarted(State.Id, kind, code, message, now));
            foreach (var disk in State.Disks)
            {
                if (disk.IsFinished || disk.IsRollingBack || disk.SwitchOutcomeUnknown)
                    continue;
                // Never started, nothing of it to undo: skipped, also a disk past its point of no return from the start (one
                // whose move makes a split chain whole), which otherwise would wait for ever in a migration that rolls back.
                if (disk.Phase == DiskPhase.Pending)
                    Emit(new DiskFinished(State.Id, disk.Image, DiskOutcome.Skipped, now));
                else if (disk.PassedPointOfNoReturn)
                    continue;
                else if (disk.Phase != DiskPhase.InFlight || MigrationPlan.IsInterruptible(disk.Step!.Value))
                    BeginRollback(disk);
                // A step still in flight is let finish (a long copy is asked to stop: MigrationActions.Stops); its outcome
                // starts the rollback (or, for a switch that worked, the roll forward).
            }
            return this;
        }

        private void ScheduleRetry(DiskState disk)
        {
            var delay = Request.RetryPolicy.DelayAfter(disk.FailuresInRow);
            Emit(new RetryScheduled(State.Id, disk.Image, disk.Step!.Value, disk.Attempt + 1, delay, now + delay, now));
        }

        /// <summary>After a step's success: the next forward step, the next rollback step, or the disk is done.</summary>
        private void Continue(DiskState disk)
        {
            var step = disk.Step!.Value;
            if (State.Termination?.Kind == TerminationKind.Abandon)
            {
                // A mirror cancelled again because the copy was in use: the copy can be removed now.
                if (step == MigrationStep.CancelReplication && CleanupStepOf(disk, Request) is MigrationStep.DeleteDestinationImage)
                {
                    StartStep(disk, MigrationStep.DeleteDestinationImage, FreshAttempt(disk, MigrationStep.DeleteDestinationImage));
                    return;
                }
                // Found pivoted when the abandon probed again, its leaf now LEGAL: the source is the side it does not run on.
                if (step == MigrationStep.MarkDestinationLeafLegal && Request.DeleteSource)
                {
                    StartStep(disk, MigrationStep.DeleteSourceImage, FreshAttempt(disk, MigrationStep.DeleteSourceImage));
                    return;
                }
                // The abandon's clean-up step removed the other side: the disk stays where it runs.
                Emit(new DiskFinished(State.Id, disk.Image, DiskOutcome.Abandoned, now));
                return;
            }
            if (disk.IsRollingBack)
            {
                NextRollbackStep(disk, after: step);
                return;
            }
            if (State.Termination is not null && !disk.PassedPointOfNoReturn)
            {
                BeginRollback(disk);
                return;
            }
            if (MigrationPlan.NextForwardStep(Request.Strategy, Request.DeleteSource, step) is { } next)
                StartStep(disk, next, 1);
            else
                Emit(new DiskFinished(State.Id, disk.Image, DiskOutcome.Completed, now));
        }

        private void BeginRollback(DiskState disk) => NextRollbackStep(disk, after: null);

        /// <summary>After a <see cref="Terminate"/> that may have begun this disk's rollback already: never the same step twice.</summary>
        private void BeginRollbackOnce(DiskState disk)
        {
            if (!disk.IsRollingBack && !disk.IsFinished) BeginRollback(disk);
        }

        private void NextRollbackStep(DiskState disk, MigrationStep? after)
        {
            var steps = MigrationPlan.RollbackSteps(disk.Started);
            var index = after is { } a ? IndexOf(steps, a) + 1 : 0;
            if (index < steps.Count)
                StartStep(disk, steps[index], FreshAttempt(disk, steps[index]));
            else
                Emit(new DiskFinished(State.Id, disk.Image, DiskOutcome.RolledBack, now));
        }

        private static int IndexOf(IReadOnlyList<MigrationStep> steps, MigrationStep step)
        {
            for (var i = 0; i < steps.Count; i++)
                if (steps[i] == step) return i;
            return -1;
        }

        /// <summary>Fill free parallel slots, and end the migration once every disk is finished.</summary>
        public Decision Settle()
        {
            if (State.Status is MigrationStatus.Running)
            {
                var free = Request.MaxParallelDisks - State.Disks.Count(d => d.IsActive);
                foreach (var pending in State.Disks.Where(d => d.Phase == DiskPhase.Pending).Take(Math.Max(0, free)).ToList())
                    StartStep(pending, MigrationPlan.ForwardSteps(Request.Strategy, Request.DeleteSource)[0], 1);
            }
            if (!State.Status.IsFinished && State.Status is not MigrationStatus.Queued && State.Disks.All(d => d.IsFinished))
            {
                if (State.Termination is not { } end)
                    Emit(new MigrationCompleted(State.Id, now));
                else if (end.Kind == TerminationKind.Abandon)
                    Emit(new MigrationAbandoned(State.Id, now, LeftBehindOf(State)));
                else if (end.Kind == TerminationKind.Cancel)
                    Emit(new MigrationCancelled(State.Id, end.Message, now));
                else
                    Emit(new MigrationFailed(State.Id, end.Code, Summarize(end.Message), now));
            }
            return Decision.Accept(_events);
        }

        private string Summarize(string cause)
        {
            var moved = State.Disks.Where(d => d.Phase == DiskPhase.Completed).Select(d => d.Image.ToString()).ToList();
            return moved.Count == 0 ? $"{cause}; every disk was rolled back" : $"{cause}; disks moved before the failure: {string.Join(", ", moved)}";
        }
    }
}

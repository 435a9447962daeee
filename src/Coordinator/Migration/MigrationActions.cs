using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Migration;

/// <summary>Something the actor around the saga must do for the state it is in.</summary>
public abstract record MigrationAction;

/// <summary>Ask the concurrency limits (per host, per storage domain) to admit a queued migration; they answer with <see cref="AdmitMigration"/>.</summary>
public sealed record RequestAdmission(MigrationId Migration, VmId Vm, ValueList<DiskPlan> Disks) : MigrationAction;

/// <summary>
/// Send one step to a host: the SPM singleton, or the HSM of the host that runs <see cref="Vm"/>.
/// The host answers with <see cref="ReportStepSucceeded"/>/<see cref="ReportStepFailed"/> (and
/// <see cref="ReportProgress"/> on the way) carrying <see cref="Operation"/>.
/// </summary>
public sealed record SendStep(
    HostRole Role,
    VmId Vm,
    DiskPlan Disk,
    MigrationStep Step,
    OperationId Operation,
    MigrationStrategy Strategy,
    /// <summary>This disk's share of the migration's bandwidth limit; 0 = unlimited.</summary>
    long SpeedBytesPerSecond,
    CopyMode CopyMode) : MigrationAction;

/// <summary>Tell a host the new speed of a copy or mirror that runs now for <see cref="Operation"/>'s disk.</summary>
public sealed record SendSpeed(HostRole Role, VmId Vm, OperationId Operation, long SpeedBytesPerSecond) : MigrationAction;

/// <summary>
/// Stop a copy step in flight that the migration being undone no longer needs (<see cref="StopStep"/>): its answer,
/// STEP_STOPPED once the copy has ended, starts the disk's rollback. Sent with each sending of the step.
/// </summary>
public sealed record SendStop(HostRole Role, OperationId Operation, string Reason) : MigrationAction;

/// <summary>Send <see cref="RetryDue"/> to the saga at this time.</summary>
public sealed record WakeAt(DateTimeOffset DueAt) : MigrationAction;

public static class MigrationActions
{
    /// <summary>
    /// What must be sent now. After a recovery this names every step in flight with the operation
    /// id it had before the crash, so re-sending it is the same operation to the host.
    /// </summary>
    public static IReadOnlyList<MigrationAction> Next(MigrationState state)
    {
        if (state.Request is not { } request || state.Status.IsFinished)
            return [];
        if (state.Status is MigrationStatus.Queued)
            return [new RequestAdmission(state.Id, request.Vm, state.Disks.Select(d => d.Plan).ToValueList())];

        var actions = new List<MigrationAction>();
        var speed = DiskSpeed(state);
        foreach (var disk in state.Disks.Where(d => d.Phase == DiskPhase.InFlight))
        {
            var step = disk.Step!.Value;
            actions.Add(new SendStep(MigrationPlan.RoleOf(step), request.Vm, disk.Plan, step, disk.Operation!.Value,
                request.Strategy, CopySpeed(step, speed), request.CopyMode));
        }
        actions.AddRange(Stops(state));
        var due = state.Disks.Where(d => d.Phase == DiskPhase.RetryWaiting).Select(d => d.RetryDueAt!.Value).DefaultIfEmpty().Min();
        if (due != default)
            actions.Add(new WakeAt(due));
        return actions;
    }

    /// <summary>
    /// The copies in flight to stop: a migration being undone (cancelled, failed on another disk) waits for each step in
    /// flight to answer before it undoes that disk (<see cref="MigrationDecider"/>), and a copy of hundreds of GiB would
    /// make it wait for hours for a copy it then deletes.
    /// </summary>
    public static IEnumerable<SendStop> Stops(MigrationState state)
    {
        if (state.Termination is not { } end || state.Status.IsFinished) yield break;
        foreach (var disk in state.Disks)
            if (disk is { Phase: DiskPhase.InFlight, IsRollingBack: false, PassedPointOfNoReturn: false } && StopStep.Stops(disk.Step!.Value))
                yield return new SendStop(MigrationPlan.RoleOf(disk.Step!.Value), disk.Operation!.Value,
                    $"migration {state.Id} is {MigrationDecider.Describe(end)}: {end.Message}");
    }

    /// <summary>
    /// One disk's share of the migration's bandwidth limit (the disks moving at once share it); 0 = unlimited. Only the
    /// disks still to finish count: the last disks of a migration get the budget the finished ones no longer use.
    /// </summary>
    public static long DiskSpeed(MigrationState state)
    {
        if (state.Request is not { } request) return 0;
        var parallel = Math.Min(request.MaxParallelDisks, Math.Max(1, state.Disks.Count(d => !d.IsFinished)));
        var speed = request.BandwidthBytesPerSecond / Math.Max(1, parallel);
        return request.BandwidthBytesPerSecond > 0 && speed == 0 ? 1 : speed;
    }

    /// <summary>
    /// The limit of one copy of a disk at <paramref name="step"/>, from the disk's share: a pre-copy's mirror and the SPM's copy
    /// of the internal layers run side by side from StartReplication until SyncInternalVolumes ends, and split the share
    /// then, so together they keep to it; before and after, the one copy that runs has it whole (the HSM gives the mirror
    /// its whole share again when WaitMirrorReady begins). 0 = unlimited.
    /// </summary>
    public static long CopySpeed(MigrationStep step, long diskShare) =>
        diskShare > 0 && step is MigrationStep.StartReplication or MigrationStep.SyncInternalVolumes
            ? Math.Max(1, diskShare / 2)
            : diskShare;

    /// <summary>
    /// Where a new speed must go at once: the HSM of every disk whose mirror runs (from StartReplication until the
    /// pivot, or until the rollback cancelled it), and the SPM for a copy step in flight. Steps sent later carry the
    /// speed by themselves (<see cref="Next"/>). With <paramref name="mirrorsOnly"/> (a disk finished and the others'
    /// share grew) only the mirrors: a running <c>qemu-img</c> would start its layer again at a new rate.
    /// </summary>
    public static IReadOnlyList<SendSpeed> SpeedChanges(MigrationState state, bool mirrorsOnly = false)
    {
        if (state.Request is not { } request || state.Status.IsFinished)
            return [];
        var speed = DiskSpeed(state);
        var changes = new List<SendSpeed>();
        foreach (var disk in state.Disks.Where(d => !d.IsFinished && d.Operation is not null))
        {
            var operation = disk.Operation!.Value;
            var mirrorRuns = disk.Started.Contains(MigrationStep.StartReplication) && !disk.PassedPointOfNoReturn
                && !(disk.Step == MigrationStep.CancelReplication && disk.Phase != DiskPhase.InFlight)
                && disk.Step != MigrationStep.DeleteDestinationImage;
            var share = CopySpeed(disk.Step!.Value, speed);
            if (mirrorRuns)
                changes.Add(new SendSpeed(HostRole.Hsm, request.Vm, operation, share));
            if (!mirrorsOnly && disk.Phase == DiskPhase.InFlight && disk.Step is MigrationStep.SyncInternalVolumes or MigrationStep.CloneInternalVolumes)
                changes.Add(new SendSpeed(HostRole.Spm, request.Vm, operation, share));
        }
        return changes;
    }
}

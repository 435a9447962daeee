using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;

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
        var parallel = Math.Min(request.MaxParallelDisks, state.Disks.Count);
        var speed = request.BandwidthBytesPerSecond / Math.Max(1, parallel);
        if (request.BandwidthBytesPerSecond > 0 && speed == 0) speed = 1;
        foreach (var disk in state.Disks.Where(d => d.Phase == DiskPhase.InFlight))
        {
            var step = disk.Step!.Value;
            actions.Add(new SendStep(MigrationPlan.RoleOf(step), request.Vm, disk.Plan, step, disk.Operation!.Value,
                request.Strategy, speed, request.CopyMode));
        }
        var due = state.Disks.Where(d => d.Phase == DiskPhase.RetryWaiting).Select(d => d.RetryDueAt!.Value).DefaultIfEmpty().Min();
        if (due != default)
            actions.Add(new WakeAt(due));
        return actions;
    }
}

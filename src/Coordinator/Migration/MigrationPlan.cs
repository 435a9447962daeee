using LiveMigration.Shared.Migration;

namespace LiveMigration.Coordinator.Migration;

/// <summary>The order of the steps (DESIGN §3, the host-layer DiskMover step for step), who runs each, and how each is undone.</summary>
public static class MigrationPlan
{
    private static readonly MigrationStep[] PreCopy =
    [
        MigrationStep.CloneImageStructure, MigrationStep.StartReplication, MigrationStep.SyncInternalVolumes,
        MigrationStep.WaitMirrorReady, MigrationStep.Pivot, MigrationStep.MarkDestinationLeafLegal, MigrationStep.DeleteSourceImage,
    ];

    private static readonly MigrationStep[] PostCopy =
    [
        MigrationStep.CreateVolumeCrossDomain, MigrationStep.LiveSnapshotToDestination, MigrationStep.CloneInternalVolumes,
        MigrationStep.SwitchBackingChain, MigrationStep.DeleteSourceImage,
    ];

    public static IReadOnlyList<MigrationStep> ForwardSteps(MigrationStrategy strategy, bool deleteSource)
    {
        var steps = strategy == MigrationStrategy.PreCopy ? PreCopy : PostCopy;
        return deleteSource ? steps : steps.Where(s => s != MigrationStep.DeleteSourceImage).ToArray();
    }

    /// <summary>The step after <paramref name="step"/>, or null when the disk has moved.</summary>
    public static MigrationStep? NextForwardStep(MigrationStrategy strategy, bool deleteSource, MigrationStep step)
    {
        var steps = ForwardSteps(strategy, deleteSource);
        var index = IndexOf(steps, step);
        return index >= 0 && index + 1 < steps.Count ? steps[index + 1] : null;
    }

    /// <summary>The step whose success means the VM writes on the destination: the point of no return.</summary>
    public static bool IsSwitch(MigrationStep step) =>
        step is MigrationStep.Pivot or MigrationStep.LiveSnapshotToDestination;

    public static bool IsRollback(MigrationStep step) =>
        step is MigrationStep.CancelReplication or MigrationStep.DeleteDestinationImage;

    /// <summary>
    /// Steps that may be abandoned while in flight to start the rollback at once: waiting for the
    /// mirror to be ready changes nothing, and cancelling the mirror ends the wait. Any other step
    /// in flight is let finish first, so the rollback never races the thing it undoes.
    /// </summary>
    public static bool IsInterruptible(MigrationStep step) => step == MigrationStep.WaitMirrorReady;

    public static HostRole RoleOf(MigrationStep step) => step switch
    {
        MigrationStep.StartReplication or MigrationStep.WaitMirrorReady or MigrationStep.Pivot
            or MigrationStep.LiveSnapshotToDestination or MigrationStep.SwitchBackingChain
            or MigrationStep.CancelReplication or MigrationStep.ProbeSwitch => HostRole.Hsm,
        _ => HostRole.Spm,
    };

    /// <summary>What undoes the forward steps a disk has started (sent at least once), in order.</summary>
    public static IReadOnlyList<MigrationStep> RollbackSteps(IReadOnlyCollection<MigrationStep> startedForwardSteps)
    {
        var steps = new List<MigrationStep>(2);
        if (startedForwardSteps.Contains(MigrationStep.StartReplication))
            steps.Add(MigrationStep.CancelReplication);
        if (startedForwardSteps.Contains(MigrationStep.CloneImageStructure) || startedForwardSteps.Contains(MigrationStep.CreateVolumeCrossDomain))
            steps.Add(MigrationStep.DeleteDestinationImage);
        return steps;
    }

    /// <summary>
    /// Host codes that mean a rollback step has nothing left to undo (the VM or the mirror is gone,
    /// the destination image never was): the step counts as done, as in DiskMover's rollback.
    /// </summary>
    public static bool NothingToUndo(MigrationStep step, string code) => step switch
    {
        MigrationStep.CancelReplication => code is Shared.Model.ErrorCodes.VmNotRunning or Shared.Model.ErrorCodes.NoSuchJob or Shared.Model.ErrorCodes.VmNotFound,
        MigrationStep.DeleteDestinationImage => code is Shared.Model.ErrorCodes.ImageNotFound,
        _ => false,
    };

    private static int IndexOf(IReadOnlyList<MigrationStep> steps, MigrationStep step)
    {
        for (var i = 0; i < steps.Count; i++)
            if (steps[i] == step) return i;
        return -1;
    }
}

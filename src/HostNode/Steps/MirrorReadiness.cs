using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Steps;

/// <summary>
/// What the WaitMirrorReady step makes of a mirror's state, for every caller: the HSM actor (which waits without
/// blocking, on pushed events and a progress timer) and <c>DiskMover</c> (which awaits). Readiness is read from the job
/// QEMU reports, never from an event alone: a READY event carries no counters and may come before anyone listened.
/// </summary>
public static class MirrorReadiness
{
    /// <summary>
    /// The step's answer from one read of the drive's job: its outcome when READY, null while it runs (report its
    /// progress and wait on), or an <see cref="OperationFailedException"/> when there is no mirror or it ended otherwise.
    /// </summary>
    public static StepOutcome? Judge(VmId vm, ImageId drive, BlockJobInfo? job) => job switch
    {
        null => throw new OperationFailedException(ErrorCodes.NoSuchJob, $"drive {drive} of VM {vm} has no mirror to wait for"),
        { Phase: BlockJobPhase.Ready } => new StepOutcome(job.Length, $"mirror {job.JobId} READY at {job.Offset} of {job.Length} bytes"),
        { Phase: BlockJobPhase.Failed or BlockJobPhase.Cancelled } => throw new OperationFailedException(ErrorCodes.JobFailed,
            $"the mirror {job.JobId} of drive {drive} on VM {vm} ended {job.Phase}: {job.Error}"),
        _ => null,
    };

    /// <summary>
    /// What a pushed event means for the wait on <paramref name="drive"/> of <paramref name="vm"/>. When the wait
    /// <paramref name="replaced"/> its mirror (started again write-blocking), a cancel may be the end of the job it
    /// replaced, which is no failure: the job as QEMU has it then decides.
    /// </summary>
    public static MirrorEvent Read(HypervisorEvent e, VmId vm, ImageId drive, bool replaced = false) => e switch
    {
        _ when e.Vm != vm => MirrorEvent.Unrelated,
        VmStopped stopped => MirrorEvent.Failed(new OperationFailedException(ErrorCodes.VmNotRunning,
            $"VM {vm} stopped while its drive {drive} was mirrored: {stopped.Reason}")),
        BlockJobFailed failed when failed.Drive == drive => MirrorEvent.Failed(new OperationFailedException(ErrorCodes.JobFailed,
            $"the mirror {failed.JobId} of drive {drive} on VM {vm} failed: {failed.Error}")),
        BlockJobCancelled cancelled when cancelled.Drive == drive && replaced => MirrorEvent.ReadTheJob,
        BlockJobCancelled cancelled when cancelled.Drive == drive => MirrorEvent.Failed(new OperationFailedException(ErrorCodes.JobFailed,
            $"the mirror {cancelled.JobId} of drive {drive} on VM {vm} was cancelled")),
        // The event has no counters: read the job, and answer from what QEMU says then.
        BlockJobReady ready when ready.Drive == drive => MirrorEvent.ReadTheJob,
        _ => MirrorEvent.Unrelated,
    };
}

/// <summary>An event's meaning for a mirror wait: nothing, read the job now, or the wait failed with <see cref="Error"/>.</summary>
public sealed record MirrorEvent(bool ReadJob, OperationFailedException? Error)
{
    public static readonly MirrorEvent Unrelated = new(false, null);
    public static readonly MirrorEvent ReadTheJob = new(true, null);
    public static MirrorEvent Failed(OperationFailedException error) => new(false, error);
}

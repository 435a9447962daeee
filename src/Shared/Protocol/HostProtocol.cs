using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;

namespace LiveMigration.Shared.Protocol;

/// <summary>What the saga sends to a host (the SPM singleton or the HSM of the VM's host). Keyed by its operation id.</summary>
public interface IHostCommand
{
    OperationId Operation { get; }
}

/// <summary>What a host answers about an operation. Every answer names the operation it belongs to, so stale ones are recognised.</summary>
public interface IHostReply
{
    OperationId Operation { get; }
}

/// <summary>
/// Run one saga step for one disk. The step is <see cref="OperationId.Step"/>. A host treats a repeated
/// operation id as the same operation: it answers with the result it had, or attaches to the work still
/// running, and when it has no memory of it (a restart, an SPM that moved) it derives the answer from
/// storage and QEMU state (the step's effect is there, or it does the step).
/// </summary>
public sealed record ExecuteStep(
    OperationId Operation,
    VmId Vm,
    DiskPlan Disk,
    MigrationStrategy Strategy,
    /// <summary>Bytes per second for the copy or mirror of this step; 0 = unlimited.</summary>
    long SpeedBytesPerSecond,
    CopyMode CopyMode) : IHostCommand;

/// <summary>Changes the speed of the running copy or mirror of a migration's disk at once (0 = unlimited).</summary>
public sealed record SetStepSpeed(OperationId Operation, long SpeedBytesPerSecond) : IHostCommand;

/// <summary>
/// Stops a copy step before the point of no return whose migration is being undone (cancelled, or failed on another
/// disk), so the rollback need not wait hours for a copy nobody will use. The step itself answers: with
/// <see cref="ErrorCodes.StepStopped"/> once its copy process has ended (nothing writes the destination after the
/// answer), or with its own outcome when it ended first. A host that does not run the operation remembers the stop
/// for a while and answers the step STEP_STOPPED without running it when it arrives. No reply of its own.
/// </summary>
public sealed record StopStep(OperationId Operation, string Reason) : IHostCommand
{
    /// <summary>
    /// The steps a saga that undoes its migration stops while they run: the SPM's copy of a pre-copy's internal layers,
    /// before the point of no return, whose half-made copy the rollback deletes. A post-copy's copy runs after the
    /// switch (the VM reads through it) and is never stopped; the other steps are short.
    /// </summary>
    public static bool Stops(MigrationStep step) => step is MigrationStep.SyncInternalVolumes;
}

public sealed record OperationSucceeded(OperationId Operation, StepOutcome Outcome) : IHostReply;

/// <summary>The step failed. <paramref name="Transient"/> says a retry may succeed (a timeout, a host that went away).</summary>
public sealed record OperationFailed(OperationId Operation, string Code, string Message, bool Transient) : IHostReply;

/// <summary>Bytes done of the step's copy or mirror, pushed while it runs.</summary>
public sealed record OperationProgress(OperationId Operation, long Done, long Total) : IHostReply;

using LiveMigration.Shared.Model;

namespace LiveMigration.Shared.Migration;

/// <summary>A command to one migration saga; the entity id routes it to its shard.</summary>
public interface IMigrationCommand
{
    MigrationId MigrationId { get; }
}

/// <summary>A fact a migration saga persisted; replaying them in order rebuilds its state.</summary>
public interface IMigrationEvent
{
    MigrationId MigrationId { get; }
    DateTimeOffset At { get; }
}

/// <summary>What a host returns with a finished step, for progress and the report.</summary>
public sealed record StepOutcome(long BytesCopied = 0, string? Detail = null,
    /// <summary>Only for <see cref="MigrationStep.ProbeSwitch"/>: where the drive runs, as the host found it.</summary>
    [property: System.Text.Json.Serialization.JsonIgnore(Condition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull)]
    SwitchFinding? Switch = null,
    /// <summary>
    /// Only for a switch the host made (pivot, live snapshot, backing switch): how long the hypervisor held the drive
    /// for it, measured on the host around the switching command(s), in milliseconds. The guest's I/O waits at most this
    /// long; null when the step found the switch already done (a repeat) or ran no switch.
    /// </summary>
    [property: System.Text.Json.Serialization.JsonIgnore(Condition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull)]
    double? SwitchStallMs = null,
    /// <summary>
    /// What the host decided on its own during the step, for operators (e.g. a mirror that did not converge started
    /// again write-blocking, with the rates that made it do so); null when nothing.
    /// </summary>
    [property: System.Text.Json.Serialization.JsonIgnore(Condition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull)]
    string? Note = null);

/// <summary>What a read-only probe found after a switch (pivot / live snapshot) whose outcome was unknown.</summary>
public enum SwitchFinding
{
    /// <summary>The drive runs (or, with QEMU gone, its host's record says it ran) on the destination: roll forward.</summary>
    OnDestination,
    /// <summary>The drive runs on the source and its host never began the switch: the rollback is safe.</summary>
    OnSource,
}

// ---- commands --------------------------------------------------------------------------------

/// <summary>Start a migration; validated against the inventory's facts, refused with nothing changed when they do not allow it.</summary>
public sealed record StartMigration(MigrationId MigrationId, MigrationRequest Request, ValidationFacts Facts) : IMigrationCommand;

/// <summary>The per-host and per-domain limits let a queued migration run.</summary>
public sealed record AdmitMigration(MigrationId MigrationId) : IMigrationCommand;

public sealed record ReportStepSucceeded(MigrationId MigrationId, OperationId Operation, StepOutcome Outcome) : IMigrationCommand;

/// <summary>A host could not do a step; <paramref name="Transient"/> says trying again may help (timeouts, a host away).</summary>
public sealed record ReportStepFailed(MigrationId MigrationId, OperationId Operation, string Code, string Message, bool Transient) : IMigrationCommand;

public sealed record ReportProgress(MigrationId MigrationId, OperationId Operation, long Done, long Total) : IMigrationCommand;

/// <summary>The timer the saga asked for (see <c>WakeAt</c>) fired: start the retries that are due.</summary>
public sealed record RetryDue(MigrationId MigrationId) : IMigrationCommand;

public sealed record CancelMigration(MigrationId MigrationId, string Reason = "cancelled by an operator") : IMigrationCommand;

public sealed record ResumeMigration(MigrationId MigrationId) : IMigrationCommand;

public sealed record AbandonMigration(MigrationId MigrationId) : IMigrationCommand;

/// <summary>
/// The migration's VM was reported stopped by its host (its QEMU exited: a shutdown, a crash, its host stopped). A pre-copy
/// whose mirror ran in that QEMU cannot reach its pivot: the saga fails it (stopping the copy in flight) instead of
/// copying on for nothing while the VM may not start. Ignored in any other state. Sent by the Coordinator node's watcher.
/// </summary>
public sealed record ReportVmStopped(MigrationId MigrationId, VmId Vm, string HostId) : IMigrationCommand;

/// <summary>An operator changes the migration's bandwidth limit (bytes per second, 0 = unlimited) while it runs.</summary>
public sealed record SetMigrationSpeed(MigrationId MigrationId, long BytesPerSecond) : IMigrationCommand;

// ---- events ----------------------------------------------------------------------------------

public sealed record MigrationRequested(MigrationId MigrationId, MigrationRequest Request, ValueList<DiskPlan> Disks, DateTimeOffset At) : IMigrationEvent;

public sealed record MigrationAdmitted(MigrationId MigrationId, DateTimeOffset At) : IMigrationEvent;

/// <summary>The intent of a step, persisted before its command is sent.</summary>
public sealed record StepStarted(MigrationId MigrationId, ImageId Image, MigrationStep Step, OperationId Operation, int Attempt, DateTimeOffset At) : IMigrationEvent;

public sealed record StepCompleted(MigrationId MigrationId, ImageId Image, MigrationStep Step, OperationId Operation, StepOutcome Outcome, DateTimeOffset At) : IMigrationEvent;

public sealed record StepFailed(MigrationId MigrationId, ImageId Image, MigrationStep Step, OperationId Operation, string Code, string Message, bool Transient, DateTimeOffset At) : IMigrationEvent;

public sealed record RetryScheduled(MigrationId MigrationId, ImageId Image, MigrationStep Step, int NextAttempt, TimeSpan Delay, DateTimeOffset DueAt, DateTimeOffset At) : IMigrationEvent;

/// <summary>The disk's VM now writes on the destination (pivot or live snapshot done): from here it only rolls forward.</summary>
public sealed record PointOfNoReturnPassed(MigrationId MigrationId, ImageId Image, DateTimeOffset At) : IMigrationEvent;

/// <summary>The migration will not complete: disks before their point of no return are rolled back.</summary>
public sealed record RollbackStarted(MigrationId MigrationId, TerminationKind Kind, string Code, string Message, DateTimeOffset At) : IMigrationEvent;

/// <summary>
/// A step's progress as its host reported it. Applied in memory and never journaled (the saga's actor keeps progress
/// volatile); journals written before that may hold it, and recovery still applies it.
/// </summary>
public sealed record ProgressReported(MigrationId MigrationId, ImageId Image, MigrationStep Step, long Done, long Total, DateTimeOffset At) : IMigrationEvent;

public enum DiskOutcome { Completed, RolledBack, Skipped, Abandoned }

public sealed record DiskFinished(MigrationId MigrationId, ImageId Image, DiskOutcome Outcome, DateTimeOffset At) : IMigrationEvent;

/// <summary>A step could not be finished after retries; the disk waits for an operator (resume or abandon).</summary>
public sealed record MigrationSuspended(MigrationId MigrationId, ImageId Image, MigrationStep Step, string Reason, DateTimeOffset At) : IMigrationEvent;

public sealed record MigrationResumed(MigrationId MigrationId, DateTimeOffset At) : IMigrationEvent;

public sealed record MigrationCompleted(MigrationId MigrationId, DateTimeOffset At) : IMigrationEvent;

public sealed record MigrationFailed(MigrationId MigrationId, string Code, string Message, DateTimeOffset At) : IMigrationEvent;

public sealed record MigrationCancelled(MigrationId MigrationId, string Reason, DateTimeOffset At) : IMigrationEvent;

/// <summary>
/// The bandwidth limit of the whole migration is now <paramref name="BytesPerSecond"/> (0 = unlimited): every step sent
/// from here on, a step sent again after a restart included, carries the new speed.
/// </summary>
public sealed record MigrationSpeedChanged(MigrationId MigrationId, long BytesPerSecond, DateTimeOffset At) : IMigrationEvent;

/// <summary>
/// An operator gave up on a suspended migration: each disk stays on the valid chain it runs on now. Before this event
/// the saga removed what it could of the other side (<see cref="AbandonStarted"/>); <paramref name="LeftBehind"/> names
/// what it could not, or was told to leave (null in journals older than it, and then left out of the journal form, so
/// events written before it keep their bytes).
/// </summary>
public sealed record MigrationAbandoned(MigrationId MigrationId, DateTimeOffset At,
    [property: System.Text.Json.Serialization.JsonIgnore(Condition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull)]
    ValueList<LeftBehind>? LeftBehind = null) : IMigrationEvent;

/// <summary>
/// An operator abandoned a suspended migration: its disks stay where they run, and the saga removes the copy on the
/// side they do not run on (the destination's copy before the switch, the source chain after it) with the same steps
/// a rollback or a completion uses. A removal that fails suspends the migration again: resume retries it, abandon
/// leaves it (named in <see cref="MigrationAbandoned.LeftBehind"/>).
/// </summary>
public sealed record AbandonStarted(MigrationId MigrationId, string Reason, DateTimeOffset At) : IMigrationEvent;

/// <summary>Volumes an abandoned migration left on a domain, and why; <paramref name="Remove"/> says how an operator removes them.</summary>
public sealed record LeftBehind(ImageId Image, DomainId Domain, string What, string Remove);

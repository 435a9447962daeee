using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;

namespace LiveMigration.Coordinator.Migration;

public abstract record MigrationStatus
{
    public sealed record New : MigrationStatus;
    /// <summary>Validated and recorded; waits for the per-host and per-domain limits to admit it.</summary>
    public sealed record Queued : MigrationStatus;
    public sealed record Running : MigrationStatus;
    public sealed record RollingBack(TerminationKind Kind, string Code, string Message) : MigrationStatus;
    public sealed record Suspended(ImageId Image, MigrationStep Step, string Reason) : MigrationStatus;
    public sealed record Completed : MigrationStatus;
    public sealed record Failed(string Code, string Message) : MigrationStatus;
    public sealed record Cancelled(string Reason) : MigrationStatus;
    public sealed record Abandoned : MigrationStatus;

    public bool IsFinished => this is Completed or Failed or Cancelled or Abandoned;
}

public enum DiskPhase
{
    /// <summary>Waits for a parallel slot.</summary>
    Pending,
    /// <summary>A step's command is out; its result is awaited.</summary>
    InFlight,
    /// <summary>Between a step's outcome and what follows it (only inside one batch of events).</summary>
    Idle,
    RetryWaiting,
    Suspended,
    Completed,
    RolledBack,
    Skipped,
    Abandoned,
}

/// <summary>When one attempt of one step ran, and how it ended (null while it runs); a switch's stall as its host timed it.</summary>
public sealed record StepTiming(MigrationStep Step, int Attempt, DateTimeOffset StartedAt, DateTimeOffset? EndedAt = null, string? Outcome = null,
    double? SwitchStallMs = null,
    [property: System.Text.Json.Serialization.JsonIgnore(Condition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull)]
    string? Note = null);

public sealed record DiskState(
    DiskPlan Plan,
    DiskPhase Phase = DiskPhase.Pending,
    MigrationStep? Step = null,
    int Attempt = 0,
    /// <summary>Failures of the current step since it started or was resumed: the retry budget.</summary>
    int FailuresInRow = 0,
    OperationId? Operation = null,
    DateTimeOffset? RetryDueAt = null,
    long Done = 0,
    long Total = 0,
    /// <summary>Forward steps sent at least once: what a rollback has to undo.</summary>
    ValueList<MigrationStep>? StartedForwardSteps = null,
    bool PassedPointOfNoReturn = false,
    string? LastError = null,
    ValueList<StepTiming>? Timings = null,
    /// <summary>The code of <see cref="LastError"/>: what a probed switch that never took effect failed with.</summary>
    string? LastErrorCode = null,
    /// <summary>What the disk's completed steps copied, all steps together (<see cref="Done"/> is the current step's).</summary>
    long Copied = 0)
{
    public ImageId Image => Plan.Image;
    public ValueList<MigrationStep> Started => StartedForwardSteps ?? ValueList<MigrationStep>.Empty;
    public ValueList<StepTiming> StepTimings => Timings ?? ValueList<StepTiming>.Empty;
    public bool IsFinished => Phase is DiskPhase.Completed or DiskPhase.RolledBack or DiskPhase.Skipped or DiskPhase.Abandoned;
    public bool IsRollingBack => Step is { } s && MigrationPlan.IsRollback(s);
    /// <summary>The switch (pivot / live snapshot) was sent: its outcome is unknown until the host answers.</summary>
    public bool SwitchInFlight => Phase == DiskPhase.InFlight && Step is { } s && MigrationPlan.IsSwitch(s);
    /// <summary>A switch's outcome is being probed, or the probe could not tell (suspended): nothing may be undone.</summary>
    public bool SwitchOutcomeUnknown => Step == MigrationStep.ProbeSwitch && !IsFinished;
    /// <summary>Takes a parallel slot: started and not finished.</summary>
    public bool IsActive => Phase is not DiskPhase.Pending && !IsFinished;

    /// <summary>Time left for the current step from its rate so far; null until there is a rate.</summary>
    public TimeSpan? EstimateRemaining(DateTimeOffset now)
    {
        if (Phase != DiskPhase.InFlight || Done <= 0 || Total <= Done || StepTimings.Count == 0) return null;
        var elapsed = now - StepTimings[^1].StartedAt;
        if (elapsed <= TimeSpan.Zero) return null;
        return TimeSpan.FromTicks((long)(elapsed.Ticks * (double)(Total - Done) / Done));
    }
}

/// <summary>
/// The migration saga's state: everything it knows, rebuilt from its events alone by <see cref="Apply"/>.
/// </summary>
public sealed record MigrationState(
    MigrationId Id,
    MigrationStatus Status,
    MigrationRequest? Request = null,
    ValueList<DiskState>? DiskStates = null,
    bool PointOfNoReturnPassed = false,
    DateTimeOffset? RequestedAt = null,
    DateTimeOffset? UpdatedAt = null,
    DateTimeOffset? FinishedAt = null,
    /// <summary>What an abandon left on the domains (null unless abandoned).</summary>
    ValueList<LeftBehind>? LeftBehind = null)
{
    public static MigrationState Initial(MigrationId id) => new(id, new MigrationStatus.New());

    public ValueList<DiskState> Disks => DiskStates ?? ValueList<DiskState>.Empty;

    /// <summary>Set by a rollback: the end the migration is heading for (cancelled or failed).</summary>
    public MigrationStatus.RollingBack? Termination { get; init; }

    public DiskState Disk(ImageId image) =>
        Disks.FirstOrDefault(d => d.Image == image)
        ?? throw new OperationFailedException(ErrorCodes.ImageNotFound, $"migration {Id} does not move disk {image}");

    /// <summary>The disk whose current step carries <paramref name="operation"/> and still waits for its result.</summary>
    public DiskState? DiskAwaiting(OperationId operation) =>
        Disks.FirstOrDefault(d => d.Phase == DiskPhase.InFlight && d.Operation == operation);

    public long BytesDone => Disks.Sum(d => d.Done);
    public long BytesTotal => Disks.Sum(d => d.Total);

    public static MigrationState Apply(MigrationState state, IMigrationEvent e)
    {
        var next = ApplyEvent(state, e) with { UpdatedAt = e.At };
        return next.Status.IsFinished && next.FinishedAt is null ? next with { FinishedAt = e.At } : next;
    }

    public static MigrationState Replay(MigrationId id, IEnumerable<IMigrationEvent> events) =>
        events.Aggregate(Initial(id), Apply);

    private static MigrationState ApplyEvent(MigrationState s, IMigrationEvent e) => e switch
    {
        MigrationRequested r => s with
        {
            Status = new MigrationStatus.Queued(),
            Request = r.Request,
            // A disk whose move makes a split chain whole writes on its destination already: never rolled back.
            DiskStates = r.Disks.Select(p => new DiskState(p, PassedPointOfNoReturn: p.MakesWhole)).ToValueList(),
            PointOfNoReturnPassed = r.Disks.Any(p => p.MakesWhole),
            RequestedAt = r.At,
        },
        MigrationAdmitted => s with { Status = new MigrationStatus.Running() },
        StepStarted started => s.UpdateDisk(started.Image, d => d with
        {
            Phase = DiskPhase.InFlight,
            Step = started.Step,
            Attempt = started.Attempt,
            FailuresInRow = d.Step == started.Step ? d.FailuresInRow : 0,
            Operation = started.Operation,
            RetryDueAt = null,
            Done = d.Step == started.Step ? d.Done : 0,
            Total = d.Step == started.Step ? d.Total : 0,
            StartedForwardSteps = MigrationPlan.IsRollback(started.Step) || started.Step == MigrationStep.ProbeSwitch || d.Started.Contains(started.Step)
                ? d.Started
                : d.Started.Add(started.Step),
            Timings = d.StepTimings.Add(new StepTiming(started.Step, started.Attempt, started.At)),
        }),
        StepCompleted done => s.UpdateDisk(done.Image, d => d with
        {
            Phase = DiskPhase.Idle,
            Done = done.Outcome.BytesCopied > 0 ? Math.Max(d.Done, done.Outcome.BytesCopied) : d.Done,
            Total = done.Outcome.BytesCopied > 0 ? Math.Max(d.Total, done.Outcome.BytesCopied) : d.Total,
            Copied = d.Copied + Math.Max(0, done.Outcome.BytesCopied),
            Timings = d.EndTiming(done.At, "completed", done.Outcome.SwitchStallMs, done.Outcome.Note),
        }),
        StepFailed failed => s.UpdateDisk(failed.Image, d => d with
        {
            Phase = DiskPhase.Idle,
            FailuresInRow = d.FailuresInRow + 1,
            LastError = $"{failed.Code}: {failed.Message}",
            LastErrorCode = failed.Code,
            Timings = d.EndTiming(failed.At, $"failed {failed.Code}"),
        }),
        RetryScheduled retry => s.UpdateDisk(retry.Image, d => d with { Phase = DiskPhase.RetryWaiting, RetryDueAt = retry.DueAt }),
        PointOfNoReturnPassed passed => s.UpdateDisk(passed.Image, d => d with { PassedPointOfNoReturn = true }) with { PointOfNoReturnPassed = true },
        RollbackStarted rb => s with
        {
            // A disk waiting for an operator keeps the migration suspended; the resume continues towards this end.
            Status = s.Status is MigrationStatus.Suspended ? s.Status : new MigrationStatus.RollingBack(rb.Kind, rb.Code, rb.Message),
            Termination = new MigrationStatus.RollingBack(rb.Kind, rb.Code, rb.Message),
        },
        ProgressReported p => s.UpdateDisk(p.Image, d => d with { Done = p.Done, Total = p.Total }),
        DiskFinished f => s.UpdateDisk(f.Image, d => d with
        {
            Phase = f.Outcome switch
            {
                DiskOutcome.Completed => DiskPhase.Completed,
                DiskOutcome.RolledBack => DiskPhase.RolledBack,
                DiskOutcome.Abandoned => DiskPhase.Abandoned,
                _ => DiskPhase.Skipped,
            },
            RetryDueAt = null,
        }),
        MigrationSuspended suspended => s.UpdateDisk(suspended.Image, d => d with { Phase = DiskPhase.Suspended, RetryDueAt = null })
            with { Status = new MigrationStatus.Suspended(suspended.Image, suspended.Step, suspended.Reason) },
        MigrationResumed => s with
        {
            Status = s.Termination ?? (MigrationStatus)new MigrationStatus.Running(),
            // A resumed step gets its whole retry budget again.
            DiskStates = s.Disks.Select(d => d.Phase == DiskPhase.Suspended ? d with { Phase = DiskPhase.Idle, FailuresInRow = 0 } : d).ToValueList(),
        },
        MigrationSpeedChanged speed => s with { Request = s.Request! with { BandwidthBytesPerSecond = speed.BytesPerSecond } },
        MigrationCompleted => s with { Status = new MigrationStatus.Completed() },
        MigrationFailed f => s with { Status = new MigrationStatus.Failed(f.Code, f.Message) },
        MigrationCancelled c => s with
        {
            Status = new MigrationStatus.Cancelled(c.Reason),
            DiskStates = s.Disks.Select(d => d.Phase == DiskPhase.Pending ? d with { Phase = DiskPhase.Skipped } : d).ToValueList(),
        },
        AbandonStarted a => s with
        {
            // The operator's decision: like a resume, every suspended disk goes on, now towards removing the other side.
            Status = new MigrationStatus.RollingBack(TerminationKind.Abandon, MigrationErrorCodes.Abandoned, a.Reason),
            Termination = new MigrationStatus.RollingBack(TerminationKind.Abandon, MigrationErrorCodes.Abandoned, a.Reason),
            DiskStates = s.Disks.Select(d => d.Phase == DiskPhase.Suspended ? d with { Phase = DiskPhase.Idle, FailuresInRow = 0 } : d).ToValueList(),
        },
        MigrationAbandoned abandoned => s with
        {
            Status = new MigrationStatus.Abandoned(),
            LeftBehind = abandoned.LeftBehind,
            DiskStates = s.Disks.Select(d => d.IsFinished ? d : d with { Phase = DiskPhase.Abandoned, RetryDueAt = null }).ToValueList(),
        },
        _ => throw new ArgumentException($"migration {s.Id} has no rule for event {e.GetType().Name}", nameof(e)),
    };

    private MigrationState UpdateDisk(ImageId image, Func<DiskState, DiskState> change)
    {
        for (var i = 0; i < Disks.Count; i++)
            if (Disks[i].Image == image)
                return this with { DiskStates = Disks.SetItem(i, change(Disks[i])) };
        throw new ArgumentException($"migration {Id} has no disk {image}", nameof(image));
    }
}

internal static class DiskStateTimings
{
    public static ValueList<StepTiming> EndTiming(this DiskState disk, DateTimeOffset at, string outcome, double? switchStallMs = null, string? note = null)
    {
        var timings = disk.StepTimings;
        return timings.Count == 0 || timings[^1].EndedAt is not null
            ? timings
            : timings.SetItem(timings.Count - 1, timings[^1] with { EndedAt = at, Outcome = outcome, SwitchStallMs = switchStallMs, Note = note });
    }
}

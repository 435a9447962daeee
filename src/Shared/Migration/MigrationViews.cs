using LiveMigration.Shared.Model;

namespace LiveMigration.Shared.Migration;

/// <summary>A question to one migration saga, routed to it by its id like a command; it changes nothing.</summary>
public interface IMigrationQuery
{
    MigrationId MigrationId { get; }
}

/// <summary>
/// What a migration saga sends back or publishes: answers to operator commands and queries, and its status
/// changes. They cross the cluster whenever the requester (the API) runs on another Coordinator than the entity.
/// </summary>
public interface IMigrationReply
{
    MigrationId MigrationId { get; }
}

/// <summary>An operator command (start, cancel, resume, abandon) was taken: its events are persisted.</summary>
public sealed record MigrationCommandAccepted(MigrationId MigrationId, string Command, string Status) : IMigrationReply;

/// <summary>An operator command was refused with nothing changed; <see cref="Code"/> is an <see cref="ErrorCodes"/> or <see cref="MigrationErrorCodes"/> value.</summary>
public sealed record MigrationCommandRefused(MigrationId MigrationId, string Code, string Message) : IMigrationReply;

/// <summary>Asks a migration for its view; answered with <see cref="MigrationStateReply"/>.</summary>
public sealed record GetMigrationState(MigrationId MigrationId) : IMigrationQuery;

/// <summary>The saga's view and how many events it has persisted (0: nothing was ever recorded, the migration does not exist).</summary>
public sealed record MigrationStateReply(MigrationView View, long LastSequenceNr) : IMigrationReply
{
    public MigrationId MigrationId => View.Id;
    public bool Exists => LastSequenceNr > 0;
}

/// <summary>Why a migration stopped or is stopping: an <see cref="ErrorCodes"/> or <see cref="MigrationErrorCodes"/> code and what happened.</summary>
public sealed record MigrationError(string Code, string Message);

/// <summary>When one attempt of one step ran, and how it ended (null while it runs); for a switch (pivot, live snapshot,
/// backing switch) the milliseconds its host's hypervisor held the drive, which bound the guest's stall; what the host
/// decided on its own during the step (<see cref="StepOutcome.Note"/>).</summary>
public sealed record StepTimingView(MigrationStep Step, int Attempt, DateTimeOffset StartedAt, DateTimeOffset? EndedAt, string? Outcome,
    double? SwitchStallMs = null, string? Note = null);

/// <summary>
/// One disk of a migration as operators see it; <see cref="Phase"/> is the saga's disk phase by name; <see cref="Done"/> and
/// <see cref="Total"/> the current step's progress, <see cref="Copied"/> what its completed steps copied together.
/// </summary>
public sealed record DiskView(
    ImageId Image,
    DomainId Source,
    DomainId Destination,
    string Phase,
    MigrationStep? Step,
    int Attempt,
    long Done,
    long Total,
    TimeSpan? Remaining,
    string? LastError,
    ValueList<StepTimingView> Timings,
    long Copied = 0,
    /// <summary>The move makes a split chain whole (<see cref="DiskPlan.MakesWhole"/>): the leaf was on the destination all along.</summary>
    [property: System.Text.Json.Serialization.JsonIgnore(Condition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingDefault)]
    bool MakesWhole = false);

/// <summary>
/// A migration as the API and the CLI show it: what crosses the cluster instead of the saga's whole state, so the
/// state may change shape without a wire version. <see cref="Vm"/> and <see cref="Strategy"/> are null before a
/// request was recorded.
/// </summary>
/// <param name="Limits">What the operator asked the copies to keep to (the speed as <c>set-speed</c> last changed it); null before a
/// request was recorded.</param>
public sealed record MigrationView(
    MigrationId Id,
    VmId? Vm,
    string Status,
    bool Finished,
    MigrationStrategy? Strategy,
    ValueList<DiskView> Disks,
    MigrationError? Error,
    DateTimeOffset? RequestedAt,
    DateTimeOffset? UpdatedAt,
    DateTimeOffset? FinishedAt,
    ValueList<LeftBehind>? LeftBehind = null,
    [property: System.Text.Json.Serialization.JsonIgnore(Condition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull)]
    CopyLimits? Limits = null);

/// <summary>A migration's copy limits: its speed in bytes per second (0: none) shared by the disks moving at once, its mirrors' copy mode, and how many disks move at once.</summary>
public sealed record CopyLimits(long BandwidthBytesPerSecond, CopyMode CopyMode, int MaxParallelDisks);

/// <summary>One disk's progress as <see cref="MigrationStatusChanged"/> carries it; <see cref="Phase"/> is the disk phase by name.</summary>
public sealed record DiskProgress(ImageId Image, string Phase, MigrationStep? Step, long Done, long Total, TimeSpan? Remaining);

/// <summary>
/// Published after every change a migration persists, on the local EventStream and (in the cluster) on the
/// DistributedPubSub topic <see cref="Topic"/>, so the API can stream status and progress and the inventory
/// frees the disks of a finished migration.
/// </summary>
/// <param name="FinalView">The whole view once the migration finished (it never changes again): readers keep it instead of
/// asking the saga, which would wake it from its journal just to say the same.</param>
public sealed record MigrationStatusChanged(MigrationId MigrationId, string Status, ValueList<DiskProgress> Disks, DateTimeOffset At, bool Finished = false,
    MigrationView? FinalView = null)
    : IMigrationReply
{
    public const string Topic = "migrations";
}

/// <summary>The kinds of status a list of migrations narrows to (API <c>?status=</c>, <c>lsm migrations --status</c>).</summary>
public static class MigrationStatusKinds
{
    /// <summary>An abandon still in progress is rollingback, as the table's "abandoning" is.</summary>
    public static readonly IReadOnlyList<string> All = ["queued", "running", "rollingback", "suspended", "completed", "failed", "cancelled", "abandoned"];
}

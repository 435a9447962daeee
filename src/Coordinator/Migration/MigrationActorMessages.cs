using Akka.Actor;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;

namespace LiveMigration.Coordinator.Migration;

/// <summary>An operator command (start, cancel, resume, abandon) was taken: its events are persisted.</summary>
public sealed record MigrationCommandAccepted(MigrationId MigrationId, string Command, string Status);

/// <summary>An operator command was refused with nothing changed; <see cref="Code"/> is an <see cref="ErrorCodes"/> or <see cref="MigrationErrorCodes"/> value.</summary>
public sealed record MigrationCommandRefused(MigrationId MigrationId, string Code, string Message);

/// <summary>Asks a migration for its state; answered with <see cref="MigrationStateReply"/>.</summary>
public sealed record GetMigrationState(MigrationId MigrationId);

/// <summary>The saga's state and how many events it has persisted (0: nothing was ever recorded).</summary>
public sealed record MigrationStateReply(MigrationState State, long LastSequenceNr);

/// <summary>One disk's progress as <see cref="MigrationStatusChanged"/> carries it.</summary>
public sealed record DiskProgress(ImageId Image, DiskPhase Phase, MigrationStep? Step, long Done, long Total, TimeSpan? Remaining);

/// <summary>
/// Published after every change a migration persists, on the local EventStream and (in the cluster) on the
/// DistributedPubSub topic <see cref="Topic"/>, so the API can stream status and progress.
/// </summary>
public sealed record MigrationStatusChanged(MigrationId MigrationId, string Status, ValueList<DiskProgress> Disks, DateTimeOffset At, bool Finished = false)
{
    public const string Topic = "migrations";

    public static MigrationStatusChanged From(MigrationState state, DateTimeOffset now) =>
        new(state.Id, MigrationDecider.Describe(state.Status),
            state.Disks.Select(d => new DiskProgress(d.Image, d.Phase, d.Step, d.Done, d.Total, d.EstimateRemaining(now))).ToValueList(),
            now, state.Status.IsFinished);
}

/// <summary>
/// How a migration reaches the hosts; the Coordinator wires the SPM singleton proxy and the HSM lookup.
/// </summary>
public interface IMigrationHosts
{
    /// <summary>The SPM (singleton proxy): pool metadata and copies.</summary>
    IActorRef Spm { get; }

    /// <summary>The HSM of the host that runs <paramref name="vm"/>, or null while unknown (the step deadline sends again later).</summary>
    IActorRef? HsmFor(VmId vm);

    /// <summary>The id of the host that runs <paramref name="vm"/>, for the per-host limit; null while unknown.</summary>
    string? HostOf(VmId vm);
}

/// <summary>Timing of one migration actor.</summary>
public sealed record MigrationActorSettings(
    /// <summary>A step with no answer (result or progress) for this long is sent again with the same operation id.</summary>
    TimeSpan StepDeadline,
    /// <summary>A snapshot of the state every this many events; nothing is ever deleted.</summary>
    int SnapshotEvery = 100,
    /// <summary>Also publish <see cref="MigrationStatusChanged"/> on the DistributedPubSub topic (needs a cluster).</summary>
    bool PublishToCluster = false,
    /// <summary>Stop through the shard once finished (or never started), so remember-entities does not restart it.</summary>
    bool PassivateWhenIdle = false)
{
    public static readonly MigrationActorSettings Default = new(TimeSpan.FromSeconds(30));
}

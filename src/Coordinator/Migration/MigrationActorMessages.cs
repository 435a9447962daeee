using Akka.Actor;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;

namespace LiveMigration.Coordinator.Migration;

/// <summary>
/// The saga's state turned into what crosses the cluster: the <see cref="MigrationView"/> a query answers and the
/// <see cref="MigrationStatusChanged"/> it publishes. The state itself stays in this process (and its journal).
/// </summary>
public static class MigrationViews
{
    public static MigrationView ViewOf(MigrationState state, DateTimeOffset now) => new(
        state.Id,
        state.Request?.Vm,
        MigrationDecider.Describe(state.Status),
        state.Status.IsFinished,
        state.Request?.Strategy,
        state.Disks.Select(d => new DiskView(
            d.Image, d.Plan.Source, d.Plan.Destination, d.Phase.ToString(), d.Step, d.Attempt, d.Done, d.Total,
            d.EstimateRemaining(now), d.LastError,
            d.StepTimings.Select(t => new StepTimingView(t.Step, t.Attempt, t.StartedAt, t.EndedAt, t.Outcome, t.SwitchStallMs, t.Note)).ToValueList(),
            d.Copied, d.Plan.MakesWhole)).ToValueList(),
        ErrorOf(state.Status),
        state.RequestedAt,
        state.UpdatedAt,
        state.FinishedAt,
        state.LeftBehind,
        state.Request is { } request ? new CopyLimits(request.BandwidthBytesPerSecond, request.CopyMode, request.MaxParallelDisks) : null);

    public static MigrationStatusChanged StatusChangedOf(MigrationState state, DateTimeOffset now) =>
        new(state.Id, MigrationDecider.Describe(state.Status),
            state.Disks.Select(d => new DiskProgress(d.Image, d.Phase.ToString(), d.Step, d.Done, d.Total, d.EstimateRemaining(now))).ToValueList(),
            now, state.Status.IsFinished);

    private static MigrationError? ErrorOf(MigrationStatus status) => status switch
    {
        MigrationStatus.Failed f => new MigrationError(f.Code, f.Message),
        MigrationStatus.RollingBack r => new MigrationError(r.Code, r.Message),
        MigrationStatus.Cancelled c => new MigrationError(MigrationErrorCodes.Cancelled, c.Reason),
        MigrationStatus.Suspended s => new MigrationError(MigrationErrorCodes.Suspended, s.Reason),
        _ => null,
    };
}

/// <summary>A saga on this node asks to hear of hosts that (re)join; local only.</summary>
public sealed record WatchHostRejoins(IActorRef Saga) : INoSerializationVerificationNeeded;

/// <summary>
/// A saga on this node asks to hear when its VM is reported stopped (<see cref="ReportVmStopped"/>, at once when it is
/// already); local only. <see cref="UnwatchHostRejoins"/> ends this too.
/// </summary>
public sealed record WatchVmStops(IActorRef Saga, MigrationId Migration, VmId Vm) : INoSerializationVerificationNeeded;

/// <summary>
/// The admission limits started anew (<see cref="AdmissionRestarted"/>): a running saga says again what it holds, a queued
/// one asks again, to <paramref name="Limits"/> itself (this node's singleton proxy may still name the limits that moved);
/// local only (this node's <see cref="Hosts.HostRejoinWatcher"/> tells its sagas).
/// </summary>
public sealed record AnnounceAdmission(IActorRef Limits) : INoSerializationVerificationNeeded;

/// <summary>The saga stopped; local only.</summary>
public sealed record UnwatchHostRejoins(IActorRef Saga) : INoSerializationVerificationNeeded;

/// <summary>
/// A host joined the cluster (again): steps its previous incarnation had are lost. <see cref="HostId"/> is null when
/// this node has no report from that address yet (then every HSM step may be its); an SPM-capable host may now hold
/// the SPM. Local only.
/// </summary>
public sealed record HostRejoined(string Address, string? HostId, bool SpmCapable) : INoSerializationVerificationNeeded
{
    /// <summary>Whether a step for <paramref name="role"/> on the VM's host <paramref name="hostOfVm"/> may have been lost with it.</summary>
    public bool Concerns(HostRole role, string? hostOfVm) =>
        role == HostRole.Spm ? SpmCapable : HostId is null || hostOfVm is null || hostOfVm == HostId;
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

    /// <summary>
    /// The host that runs <paramref name="vm"/> as the inventory has it, for when <see cref="HostOf"/> does not know yet:
    /// a Coordinator that just started learns hosts only from changes, and an idle VM's report changes nothing.
    /// Null when the inventory does not know either; fails when it does not answer.
    /// </summary>
    Task<string?> LocateAsync(VmId vm) => Task.FromResult(HostOf(vm));

    /// <summary>This node's watcher of hosts that (re)join (a <c>HostRejoinWatcher</c>); null outside a cluster.</summary>
    IActorRef? RejoinWatcher => null;
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
    bool PassivateWhenIdle = false,
    /// <summary>
    /// How long a saga recovered while Queued waits before it asks to run. The admission limits keep their state in
    /// memory: when they restarted with a Coordinator, the migrations that were running re-announce their slots as they
    /// recover, and a queued one that asked first would be admitted beside them (found by hand: three on a host whose
    /// limit is two, after a SIGKILL of the Coordinator). Null: <see cref="DefaultRecoveredQueuedAskDelay"/>.
    /// </summary>
    TimeSpan? RecoveredQueuedAskDelay = null)
{
    /// <summary>Remembered sagas recover together within a few seconds (1,000 in 2.5–3.5 s in the control-plane bench).</summary>
    public static readonly TimeSpan DefaultRecoveredQueuedAskDelay = TimeSpan.FromSeconds(5);

    // 10 s: a step lost with a host that went away is sent again soon; a long step answered late is harmless (hosts attach repeats).
    public static readonly MigrationActorSettings Default = new(TimeSpan.FromSeconds(10));
}

using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using Akka;
using Akka.Actor;
using Akka.Coordination;
using Akka.Event;

namespace LiveMigration.HostNode.Spm;

/// <summary>
/// The SPM lease (<see cref="PoolLease"/>) as an Akka.Coordination <see cref="Lease"/>, for the SPM cluster singleton
/// (its <c>use-lease</c>): the singleton does not start on a node before that node holds the lease, and stops when it
/// is lost. Loaded by <see cref="LeaseProvider"/> from a config block such as
/// <code>
/// lsm.spm-lease {
///   lease-class = "LiveMigration.HostNode.Spm.FileLease, LiveMigration.HostNode"
///   path = "/shared/pool/spm.lease"   # on the pool's shared storage
///   heartbeat-timeout = 30s           # the lease period
///   margin = 5s                       # added to the period before an acquirer takes it over
///   heartbeat-interval = 10s
///   lease-operation-timeout = 60s     # above period + margin: an acquisition watches that long
/// }
/// </code>
/// One <see cref="PoolLease"/> per lease file and owner in the process, shared with the SPM's storage code
/// through <see cref="For"/>, so the fencing check and the singleton see the same generation; the SPM actor finds the
/// one its singleton manager acquired with <see cref="MadeIn"/>.
/// </summary>
public sealed class FileLease : Lease
{
    private static readonly Dictionary<(string Path, string Owner), PoolLease> Leases = new();
    /// <summary>The lease each actor system's FileLease uses, by file: what the singleton it guards must fence its writes with.</summary>
    private static readonly ConditionalWeakTable<ActorSystem, ConcurrentDictionary<string, PoolLease>> BySystem = new();
    private readonly PoolLease _lease;
    private readonly ILoggingAdapter _log;
    private readonly List<Task> _releases = [];

    public FileLease(LeaseSettings settings, ExtendedActorSystem system) : base(settings)
    {
        var config = settings.LeaseConfig;
        var path = config.GetString("path", null)
                   ?? throw new ArgumentException($"lease {settings.LeaseName}: 'path' (the lease file on the pool's shared storage) is required");
        var period = settings.TimeoutSettings.HeartbeatTimeout;
        var margin = config.GetTimeSpan("margin", TimeSpan.FromTicks(period.Ticks / 6), allowInfinite: false);
        _lease = For(path, settings.OwnerName, period, margin);
        _log = Logging.GetLogger(system, typeof(FileLease));
        CoordinatedShutdown.Get(system).AddTask(CoordinatedShutdown.PhaseBeforeActorSystemTerminate, "spm-lease-released", ReleasesEndedAsync);
        // made on every SPM-capable node by its singleton manager: each reads the record from now on, so the one that takes
        // over has counted the holder's silence already
        _lease.StartObserving();
        BySystem.GetOrCreateValue(system)[Path.GetFullPath(path)] = _lease;
    }

    /// <summary>
    /// The lease that <paramref name="system"/>'s FileLease for <paramref name="path"/> works with (the singleton manager
    /// makes it before it starts the singleton), or null when no FileLease for that file was made there: a singleton
    /// started without <c>use-lease</c>.
    /// </summary>
    public static PoolLease? MadeIn(ActorSystem system, string path) =>
        BySystem.TryGetValue(system, out var leases) && leases.TryGetValue(Path.GetFullPath(path), out var lease) ? lease : null;

    /// <summary>The process's lease object for this file and owner (made on first use).</summary>
    public static PoolLease For(string path, string owner, TimeSpan period, TimeSpan margin)
    {
        var key = (Path.GetFullPath(path), owner);
        lock (Leases)
            return Leases.TryGetValue(key, out var lease) ? lease : Leases[key] = new PoolLease(path, owner, period, margin);
    }

    public override Task<bool> Acquire() => _lease.TryAcquireAsync();

    public override Task<bool> Acquire(Action<Exception> leaseLostCallback) =>
        _lease.TryAcquireAsync(why => leaseLostCallback(why ?? new LeaseException($"SPM lease {Settings.LeaseName} lost")));

    public override bool CheckLease() => _lease.IsHeld;

    public override async Task<bool> Release()
    {
        var changes = _lease.ChangesInProgress;
        if (changes > 0)
            _log.Info("Releasing the SPM lease {0} once the {1} storage change(s) it fenced that are under way ended (the SPM stops them)",
                Settings.LeaseName, changes);
        var release = _lease.ReleaseAsync();
        lock (_releases) _releases.Add(release);
        // A change that does not end keeps the lease (and so the SPM role) from every other host: said, not waited on silently.
        while (await Task.WhenAny(release, Task.Delay(Settings.TimeoutSettings.HeartbeatTimeout)) != release)
            _log.Warning("The SPM lease {0} is still kept: {1} storage change(s) it fenced are still under way{2}", Settings.LeaseName,
                _lease.ChangesInProgress, _lease.RenewalError is { } error ? $"; its last renewal failed: {error}" : "");
        await release;
        lock (_releases) _releases.Remove(release);
        _log.Info("Gave up the SPM lease {0} (its record freed unless another holder had it already)", Settings.LeaseName);
        return true;
    }

    /// <summary>
    /// Holds the actor system's termination (the process's exit) until the lease's releases have ended, within the phase's
    /// timeout: a node leaving gracefully hands its SPM over first, and a process that exited mid-release would leave its
    /// record held (the next SPM then waits a period) and, with the exit before its copies were killed, a qemu-img writing.
    /// </summary>
    private async Task<Done> ReleasesEndedAsync()
    {
        Task[] releases;
        lock (_releases) releases = [.. _releases];
        try
        {
            await Task.WhenAll(releases.Append(_lease.ChangesEnded));
        }
        catch (Exception e)
        {
            _log.Warning("The SPM lease {0} was not given up cleanly before this node stopped: {1}", Settings.LeaseName, e.Message);
        }
        return Done.Instance;
    }
}

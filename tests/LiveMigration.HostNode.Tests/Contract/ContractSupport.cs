using System.Collections.Concurrent;
using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Storage;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Contract;

/// <summary>A 3-volume chain base → middle → leaf, seeded with different data in each layer.</summary>
public sealed record SeededChain(IStorageDomain Domain, ImageId Image, VolumeId Base, VolumeId Middle, VolumeId Leaf, long Capacity)
{
    public IReadOnlyList<VolumeId> Ids => [Base, Middle, Leaf];
    public IReadOnlyList<VolumeId> Internals => [Base, Middle];

    /// <summary>How a volume of this image on <paramref name="domain"/> is opened by the hypervisor.</summary>
    public ChainLayer LayerOn(IStorageDomain domain, VolumeId volume) =>
        new(new VolumeRef(domain.Id, volume), domain.Locate(Image, volume), VolumeFormat.Cow);

    public IReadOnlyList<string> PathsOn(IStorageDomain domain, params VolumeId[] volumes) =>
        volumes.Select(v => domain.Locate(Image, v)).ToList();
}

/// <summary>Seeds chains through the port, so only the writing of data is left to the kind under test.</summary>
public static class ChainSeeder
{
    public const long Capacity = 64L << 20;
    public const long LayerDataBytes = 1L << 20;

    /// <summary>
    /// Creates base → middle → leaf (all COW, LEGAL) on <paramref name="domain"/> and writes 1 MiB of a
    /// different pattern into a different region of each layer, leaving the rest sparse. The 1 MiB goes in
    /// two runs with a gap between them: a QEMU mirror copies one contiguous dirty run per iteration and
    /// applies its speed limit only between iterations, so a single run would be READY at once at any speed.
    /// </summary>
    public static async Task<SeededChain> SeedAsync(IStorageDomain domain,
        Func<IStorageDomain, ImageId, VolumeId, long, long, byte, Task> writeLayerData)
    {
        var image = ImageId.New();
        VolumeId[] ids = [VolumeId.New(), VolumeId.New(), VolumeId.New()];
        VolumeRef? parent = null;
        for (var i = 0; i < ids.Length; i++)
        {
            await domain.CreateVolumeAsync(new NewVolume(image, ids[i], VolumeFormat.Cow, Capacity, parent));
            var region = i * (16L << 20);
            await writeLayerData(domain, image, ids[i], region, LayerDataBytes / 2, (byte)(0x41 + i));
            await writeLayerData(domain, image, ids[i], region + LayerDataBytes, LayerDataBytes / 2, (byte)(0x41 + i));
            parent = new VolumeRef(domain.Id, ids[i]);
        }
        return new SeededChain(domain, image, ids[0], ids[1], ids[2], Capacity);
    }
}

/// <summary>Collects a hypervisor's events and lets a test await one (events are pushed; nothing polls).</summary>
public sealed class HypervisorEventLog : IDisposable
{
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(30);
    private readonly IHypervisor _hypervisor;
    private readonly object _gate = new();
    private readonly List<HypervisorEvent> _events = new();
    private readonly List<(Func<HypervisorEvent, bool> Match, TaskCompletionSource<HypervisorEvent> Done)> _waiters = new();

    public HypervisorEventLog(IHypervisor hypervisor)
    {
        _hypervisor = hypervisor;
        _hypervisor.EventRaised += OnEvent;
    }

    public IReadOnlyList<HypervisorEvent> Events
    {
        get { lock (_gate) return _events.ToList(); }
    }

    /// <summary>The first event (already seen or still to come) of type <typeparamref name="T"/> that matches.</summary>
    public async Task<T> WaitForAsync<T>(Func<T, bool>? match = null, TimeSpan? timeout = null) where T : HypervisorEvent
    {
        bool Matches(HypervisorEvent e) => e is T t && (match?.Invoke(t) ?? true);
        TaskCompletionSource<HypervisorEvent> done;
        lock (_gate)
        {
            if (_events.FirstOrDefault(Matches) is T seen) return seen;
            done = new TaskCompletionSource<HypervisorEvent>(TaskCreationOptions.RunContinuationsAsynchronously);
            _waiters.Add((Matches, done));
        }
        var limit = timeout ?? DefaultTimeout;
        try
        {
            return (T)await done.Task.WaitAsync(limit);
        }
        catch (TimeoutException)
        {
            throw new TimeoutException($"no {typeof(T).Name} within {limit}; events seen: {string.Join(", ", Events)}");
        }
    }

    public void Dispose() => _hypervisor.EventRaised -= OnEvent;

    private void OnEvent(HypervisorEvent e)
    {
        lock (_gate)
        {
            _events.Add(e);
            foreach (var w in _waiters.Where(w => w.Match(e)).ToList())
            {
                _waiters.Remove(w);
                w.Done.TrySetResult(e);
            }
        }
    }
}

/// <summary>An <see cref="IProgress{T}"/> that records synchronously (Progress&lt;T&gt; posts later, which races the assertions).</summary>
public sealed class RecordingProgress<T> : IProgress<T>
{
    private readonly ConcurrentQueue<T> _reports = new();
    public IReadOnlyList<T> Reports => _reports.ToList();
    public void Report(T value) => _reports.Enqueue(value);
}

public static class ContractAssert
{
    public static async Task<OperationFailedException> FailsWithAsync(string code, Func<Task> call)
    {
        var e = await Assert.ThrowsAsync<OperationFailedException>(call);
        Assert.True(e.Code == code, $"expected {code}, got {e.Code}: {e.Message}");
        return e;
    }
}

/// <summary>The migration the tests' clones run for, when a test needs no second one (DESIGN §7 invariant 3: every clone has an owner).</summary>
public static class TestOwners
{
    public static readonly VolumeOwner Default = new(MigrationId.New(), VolumeOwner.Unfenced);

    public static VolumeOwner New() => new(MigrationId.New(), VolumeOwner.Unfenced);
}

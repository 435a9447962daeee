using System.Collections.Concurrent;

namespace LiveMigration.HostNode.Concurrency;

/// <summary>
/// One holder at a time per key, different keys side by side: a VM in a hypervisor adapter (a pivot and a cancel of one
/// drive must not interleave on QEMU), an image folder in a file domain, a drive's switches and probe on its host, the
/// kept-or-undone decision of a disk's copy on the SPM. The gates are never removed: one per key ever seen is small.
/// </summary>
public sealed class KeyedLocks<TKey>(IEqualityComparer<TKey>? comparer = null) where TKey : notnull
{
    private readonly ConcurrentDictionary<TKey, SemaphoreSlim> _gates = new(comparer);

    /// <summary>Waits for the key's turn; disposing the answer lets the next holder in.</summary>
    public async Task<IDisposable> LockAsync(TKey key, CancellationToken ct)
    {
        var gate = _gates.GetOrAdd(key, _ => new SemaphoreSlim(1, 1));
        await gate.WaitAsync(ct);
        return new Releaser(gate);
    }

    private sealed class Releaser(SemaphoreSlim gate) : IDisposable
    {
        private int _released;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) == 0) gate.Release();
        }
    }
}

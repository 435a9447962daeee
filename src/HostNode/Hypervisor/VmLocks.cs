using System.Collections.Concurrent;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Hypervisor;

/// <summary>
/// One call at a time per VM in a hypervisor adapter: a pivot and a cancel of the same drive, or a stop during a
/// snapshot, must not interleave on QEMU or libvirt. Calls on different VMs run side by side.
/// </summary>
public sealed class VmLocks
{
    private readonly ConcurrentDictionary<VmId, SemaphoreSlim> _gates = new();

    /// <summary>Waits for the VM's turn; disposing the answer lets the next call in.</summary>
    public async Task<IDisposable> LockAsync(VmId id, CancellationToken ct)
    {
        var gate = _gates.GetOrAdd(id, _ => new SemaphoreSlim(1, 1));
        await gate.WaitAsync(ct);
        return new Releaser(gate);
    }

    private sealed class Releaser(SemaphoreSlim gate) : IDisposable
    {
        public void Dispose() => gate.Release();
    }
}

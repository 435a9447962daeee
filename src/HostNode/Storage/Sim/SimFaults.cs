using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Storage.Sim;

/// <summary>
/// Faults a test injects into a sim adapter. Operations are named by the port's method names,
/// e.g. <c>nameof(IStorageDomain.CopyVolumeDataAsync)</c> or <c>nameof(IHypervisor.PivotAsync)</c>.
/// Each injected fault applies to one later call of that operation, in the order injected.
/// </summary>
/// <remarks>
/// Where a fault strikes: "long" operations (a storage copy, a mirror job) are hit part-way, at
/// the given fraction of their data; every other operation is hit on entry, before it changes anything
/// (except a dying delete, which has marked its volumes ILLEGAL first, as a crash half-way would).
/// </remarks>
public sealed class SimFaults
{
    private readonly object _gate = new();
    private readonly Dictionary<string, Queue<SimFault>> _pending = new(StringComparer.Ordinal);

    /// <summary>The next <paramref name="times"/> calls of <paramref name="operation"/> fail on entry with <paramref name="code"/>, changing nothing.</summary>
    public void FailNext(string operation, int times = 1, string code = ErrorCodes.InjectedFault)
    {
        if (times < 1) throw new ArgumentOutOfRangeException(nameof(times), times, "must be at least 1");
        for (var i = 0; i < times; i++) Enqueue(operation, new SimFault.Fail(code));
    }

    /// <summary>
    /// The next call of <paramref name="operation"/> dies part-way: a copy throws IO_ERROR and leaves
    /// its twin ILLEGAL with partial data; a delete leaves its volumes ILLEGAL; on a hypervisor the VM's
    /// QEMU dies (a mirror at that fraction of its data), so the call fails with VM_NOT_RUNNING.
    /// </summary>
    public void DieNext(string operation, double atFraction = 0.5) =>
        Enqueue(operation, new SimFault.Die(CheckFraction(atFraction)));

    /// <summary>
    /// The next call of <paramref name="operation"/> runs out of space part-way (ENOSPC): a copy throws
    /// NOT_ENOUGH_SPACE and leaves its twin ILLEGAL; a mirror job fails (BlockJobFailed).
    /// </summary>
    public void OutOfSpaceNext(string operation, double atFraction = 0.5) =>
        Enqueue(operation, new SimFault.OutOfSpace(CheckFraction(atFraction)));

    /// <summary>The next call of <paramref name="operation"/> blocks (a copy or mirror part-way) until the returned stall is released.</summary>
    public SimStall StallNext(string operation, double atFraction = 0.5)
    {
        var stall = new SimStall(operation);
        Enqueue(operation, new SimFault.Stall(CheckFraction(atFraction), stall));
        return stall;
    }

    /// <summary>Forgets every fault not yet triggered.</summary>
    public void Clear()
    {
        lock (_gate) _pending.Clear();
    }

    /// <summary>How many injected faults are still waiting for their operation.</summary>
    public int PendingCount
    {
        get { lock (_gate) return _pending.Values.Sum(q => q.Count); }
    }

    internal SimFault? Take(string operation)
    {
        lock (_gate)
        {
            if (!_pending.TryGetValue(operation, out var queue) || queue.Count == 0) return null;
            var fault = queue.Dequeue();
            if (queue.Count == 0) _pending.Remove(operation);
            return fault;
        }
    }

    /// <summary>
    /// Applies the fault of an operation that is hit on entry: throws for Fail/Die/OutOfSpace,
    /// waits for a stall's release.
    /// </summary>
    internal async Task EnterAsync(string operation, string target, CancellationToken ct)
    {
        switch (Take(operation))
        {
            case null:
                return;
            case SimFault.Fail f:
                throw new OperationFailedException(f.Code, $"injected fault: {operation} on {target} failed");
            case SimFault.Die:
                throw new OperationFailedException(ErrorCodes.IoError, $"injected fault: {operation} on {target} died");
            case SimFault.OutOfSpace:
                throw new OperationFailedException(ErrorCodes.NotEnoughSpace, $"injected fault: {operation} on {target} ran out of space");
            case SimFault.Stall s:
                await s.Handle.BlockAsync(ct);
                return;
        }
    }

    private void Enqueue(string operation, SimFault fault)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(operation);
        lock (_gate)
        {
            if (!_pending.TryGetValue(operation, out var queue)) _pending[operation] = queue = new Queue<SimFault>();
            queue.Enqueue(fault);
        }
    }

    private static double CheckFraction(double f) =>
        f is >= 0 and <= 1 ? f : throw new ArgumentOutOfRangeException(nameof(f), f, "a fraction between 0 and 1");
}

/// <summary>One injected fault, waiting for its operation.</summary>
internal abstract record SimFault(double AtFraction)
{
    /// <summary>Fails on entry, so it has no fraction.</summary>
    public sealed record Fail(string Code) : SimFault(0);
    public sealed record Die(double At) : SimFault(At);
    public sealed record OutOfSpace(double At) : SimFault(At);
    public sealed record Stall(double At, SimStall Handle) : SimFault(At);
}

/// <summary>An operation held by an injected stall: <see cref="Reached"/> completes when it blocks, <see cref="Release"/> lets it go on.</summary>
public sealed class SimStall(string operation)
{
    private readonly TaskCompletionSource _reached = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _released = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public string Operation { get; } = operation;
    /// <summary>Completes when the operation has reached the stall and blocks there.</summary>
    public Task Reached => _reached.Task;
    public bool IsReleased => _released.Task.IsCompleted;
    public void Release() => _released.TrySetResult();

    internal async Task BlockAsync(CancellationToken ct)
    {
        _reached.TrySetResult();
        await _released.Task.WaitAsync(ct);
    }
}

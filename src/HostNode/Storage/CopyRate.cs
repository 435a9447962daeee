namespace LiveMigration.HostNode.Storage;

/// <summary>
/// The speed limit of one step's copies (bytes per second, 0 = unlimited), which an operator may change while they run
/// (<c>lsm migration set-speed</c>): a copy reads <see cref="BytesPerSecond"/> when it starts, and <see cref="Changed"/>
/// tells it when to follow a new value. Thread-safe: set from the SPM actor, read on the copy's thread.
/// </summary>
public sealed class CopyRate(long bytesPerSecond)
{
    private long _bytesPerSecond = Math.Max(0, bytesPerSecond);
    private CancellationTokenSource _changed = new();

    /// <summary>No limit, never changed.</summary>
    public static CopyRate Unlimited => new(0);

    public long BytesPerSecond => Interlocked.Read(ref _bytesPerSecond);

    /// <summary>
    /// The limit now, and a token cancelled at its next change. The token is read first: a change between the two reads
    /// then cancels the token the caller holds, so no change goes unseen.
    /// </summary>
    public (long BytesPerSecond, CancellationToken Changed) Current()
    {
        var changed = Volatile.Read(ref _changed).Token;
        return (BytesPerSecond, changed);
    }

    /// <summary>Sets the limit; returns whether it changed (the same value again wakes nobody).</summary>
    public bool Set(long bytesPerSecond)
    {
        bytesPerSecond = Math.Max(0, bytesPerSecond);
        if (Interlocked.Exchange(ref _bytesPerSecond, bytesPerSecond) == bytesPerSecond) return false;
        // not disposed: copies may still hold its token (a source without timers holds nothing to free)
        Interlocked.Exchange(ref _changed, new CancellationTokenSource()).Cancel();
        return true;
    }
}

namespace LiveMigration.HostNode.Storage;

/// <summary>
/// The speed limit of one step's copies (the migration's <c>--bandwidth</c>), which <c>lsm migration set-speed</c>
/// changes while they run: read by the copy at every moment, so a change takes effect at once. 0 is unlimited.
/// </summary>
public sealed class CopyThrottle(long bytesPerSecond)
{
    private long _bytesPerSecond = Math.Max(0, bytesPerSecond);

    /// <summary>Bytes per second; 0 = unlimited.</summary>
    public long BytesPerSecond
    {
        get => Interlocked.Read(ref _bytesPerSecond);
        set => Interlocked.Exchange(ref _bytesPerSecond, Math.Max(0, value));
    }
}

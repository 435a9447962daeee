namespace LiveMigration.HostNode.Guest;

/// <summary>
/// Write latencies in fixed buckets, for percentiles without keeping every sample: 10 µs wide up to 100 ms (where a
/// stall's tens of milliseconds are told apart), one bucket beyond. Not thread-safe: the workload records under its gate.
/// </summary>
public sealed class LatencyHistogram
{
    private static readonly TimeSpan Width = TimeSpan.FromTicks(100); // 10 µs
    private const int Buckets = 10_000; // 100 ms
    private readonly long[] _counts = new long[Buckets + 1];
    private long _total;
    private TimeSpan _max;

    public void Record(TimeSpan latency)
    {
        var bucket = (int)Math.Min(Buckets, Math.Max(0, latency.Ticks / Width.Ticks));
        _counts[bucket]++;
        _total++;
        if (latency > _max) _max = latency;
    }

    public void Clear()
    {
        Array.Clear(_counts);
        _total = 0;
        _max = TimeSpan.Zero;
    }

    public long Count => _total;

    /// <summary>The latency under which the given share of the writes stayed (a bucket's upper edge; the longest write beyond 100 ms); zero without writes.</summary>
    public TimeSpan Percentile(double share)
    {
        if (share is <= 0 or > 1) throw new ArgumentOutOfRangeException(nameof(share), share, "a share in (0, 1]");
        if (_total == 0) return TimeSpan.Zero;
        var wanted = (long)Math.Ceiling(_total * share);
        long seen = 0;
        for (var i = 0; i < Buckets; i++)
        {
            seen += _counts[i];
            if (seen >= wanted) return TimeSpan.FromTicks(Math.Min((i + 1) * Width.Ticks, _max.Ticks));
        }
        return _max;
    }
}

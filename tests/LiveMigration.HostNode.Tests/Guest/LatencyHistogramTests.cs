using LiveMigration.HostNode.Guest;

namespace LiveMigration.HostNode.Tests.Guest;

public sealed class LatencyHistogramTests
{
    private static TimeSpan Ms(double ms) => TimeSpan.FromMilliseconds(ms);

    [Fact]
    public void The_p99_of_a_thousand_writes_is_the_tenth_slowest_to_within_a_bucket()
    {
        var histogram = new LatencyHistogram();
        for (var i = 0; i < 990; i++) histogram.Record(Ms(0.2));
        for (var i = 0; i < 9; i++) histogram.Record(Ms(12.34));
        histogram.Record(Ms(40));

        Assert.Equal(1000, histogram.Count);
        // the 990th write is the last of the fast ones: p99 is their bucket's upper edge
        Assert.Equal(Ms(0.21), histogram.Percentile(0.99));
        Assert.Equal(Ms(12.35), histogram.Percentile(0.999));
        Assert.Equal(Ms(40), histogram.Percentile(1));
    }

    [Fact]
    public void A_stall_beyond_the_buckets_is_its_own_length_and_clearing_starts_a_new_window()
    {
        var histogram = new LatencyHistogram();
        Assert.Equal(TimeSpan.Zero, histogram.Percentile(0.99));
        histogram.Record(Ms(1));
        histogram.Record(TimeSpan.FromSeconds(2.5));
        Assert.Equal(TimeSpan.FromSeconds(2.5), histogram.Percentile(0.99));

        histogram.Clear();
        Assert.Equal(0, histogram.Count);
        histogram.Record(Ms(3));
        Assert.Equal(Ms(3), histogram.Percentile(0.99));
        Assert.Throws<ArgumentOutOfRangeException>(() => histogram.Percentile(0));
    }
}
